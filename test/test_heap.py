"""tscm_ros.ros.heap: trim_heap gives freed heap pages between live blocks back to the OS;
limit_heap_arenas serves every thread from one glibc arena."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tscm_ros.ros.heap import limit_heap_arenas, trim_heap

BLOCK = 64 * 1024  # below glibc's initial mmap threshold (128 KiB): served from the heap
BLOCKS = 2000  # 125 MiB


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def test_trim_heap_returns_freed_pages_between_live_blocks():
    blocks = [bytearray(BLOCK) for _ in range(BLOCKS)]  # zero-filled: every page resident
    kept = blocks[::16]  # a live block every 1 MiB pins the heap: free() alone cannot shrink it
    del blocks
    before = _rss_mib()
    assert trim_heap()
    after = _rss_mib()
    freed = BLOCKS * BLOCK * (15 / 16) / 2**20
    assert before - after > 0.5 * freed, (before, after, freed)
    assert len(kept) == BLOCKS // 16


ARENA_PROBE = """
import ctypes, ctypes.util, os, sys, tempfile, threading
if sys.argv[1] == "node":
    import tscm_ros.ros.place_recognition_node  # the console script's import: rclpy, torch, OpenCV, faiss
def work():
    blocks = [bytearray(4096) for _ in range(100)]  # malloc in this thread: it takes an arena
    done.wait()
done = threading.Event()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
done.set()
print(open(path).read().count("<heap nr="))
"""


def _arenas(mode: str, env: dict[str, str] | None = None) -> int:
    """glibc heap arenas in use in a fresh process (``mode`` "node": after importing the node's module as its
    console script does; "plain": nothing imported) once 4 more threads allocated."""
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    result = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_the_node_process_serves_every_thread_from_one_arena():
    assert _arenas("plain") == 5  # glibc's default: an arena per thread (4 threads + main)
    # the limit must precede `import rclpy`, which starts 2 threads that allocate: set in main() it left 3
    assert _arenas("node") == 1


def test_malloc_arena_max_in_the_environment_wins(monkeypatch):
    assert _arenas("node", {"MALLOC_ARENA_MAX": "3"}) == 3
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert limit_heap_arenas() is False

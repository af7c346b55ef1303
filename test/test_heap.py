"""tscm_ros.ros.heap.trim_heap: freed heap pages between live blocks go back to the OS."""

from __future__ import annotations

from pathlib import Path

from tscm_ros.ros.heap import trim_heap

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

"""Thread priorities of the node process: inference yields the CPU to services, parameters and diagnostics.

On Linux ``setpriority(PRIO_PROCESS, tid, nice)`` changes one thread, and threads inherit the niceness of the
thread that creates them. The node raises the niceness of its inference thread and of the worker threads its
inference library started (OpenMP / ONNX Runtime pools, found as the threads that appeared while the describer
was built); the pools OpenCV and faiss start later from the inference thread inherit it. The executor threads
keep the process's niceness, so on a saturated CPU a service call or a parameter change is scheduled ahead
of a running inference instead of waiting out its time slice. Raising niceness needs no privilege; nothing
here ever lowers it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

TASKS = Path("/proc/self/task")


def thread_ids() -> set[int]:
    """Native ids of this process's threads (empty where /proc is not available)."""
    try:
        return {int(name) for name in os.listdir(TASKS)}
    except OSError:
        return set()


def thread_nice(tid: int) -> int:
    """Niceness of one thread of this process."""
    return os.getpriority(os.PRIO_PROCESS, tid)


def lower_priority(nice: int, tids: Iterable[int] = ()) -> list[int]:
    """Set the niceness of the calling thread and of ``tids`` to ``nice`` where it is higher than theirs.

    Threads that have exited meanwhile are skipped. Returns the ids changed.
    """
    changed = []
    for tid in {threading.get_native_id(), *tids}:
        try:
            if thread_nice(tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except (ProcessLookupError, PermissionError):
            continue
    return changed

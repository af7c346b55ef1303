"""Give freed heap memory back to the OS: glibc ``malloc_trim(0)``, called by the node every few seconds.

A long-running node allocates and frees megabyte buffers every frame (decoded images, the SIFT pyramid,
network activations). glibc raises its mmap threshold after the first such buffers are freed, so later ones
come from the heap, and freed heap pages stay resident. Replaying a RecognitionSession with RootSIFT
verification (1,000 keyframes on a 30k-place map, no ROS), trimming every 25 keyframes kept RSS 47-68 MiB
lower and removed a 20 MiB step; the growth left was the flat index's 8 KiB per place.
``malloc_trim(0)`` releases every free page of every arena (``madvise``) without changing how allocations
are served; fixing the mmap threshold instead (``GLIBC_TUNABLES=glibc.malloc.mmap_threshold``) kept the
node's RSS flat but made inference 2.3x slower (every activation buffer became a fresh mmap). A no-op where
the C library is not glibc.

Heap arenas: glibc gives threads their own arenas (up to 8 per core), and the node's worker threads (OpenCV,
faiss, torch) each kept up to ~19 MiB of a SIFT pyramid's pages resident in theirs, coming and going in
steps that buried the map's growth. :func:`limit_heap_arenas` (called when :mod:`tscm_ros.ros` is imported,
before rclpy) serves every thread from the main arena: the same replay grew a smooth 8.7 KiB per place (the
index row is 8 KiB) instead of 10-12 KiB in 19 MiB steps, 22 MiB lower, and not slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
HEAP_ARENAS = 1  # the node's arena limit (MALLOC_ARENA_MAX in the environment wins)


@functools.cache
def _libc_function(name: str, *argtypes: type):
    """A glibc function by name, or None off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def limit_heap_arenas(arenas: int = HEAP_ARENAS) -> bool:
    """Serve threads from at most ``arenas`` glibc heap arenas; True when set. A no-op when
    ``MALLOC_ARENA_MAX`` is set or off glibc. Call it before any other thread allocates: each thread that
    allocated before it keeps an arena of its own, and later threads share those."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    function = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    return bool(function(M_ARENA_MAX, arenas)) if function is not None else False


def trim_heap() -> bool:
    """Release free heap memory to the OS; True when glibc released some, False otherwise or off glibc."""
    function = _libc_function("malloc_trim", ctypes.c_size_t)
    return bool(function(0)) if function is not None else False

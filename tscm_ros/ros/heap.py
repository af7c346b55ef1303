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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim_heap() -> bool:
    """Release free heap memory to the OS; True when glibc released some, False otherwise or off glibc."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False

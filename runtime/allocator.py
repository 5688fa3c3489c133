"""Keep freed buffers in the process heap, so NumPy's large arrays do not page-fault every step.

The interpreter allocates every value of a step afresh and frees it at its last
use.  With glibc's defaults a buffer of a few hundred KB is returned to the OS
when freed (``munmap``, or trimming the top of the heap) and the next step's
buffer of that size is faulted in again page by page: an LSTM training step
(T=32, B=32, hidden 128) spent about a fifth of its time in those faults
(benchmarks/bench.py --only lstm).  :func:`keep_freed_memory` raises glibc's mmap
and trim thresholds once per process (``mallopt``), so freed buffers up to 32 MiB
stay in the heap and are reused.  The cost is a resident size that does not
shrink back after a step; ``DLC_KEEP_FREED_MEMORY=0`` keeps glibc's defaults.
Nothing happens on other C libraries.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "DLC_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept, not returned

_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process; True when this call or an earlier one did."""
    if _done:
        return _done[0]
    _done.append(False)
    if os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done[0] = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done[0]

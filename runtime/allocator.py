"""Keep freed array memory in the process for reuse (glibc malloc), once per process.

A NumPy plan allocates its intermediates afresh at every run.  With glibc's
defaults a large buffer (from 128 KiB, rising with what is freed) is an ``mmap``
of its own, unmapped when freed, and memory freed at the top of the heap goes
back to the OS past 128 KiB; either way the next run's buffer of the same size
is fresh pages, and touching them page-faults.  On the Transformer workload's
training step (2 MiB activations) that was a fifth of the step
(benchmarks/bench.py --profile: a bias + relu over [16, 64, 512] took 1.0 ms, 0.4
ms with the settings below).  The settings: buffers below 32 MiB come from the
heap, and up to 256 MiB of free heap top is kept — what a training process reuses
at its next step anyway.  Nothing changes where libc is not glibc, or when
``DLC_KEEP_FREED_MEMORY=0``; results never change (only where buffers live).

The settings are process-wide, so the NumPy trainer applies them (``model.trainer``,
``model.train``, ``dlc train``: a training loop owns its process); a library that
only plans and runs graphs (``model.run``, ``model.gradients``) leaves the host
application's allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the dynamic threshold (64-bit)
TRIM_THRESHOLD = 256 << 20

_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Apply the settings above (the first call only); True when glibc took them."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get("DLC_KEEP_FREED_MEMORY", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others lack it)
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done.append(ok)
    return ok

"""The benchmarks' one timing loop: wall-clock seconds of repeated calls."""
from __future__ import annotations

import time


def run_times(fn, reps: int, warm: bool = True) -> list[float]:
    """Seconds each of ``reps`` calls of ``fn`` took, after one untimed warm-up call if ``warm``."""
    if warm:
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times

"""The thread count of training steps, one setting for both backends."""
from __future__ import annotations

import os


def training_threads() -> int:
    """Threads for a step: BLAS in the NumPy backend (the training loop limits it),
    onnxruntime's intra-op pool (every session dlc opens).  ``DLC_THREADS`` (or the
    older ``DLC_BLAS_THREADS``) overrides the default of 1: the matrices of a training
    step are small, and a second thread competing for one of two cores made steps
    slower, never faster (benchmarks/bench.py)."""
    return int(os.environ.get("DLC_THREADS", os.environ.get("DLC_BLAS_THREADS", "1")))

"""The thread count of training steps, one setting for both backends."""
from __future__ import annotations

import os

from dlc.grammar.errors import DlcError


def training_threads() -> int:
    """Threads for a step: BLAS in the NumPy backend (the training loop limits it),
    onnxruntime's intra-op pool (every session dlc opens).  ``DLC_THREADS`` (or the
    older ``DLC_BLAS_THREADS``) overrides the default of 1: the matrices of a training
    step are small, and a second thread competing for one of two cores made steps
    slower, never faster (benchmarks/bench.py)."""
    name = "DLC_THREADS" if "DLC_THREADS" in os.environ else "DLC_BLAS_THREADS"
    text = os.environ.get(name, "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DlcError("E0110", f"{name}={text!r} is not a thread count", hint=f"set {name} to 1, 2, …")
    return value

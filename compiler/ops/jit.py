"""Compiled row kernels for the NumPy backend: the ``dlc[jit]`` extra (numba).

Row-wise kernels — a layer norm and its gradient, softmax's gradient — are a few
whole-array NumPy calls each, and every call that broadcasts one value per row
pays NumPy's outer-loop cost per row (10–20 ns): at the Transformer block's
shapes (1,024 rows of 128, 4,096 rows of 64) that is half their time, and
PyTorch's fused kernels run 2–3× faster.  Compiled as one loop over the rows
(compiler/ops/jit_kernels.py), each reads its inputs about once:
``layer_norm_grad_stats`` at [1024, 128] 0.22 → 0.07 ms, ``softmax_grad`` at
[4096, 64] 0.21 → 0.10 ms, ``layer_norm_stats`` (and so ``layer_norm`` itself)
0.10 → 0.05 ms, each kernel timed alone.

Only kernels without transcendental functions are compiled: this numba build
has no Intel SVML, so its ``exp`` / ``tanh`` are scalar libm calls, 7× slower
than NumPy's SIMD loops (an LSTM cell's gates: 220 µs against 30 µs), and an
inlined polynomial ``tanh`` still lost (50 µs).

``for_size(n)`` is the compiled module for a kernel over ``n`` elements, or
None: numba not installed, ``DLC_JIT=numpy``, or fewer than ``MIN_ELEMENTS``
elements; each caller then runs its NumPy formulation, so results without the
extra agree within float rounding.  numba is imported on the first call of
such a kernel big enough to use it (``dlc check``, compiling and the small
specs never import it): the import and the cached kernels' loading cost ~0.4 s
per process, and a kernel below ``MIN_ELEMENTS`` saves under ~40 µs a call,
which a short run would not win back.  Each kernel compiles on its first use
per dtype (~0.3 s) into numba's on-disk cache (``__pycache__`` beside the
module, or numba's user cache when that is not writable), which later
processes load from.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType

import numpy as np

from .rows import ROW_MAX_LEN

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
MIN_ELEMENTS = 1 << 15  # [256, 128] rows: the layer-norm gradient 55 -> 18 µs
_UNSET = object()
_kernels: object = _UNSET  # the loaded module, None, or not looked up yet


def kernels() -> ModuleType | None:
    """The compiled kernels (compiler/ops/jit_kernels.py), or None (see the module
    docstring); looked up once per process."""
    global _kernels
    if _kernels is _UNSET:
        _kernels = _load()
    return _kernels  # type: ignore[return-value]


def for_size(n: int) -> ModuleType | None:
    """The compiled kernels for a kernel call over ``n`` elements (see the module docstring)."""
    return kernels() if n >= MIN_ELEMENTS else None


def _load() -> ModuleType | None:
    choice = os.environ.get("DLC_JIT", "").strip().lower()
    if choice == "numpy":
        return None
    if choice not in ("", "auto", "numba"):
        warnings.warn(f"DLC_JIT={choice!r} is not one of auto, numba, numpy: using auto", RuntimeWarning, stacklevel=3)
    try:
        from . import jit_kernels
    except ImportError:  # no numba (or one that does not import): NumPy, as without the extra
        return None
    except Exception as e:  # noqa: BLE001 — e.g. numba finds no writable cache folder: NumPy, said once
        warnings.warn(f"dlc[jit]: numba's kernels did not load ({type(e).__name__}: {e}); "
                      "the NumPy kernels run instead", RuntimeWarning, stacklevel=3)
        return None
    return jit_kernels


def jit_name() -> str:
    """Which compiler the row kernels use, for reports."""
    k = kernels()
    if k is None:
        return "none (NumPy)"
    import numba

    return f"numba {numba.__version__}"


def rows_of(*arrays: np.ndarray) -> bool:
    """Whether arrays can go to a compiled kernel as they are: C-contiguous, of one float32 /
    float64 dtype, with rows (a last axis) of 1 to ``rows.ROW_MAX_LEN`` elements (longer ones
    keep NumPy's pairwise sums: compiler/ops/rows.py, Rounding)."""
    first = arrays[0]
    return (isinstance(first, np.ndarray) and first.dtype in _FLOATS and first.ndim >= 1 and first.size > 0
            and first.shape[-1] <= ROW_MAX_LEN
            and all(isinstance(a, np.ndarray) and a.dtype == first.dtype and a.flags.c_contiguous for a in arrays))


def scalar(value, dtype) -> np.ndarray:
    """``value`` as the one-element array of ``dtype`` a kernel reads a constant from."""
    return np.full(1, value, dtype)

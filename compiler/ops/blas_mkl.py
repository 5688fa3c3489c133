"""Intel MKL's ``cblas_sgemm`` / ``cblas_dgemm`` on NumPy buffers, when the optional
extra ``dlc[mkl]`` (the ``mkl`` wheel) is installed.

:func:`load` finds ``libmkl_rt`` (``sys.prefix/lib`` first, where the wheel puts it,
then the loader's search path) and returns an :class:`MklGemm`, or None when it is
absent or ``DLC_BLAS=numpy`` forces NumPy's own BLAS.  Nothing here decides *when*
MKL is used — compiler/ops/gemm.py's shape rule does.

Threads: the library is opened when this module's :func:`load` runs (at import of
compiler/ops/gemm.py), so every ``threadpoolctl.threadpool_limits(..., user_api="blas")``
entered later — the training loop's (runtime/train.py, ``DLC_THREADS``), bench.py's —
finds MKL among the loaded BLAS libraries and sets its thread count together with
OpenBLAS's.  Outside such a limit MKL uses its default (``MKL_NUM_THREADS`` or the
core count), as OpenBLAS does.

Cost: opening the library is under 1 ms; MKL's first GEMM in a process loads its
CPU-specific kernels and OpenMP runtime (~15–25 ms, once).

Reproducibility: MKL may take different code paths for differently aligned
buffers; conditional numerical reproducibility (``MKL_CBWR_AUTO``, set at load
unless ``MKL_CBWR`` is already in the environment) pins one path per CPU, so the
same inputs give the same bits on every run whatever NumPy's allocator returned.
"""
from __future__ import annotations

import ctypes
import os
import sys
import warnings

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_CBWR_AUTO = 2
_INT_MAX = (1 << 31) - 1  # cblas_?gemm's dims and leading dimensions are 32-bit ints (LP64)


def library_path() -> str | None:
    """The ``libmkl_rt`` to open: the ``mkl`` wheel's in ``sys.prefix/lib``, else the loader's."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = os.path.join(prefix, "lib")
        found = sorted(f for f in (os.listdir(lib) if os.path.isdir(lib) else ()) if f.startswith("libmkl_rt.so"))
        if found:
            return os.path.join(lib, found[0])
    import ctypes.util  # 10 ms of imports (subprocess, shutil): only when the wheel's copy is absent

    return ctypes.util.find_library("mkl_rt")


class MklGemm:
    """``a @ b`` for 2-D float32 / float64 operands through cblas ``?gemm``.

    Each operand is used in place when one of its strides is the item size (C-order
    rows, or a transposed view, F-order) and the other a leading dimension no smaller
    than the row; :meth:`supports` says whether a pair qualifies."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        p, i = ctypes.c_void_p, ctypes.c_int
        self._fns = {}
        for dtype, name, scalar in ((np.float32, "cblas_sgemm", ctypes.c_float),
                                    (np.float64, "cblas_dgemm", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
            self._fns[np.dtype(dtype)] = fn

    @staticmethod
    def _layout(x: np.ndarray) -> tuple[int, int] | None:
        """(transpose flag, leading dimension) for a row-major cblas call, or None."""
        item = x.itemsize
        rows, cols = x.shape
        s0, s1 = x.strides
        if (s1 == item or cols == 1) and s0 % item == 0 and s0 // item >= max(cols, 1):
            return _NO_TRANS, s0 // item
        if (s0 == item or rows == 1) and s1 % item == 0 and s1 // item >= max(rows, 1):
            return _TRANS, s1 // item
        return None

    def supports(self, a: np.ndarray, b: np.ndarray) -> bool:
        """True when :meth:`gemm` computes ``a @ b`` without copying either operand."""
        return (a.dtype == b.dtype and a.dtype in self._fns and a.ndim == 2 and b.ndim == 2
                and a.size > 0 and b.size > 0 and max(a.shape + b.shape) <= _INT_MAX
                and max(a.strides + b.strides) // a.itemsize <= _INT_MAX
                and self._layout(a) is not None and self._layout(b) is not None)

    def gemm(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` as a new C-contiguous array; the caller checked :meth:`supports`."""
        m, k = a.shape
        n = b.shape[1]
        ta, lda = self._layout(a)
        tb, ldb = self._layout(b)
        c = np.empty((m, n), a.dtype)
        self._fns[a.dtype](_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda,
                           b.ctypes.data, ldb, 0.0, c.ctypes.data, n)
        return c


def load() -> MklGemm | None:
    """MKL's GEMMs, or None: ``DLC_BLAS=numpy``, or no ``libmkl_rt`` to open.

    ``DLC_BLAS`` unset, ``auto`` or ``mkl``: MKL when installed; another value warns
    and counts as ``auto``."""
    choice = os.environ.get("DLC_BLAS", "").strip().lower()
    if choice == "numpy":
        return None
    if choice not in ("", "auto", "mkl"):
        warnings.warn(f"DLC_BLAS={choice!r} is not one of auto, mkl, numpy: using auto", RuntimeWarning, stacklevel=2)
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        if "MKL_CBWR" not in os.environ:
            lib.MKL_CBWR_Set.argtypes = [ctypes.c_int]
            lib.MKL_CBWR_Set(_CBWR_AUTO)
        return MklGemm(lib, path)
    except (OSError, AttributeError):  # a stub or an incompatible build: NumPy's BLAS, as without it
        return None

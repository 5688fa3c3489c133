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


def _data_pointer_reader():
    """The fastest correct way to pass an ndarray's data pointer to a ``c_void_p`` argument.

    ``x.ctypes.data`` builds a helper object per call (~0.8 µs, three per GEMM); on
    CPython the pointer is the first field after the object header of NumPy's
    ``PyArrayObject`` (``PyObject_HEAD; char *data; ...``, a layout NumPy has kept since
    1.7), which ``ctypes.c_void_p.from_address`` reads in ~0.1 µs.  That reading is
    checked here on probe arrays (a fresh one, an offset view, a transposed view) against
    ``x.ctypes.data``; any mismatch (another interpreter, another header size) falls
    back to ``x.ctypes.data``."""
    if sys.implementation.name == "cpython":
        offset = object.__basicsize__  # the PyObject header: 16 bytes, more on free-threaded builds
        at = ctypes.c_void_p.from_address

        def read(x: np.ndarray) -> ctypes.c_void_p:
            return at(id(x) + offset)

        base = np.arange(12, dtype=np.float32).reshape(3, 4)
        probes = (base, base[1:, 1:], base.T, np.empty((5, 7), np.float64))
        if all(read(x).value == x.ctypes.data for x in probes):
            return read
    return lambda x: x.ctypes.data


_pointer = _data_pointer_reader()


def _layout(x: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-D operand for a row-major cblas call, or None."""
    item = x.itemsize
    rows, cols = x.shape
    s0, s1 = x.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and cols <= s0 // item <= _INT_MAX:
        return _NO_TRANS, s0 // item
    if (s0 == item or rows == 1) and s1 % item == 0 and rows <= s1 // item <= _INT_MAX:
        return _TRANS, s1 // item
    return None


def _row_major_ld(out, dtype: np.dtype, m: int, n: int) -> int | None:
    """The leading dimension of ``out`` as a row-major ``[m, n]`` output, or None when it is not
    a writeable ndarray of that dtype and shape with unit column stride (one row: any row stride)."""
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (m, n) or not out.flags.writeable:
        return None
    item = out.itemsize
    s0, s1 = out.strides
    if s1 != item and n > 1:
        return None
    if m == 1:
        return max(n, 1)
    return s0 // item if s0 % item == 0 and n <= s0 // item <= _INT_MAX else None


class MklGemm:
    """``a @ b`` (or ``out = a @ b + beta * out``) for 2-D float32 / float64 operands
    through cblas ``?gemm``.

    Each operand is used in place when one of its strides is the item size (C-order
    rows, or a transposed view, F-order) and the other a leading dimension no smaller
    than the row; :meth:`gemm` returns None for a pair that does not qualify, so the
    layouts are worked out once per product.  Its fixed cost is one ctypes call plus
    ~2 µs of Python (the layouts, three data pointers, the result's allocation)."""

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

    def supports(self, a: np.ndarray, b: np.ndarray) -> bool:
        """True when :meth:`gemm` computes ``a @ b`` without copying either operand."""
        return self._call(a, b) is not None

    def _call(self, a: np.ndarray, b: np.ndarray):
        """(the cblas function, ta, lda, tb, ldb) for ``a @ b``, or None when MKL cannot take them."""
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return None  # the pointer reader knows NumPy's array struct only
        fn = self._fns.get(a.dtype)
        if fn is None or b.dtype != a.dtype or a.ndim != 2 or b.ndim != 2 or not a.size or not b.size \
                or a.shape[1] != b.shape[0] or max(a.shape[0], a.shape[1], b.shape[1]) > _INT_MAX:
            return None
        la, lb = _layout(a), _layout(b)
        if la is None or lb is None:
            return None
        return fn, la[0], la[1], lb[0], lb[1]

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
             beta: float = 0.0) -> np.ndarray | None:
        """``a @ b`` as a new C-contiguous array, or None when MKL cannot take the operands
        in place (then nothing is computed).

        ``out``: a writeable ``[M, N]`` ndarray of the operands' dtype with unit column
        stride (C-order, or rows of a wider one) to write into instead, returned; with
        ``beta`` the product is added onto ``beta * out`` (``beta=1``: ``out += a @ b`` in
        one pass, rounded as MKL accumulates, not as a separate ``add``).  An ``out`` that
        is not such an array, or that may overlap ``a`` or ``b`` (MKL would read what it
        has already written), raises ValueError."""
        call = self._call(a, b)
        if call is None:
            return None
        fn, ta, lda, tb, ldb = call
        m, k = a.shape
        n = b.shape[1]
        if out is None:
            out, ldc = np.empty((m, n), a.dtype), n
        else:
            ldc = _row_major_ld(out, a.dtype, m, n)
            if ldc is None:
                raise ValueError(f"gemm: out must be a writeable row-major {a.dtype}[{m}, {n}] ndarray, got "
                                 f"{getattr(out, 'dtype', type(out).__name__)}{list(getattr(out, 'shape', ()))} "
                                 f"with strides {getattr(out, 'strides', None)}")
            if np.may_share_memory(out, a) or np.may_share_memory(out, b):
                raise ValueError("gemm: out may overlap an operand")
        fn(_ROW_MAJOR, ta, tb, m, n, k, 1.0, _pointer(a), lda, _pointer(b), ldb, beta, _pointer(out), ldc)
        return out



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

"""Reductions over the last axis of many short rows: the maximum and the sum.

NumPy's reductions over a short contiguous last axis pay a fixed cost per row
(20–80 ns), which dominates softmax-like kernels and the row means of layer
norm: the Transformer's attention scores [16, 4, 64, 64] are 4096 rows of 64,
its activations [16, 64, 128] 1024 rows of 128, the GCN's logits [2708, 7].

- ``max_keepdims``: fold the row in halves with ``np.maximum`` (whole-array
  ufunc calls) down to 16 columns, then transpose that small remainder into
  C order and take ``np.max`` over its leading axis, which NumPy runs as a
  vectorised elementwise loop (4096 x 64: 345 µs → 147 µs; 2708 x 7: 114 µs →
  9 µs).  The maximum is exact whatever the order (NaN propagates through
  ``np.maximum`` as through ``np.max``; which of -0 and +0 wins cannot change
  ``x - max`` or its exponent), so results equal ``np.max``'s (up to the sign
  of a zero maximum, which neither changes).
- ``dot_keepdims``: the row sums of a product, as one ``einsum`` pass.
- ``sum_keepdims`` / ``row_sum``: a matrix-vector product with a vector of
  ones through NumPy's BLAS (sgemv/dgemv): 4096 x 64: 133 µs → 15 µs; 1024 x
  128: 32 µs → 7 µs.

Rounding: BLAS and einsum add a row in their own orders, not ``np.sum``'s
pairwise one, so the sums differ from ``np.sum``'s by float rounding — a few
ulps of the row's magnitude for the rows taken here, whose length is at most
``ROW_MAX_LEN``: a sequential sum's error grows with the length (einsum over
rows of 4M: 1e-4 relative), and beyond a few thousand elements NumPy's per-row
cost is amortised anyway, so longer rows go to ``np.sum``.  For a given layout
the order depends only on the shape (same bits on every run and buffer
offset); a non-contiguous array takes ``np.sum`` and may round otherwise.
Sums over *leading* axes are left to ``np.sum`` (see compiler/ops/gemm.py: a
GEMV there rounded differently enough from onnxruntime's ReduceSum for a GAN
epoch to amplify it).
"""
from __future__ import annotations

import functools

import numpy as np

_MAX_LEN = 128  # beyond it np.max's per-row cost is amortised
_MAX_MIN_ROWS = 64  # below it the extra calls cost more than they save
_TRANSPOSE_LEN = 16  # halve down to this many columns, then transpose the rest
ROW_MAX_LEN = 4096  # row sums and dots by BLAS / einsum up to this length (see Rounding above)
_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def max_keepdims(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.max(x, axis=axis, keepdims=True)`` (the same values; a zero maximum may differ in sign)."""
    x = np.asarray(x)
    last = axis in (-1, x.ndim - 1)
    if not last or x.ndim == 0 or not 2 <= x.shape[-1] <= _MAX_LEN \
            or x.size < _MAX_MIN_ROWS * x.shape[-1] or x.dtype.kind != "f":
        return np.max(x, axis=axis, keepdims=True)
    if not x.flags.c_contiguous:  # no free [rows, n] view: halve all the way
        return _halve(x, 1)
    m = _halve(x.reshape(-1, x.shape[-1]), _TRANSPOSE_LEN)
    rows = np.max(np.ascontiguousarray(m.T), axis=0)
    return rows.reshape(x.shape[:-1] + (1,))


def _halve(m: np.ndarray, stop: int) -> np.ndarray:
    """``m`` folded along its last axis with ``np.maximum`` until at most ``stop`` columns remain."""
    while m.shape[-1] > stop:
        n = m.shape[-1]
        h = n // 2
        top = np.maximum(m[..., :h], m[..., h:2 * h])
        if n % 2:  # the odd element left over joins the first column
            np.maximum(top[..., :1], m[..., 2 * h:], out=top[..., :1])
        m = top
    return m


def row_sum(x: np.ndarray, keepdims: bool = True) -> np.ndarray | None:
    """The sums of the rows of ``x`` along its last axis (``np.sum(x, axis=-1, keepdims=...)``
    within float rounding), or None where the BLAS route does not apply: ``x`` must be a
    C-contiguous float32/float64 array of rank >= 2 with at least one row, of 2 to
    ``ROW_MAX_LEN`` elements."""
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.dtype not in _BLAS_FLOATS \
            or not x.flags.c_contiguous or not 2 <= x.shape[-1] <= ROW_MAX_LEN or x.size == 0:
        return None
    n = x.shape[-1]
    sums = np.matmul(x.reshape(-1, n), _ones(n, x.dtype.char))
    return sums.reshape(x.shape[:-1] + ((1,) if keepdims else ()))


def sum_keepdims(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.sum(x, axis=axis, keepdims=True)``; over the last axis through ``row_sum`` where it applies."""
    if axis in (-1, np.ndim(x) - 1):
        sums = row_sum(x)
        if sums is not None:
            return sums
    return np.sum(x, axis=axis, keepdims=True)


def dot_keepdims(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """``np.sum(a * b, axis=axis, keepdims=True)`` for arrays of one shape; over the last axis of
    C-contiguous floats with rows of at most ``ROW_MAX_LEN`` as one ``einsum`` pass (no product
    array; einsum's own order of adds)."""
    if axis in (-1, np.ndim(a) - 1) and isinstance(a, np.ndarray) and isinstance(b, np.ndarray) \
            and a.ndim >= 1 and a.shape == b.shape and a.dtype == b.dtype and a.dtype.kind == "f" \
            and a.flags.c_contiguous and b.flags.c_contiguous and a.size and a.shape[-1] <= ROW_MAX_LEN:
        n = a.shape[-1]
        rows = np.einsum("ij,ij->i", a.reshape(-1, n), b.reshape(-1, n))
        return rows.reshape(a.shape[:-1] + (1,))
    return np.sum(a * b, axis=axis, keepdims=True)


@functools.lru_cache(maxsize=64)
def _ones(n: int, char: str) -> np.ndarray:
    ones = np.ones(n, dtype=char)
    ones.flags.writeable = False  # shared between calls
    return ones

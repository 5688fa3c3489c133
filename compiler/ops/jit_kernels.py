"""The numba-compiled row kernels (imported by compiler/ops/jit.py only, when numba is
installed: this module imports it at the top).

Each kernel takes C-contiguous ``[R, n]`` float32 or float64 rows (``n >= 1``) and
writes into output arrays its caller allocated.  Arithmetic stays in the rows' dtype:
no literal appears in an expression (a Python float would promote float32 to float64);
a count or a constant arrives as a one-element array of the dtype.

Rounding: the elementwise steps are the NumPy kernels' operations in their order
(``fastmath`` off: no FMA contraction, no reciprocal rewrite), so they round as NumPy
does.  The row sums are the one liberty (``_SUM``: LLVM may reassociate the helpers that
compute them, their products included, into vector partial sums), so they round as a SIMD
sum does, like the BLAS / einsum row sums they replace (compiler/ops/rows.py) — within
float rounding of ``np.sum`` for rows of up to ``rows.ROW_MAX_LEN`` elements (longer ones
stay on NumPy, whose pairwise sum is more accurate there), and the same bits on every run
for a given row length.  NaN and infinities propagate as in NumPy (no ``nnan`` / ``ninf``;
a division by zero gives inf or NaN, ``error_model="numpy"``).
"""
from __future__ import annotations

import numba
import numpy as np

_SUM = {"reassoc"}  # the row-sum helpers may reassociate (vectorise) their sums; nothing else
# error_model "numpy": a division by zero gives inf / NaN as NumPy's does (numba's default,
# "python", raises ZeroDivisionError: a constant row with eps = 0)
_JIT = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}


@numba.njit(fastmath=_SUM, **_JIT)
def _row_sum(a, r):
    s = a[r, 0]
    for j in range(1, a.shape[1]):
        s += a[r, j]
    return s


@numba.njit(fastmath=_SUM, **_JIT)
def _row_dot(a, b, r):
    s = a[r, 0] * b[r, 0]
    for j in range(1, a.shape[1]):
        s += a[r, j] * b[r, j]
    return s


@numba.njit(fastmath=_SUM, **_JIT)
def _row_dot_scaled(a, scale, b, r):
    """sum_j (a[r, j] * scale[j]) * b[r, j] (the product rounded first, as NumPy's g = dy * gamma)."""
    s = (a[r, 0] * scale[0]) * b[r, 0]
    for j in range(1, a.shape[1]):
        s += (a[r, j] * scale[j]) * b[r, j]
    return s


@numba.njit(fastmath=_SUM, **_JIT)
def _row_sum_scaled(a, scale, r):
    s = a[r, 0] * scale[0]
    for j in range(1, a.shape[1]):
        s += a[r, j] * scale[j]
    return s


@numba.njit(**_JIT)
def softmax_grad_rows(dy, y, out):
    """out = y * (dy - sum(dy * y)) per row."""
    for r in range(dy.shape[0]):
        s = _row_dot(dy, y, r)
        for j in range(dy.shape[1]):
            out[r, j] = (dy[r, j] - s) * y[r, j]


@numba.njit(**_JIT)
def layer_norm_stats_rows(x, count, eps, one, xhat, inv):
    """xhat = (x - mean) * (1 / sqrt(var + eps)), inv = 1 / sqrt(var + eps) per row, with
    mean = sum(x) / n and var = sum((x - mean)²) / n (two passes: no cancellation);
    ``count``, ``eps``, ``one``: one-element arrays of the dtype holding n, eps and 1."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        mean = _row_sum(x, r) / count[0]
        for j in range(n):
            xhat[r, j] = x[r, j] - mean
        iv = one[0] / np.sqrt(_row_dot(xhat, xhat, r) / count[0] + eps[0])
        inv[r] = iv
        for j in range(n):
            xhat[r, j] *= iv


@numba.njit(**_JIT)
def layer_norm_grad_rows(dy, xhat, inv, gamma, count, dx, dgamma):
    """dx = ((g - mean(g)) - x̂ * mean(g * x̂)) * inv with g = dy * gamma, and dgamma = dy * x̂,
    per row (``inv`` one value per row, ``gamma`` one per column)."""
    n = dy.shape[1]
    for r in range(dy.shape[0]):
        mean_g = _row_sum_scaled(dy, gamma, r) / count[0]
        mean_gx = _row_dot_scaled(dy, gamma, xhat, r) / count[0]
        iv = inv[r]
        for j in range(n):
            dx[r, j] = ((dy[r, j] * gamma[j] - mean_g) - xhat[r, j] * mean_gx) * iv
            dgamma[r, j] = dy[r, j] * xhat[r, j]


"""How the NumPy kernels of ``matmul`` and ``matmul_t`` reach BLAS.

NumPy hands every 2-D float product to OpenBLAS's sgemm/dgemm, but not always in
the form OpenBLAS is fastest at.  The rules below pick a formulation from the
operands' shapes and strides only — never by timing — so the same inputs give
the same numbers on every run.  The evidence (single-thread, at the shapes of
the benchmark workloads) is ``python benchmarks/gemm_layouts.py``:

- ``x [..., M, K] @ w [K, N]`` with ``x`` C-contiguous: NumPy's broadcast
  matmul calls one small GEMM per leading index; one GEMM on the collapsed
  ``[prod(...) * M, K]`` rows is up to 1.5× faster (most with ``w`` a
  transposed view, the ``dy @ W^T`` of a backward pass).
- A batched product ``a [..., M, K] @ b [..., K, N]`` whose ``b`` matrices are
  transposed views (the attention scores ``q @ k^T``, ``k`` a view of ``[B, T, H, D]``):
  NumPy's stacked matmul takes 2.5× longer on them than on C-order matrices, more
  than a copy of ``b`` costs (``[16, 4, 32, 64]``: 0.27 ms as given, 0.16 ms with
  the copy).  The copy holds the same numbers, so the products are unchanged.
- A 2-D product whose output has fewer than 16 columns that are not a multiple
  of 8 (``N = 7`` in the GCN) falls into OpenBLAS's slow edge kernel: padding ``b``
  with zero columns to the next multiple of 8 and dropping them afterwards is
  ~1.6× faster once the ``M x K`` operand is big (``_PAD_MIN_MK``).  The padded
  columns are zeros, so the kept columns are the same dot products.

- With Intel MKL installed (``dlc[mkl]``, compiler/ops/blas_mkl.py) a float32 /
  float64 2-D product of at least ``_MKL_MIN_MKN`` multiply-adds whose operands are
  C-order or transposed views goes to MKL's ``cblas_?gemm``: 1.1–2× faster than
  OpenBLAS at the MLP / GCN / Transformer shapes, and with no edge-kernel slowdown
  for small ``N`` (so no padding).  Below the threshold MKL's fixed cost of a call
  (~3 µs through ctypes) loses to NumPy.  ``DLC_BLAS=numpy`` turns MKL off; without
  the extra everything here is NumPy as before.  The choice depends on the shapes
  only, so a given product is always computed by the same library.
- MKL's ``a^T @ b`` with ``a`` a transposed view and a narrow ``b`` (``N <= 64``:
  the GCN's ``Â^T @ dY`` and ``X^T @ dZ``, 2708 x 2708 by 16) runs 2–9× slower
  than the same product computed as ``(b^T @ a)^T`` — ``a`` read in its stored row
  order — plus a copy of the small result to C order, so narrow products with a
  transposed ``a`` are computed that way (``_SWAP_MAX_N``).  Each element is still
  one dot product over ``K``, summed in MKL's order for the other orientation.

Not taken: ``sum_to`` over the leading axes (a bias gradient) as a GEMV with a
vector of ones is 2.5–6× faster than ``np.sum``, but rounds differently from
onnxruntime's ``ReduceSum``, and a GAN epoch (specs/wgan.dl, RMSProp) amplifies
that past the NumPy / onnxruntime parity the export tests hold.
"""
from __future__ import annotations

import os

import numpy as np

from . import blas_mkl

_MKL = blas_mkl.load()  # None: NumPy's BLAS only (no dlc[mkl], or DLC_BLAS=numpy)
_MKL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MKL_MIN_MKN = 1 << 21  # M*K*N from which MKL wins (64x512x10 and 128^3 did not, 32x128x512 did)
_PAD_MIN_MK = 1 << 20  # M*K from which padding N pays for its copy of b (2708 x 2708 does, 64 x 512 not)
_PAD_MAX_N = 16  # measured to pay for N = 3, 7, 10, 12; from N = 20 it was a wash
_SWAP_MAX_N = 64  # a^T @ b as (b^T @ a)^T up to this N: 0.21-0.64x the time at 2708 x 2708 by 7..64


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b)``, through the fastest formulation the rules above give."""
    if b.ndim == 2 and a.ndim >= 3 and a.flags.c_contiguous and a.dtype.kind == "f" \
            and a.size:
        lead = a.shape[:-1]
        return gemm_2d(a.reshape(-1, a.shape[-1]), b).reshape(lead + (b.shape[-1],))
    if a.ndim == 2 and b.ndim == 2:
        return gemm_2d(a, b)
    if b.ndim >= 3 and b.strides[-2] == b.itemsize and b.shape[-1] > 1 and b.dtype.kind == "f" \
            and 0 not in b.strides[:-2]:  # (a broadcast b is left alone: the copy would materialise it)
        b = np.ascontiguousarray(b)  # transposed matrices: NumPy's stacked loop is slow on them
    return np.matmul(a, b)


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for batched operands (both of rank >= 3), with
    :func:`matmul`'s rule for ``b``'s transposed matrices; ``out`` may be any strided
    view of the product's shape (a transposed view of a C-order buffer: the product
    written straight into a permuted layout).  NumPy calls BLAS once per matrix
    whenever each ``out`` matrix has unit column stride, with ``ldc`` its row stride:
    each element is the same dot product as in a fresh C-order result."""
    if b.strides[-2] == b.itemsize and b.shape[-1] > 1 and b.dtype.kind == "f" and 0 not in b.strides[:-2]:
        b = np.ascontiguousarray(b)  # as matmul does: NumPy's stacked loop is slow on transposed matrices
    return np.matmul(a, b, out=out)


def matmul_add(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b) + c`` (``c`` broadcasting to the product's shape, never enlarging it).

    A product that goes to MKL (the rule of :func:`gemm_2d`, on ``a``'s rows collapsed
    when it is C-contiguous) starts from a copy of ``c`` and accumulates onto it
    (``beta=1``): the sum is rounded as MKL adds, within float32 rounding of the
    separate add.  Every other product is ``matmul(a, b) + c`` exactly as the two ops
    would compute it."""
    if _MKL is not None and b.ndim == 2 and a.ndim >= 2 and (a.ndim == 2 or a.flags.c_contiguous):
        k, n = b.shape
        m = a.size // k if k else 0
        if a.dtype == b.dtype == c.dtype and goes_to_mkl(m, k, n, a.dtype):
            out = np.empty(a.shape[:-1] + (n,), a.dtype)
            np.copyto(out, c)
            # None (nothing written) only for an operand MKL cannot take in place: then NumPy
            if _MKL.gemm(a.reshape(m, k), b, out=out.reshape(m, n), beta=1.0) is not None:
                return out
    return np.add(matmul(a, b), c)


def gemm_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D operands (either may be a transposed view)."""
    m, k = a.shape
    n = b.shape[1]
    if goes_to_mkl(m, k, n, a.dtype):
        if n <= _SWAP_MAX_N and _transposed(a) and not _transposed(b):
            c = _MKL.gemm(b.T, a.T)  # MKL takes b.T, a.T exactly when it takes a, b
            if c is not None:
                return np.ascontiguousarray(c.T)
        else:
            c = _MKL.gemm(a, b)
            if c is not None:
                return c
    if n % 8 and n < _PAD_MAX_N and m * k >= _PAD_MIN_MK and a.dtype.kind == "f":
        padded = np.zeros((k, n + 8 - n % 8), b.dtype)
        padded[:, :n] = b
        return np.ascontiguousarray(np.matmul(a, padded)[:, :n])
    return np.matmul(a, b)


def _transposed(x: np.ndarray) -> bool:
    """True for a 2-D transposed view (its rows strided, its columns contiguous)."""
    return x.strides[0] == x.itemsize and x.strides[1] != x.itemsize and x.shape[0] > 1


def blas_name() -> str:
    """Which BLAS the products above use, for reports: MKL (big ones) and NumPy's, or NumPy's alone."""
    if _MKL is None:
        return "NumPy's BLAS"
    return f"MKL ({os.path.basename(_MKL.path)}) from 2^21 multiply-adds, NumPy's BLAS below"


def goes_to_mkl(m: int, k: int, n: int, dtype) -> bool:
    """Would :func:`gemm_2d` hand an ``[m, k] x [k, n]`` product of ``dtype`` to MKL?  For
    kernels that pick a formulation by it (a shape rule, the same on every run)."""
    return _MKL is not None and np.dtype(dtype) in _MKL_DTYPES and m * k * n >= _MKL_MIN_MKN

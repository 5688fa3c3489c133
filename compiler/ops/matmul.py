"""``matmul``: ``a @ b`` with NumPy semantics, the ``arithmetic`` family's product (imported
by arith.py).  Its NumPy kernel goes through compiler/ops/gemm.py, which picks the BLAS
formulation; the NumPy backend's fused forms (``matmul_t``, ``matmul_add``,
``matmul_permuted``) are in fused_products.py.
"""
from __future__ import annotations

from ..types import ShapeError, TensorType, broadcast_shapes, same_dtype
from . import gemm
from .arith import _numbers  # defined before arith imports this module
from .registry import Arg, Op, Sample, register
from .shape import prod_dims


@register
class MatMul(Op):
    """``a @ b`` with NumPy semantics (batched, broadcasting batch dims)."""

    name, family = "matmul", "arithmetic"
    inputs = ("a", "b")
    samples = [Sample((Arg((2, 3)), Arg((3, 4)))), Sample((Arg((2, 5, 3)), Arg((3, 4)))),
               Sample((Arg((2, 5, 3)), Arg((2, 3, 4)))), Sample((Arg((3,)), Arg((3, 4)))),
               Sample((Arg((2, 3)), Arg((3,))))]

    def flops(self, in_types, out_types, **attrs):
        """A multiply-add (2 FLOPs) per output element and inner index."""
        return 2 * prod_dims(out_types[0].shape) * in_types[0].shape[-1]

    def shape(self, a, b):
        dtype = same_dtype("@", a, b)
        _numbers("@", a)  # (NumPy's bool matmul is an any-of-ands; ONNX's MatMul takes no bools)
        if a.rank == 0 or b.rank == 0:
            raise ShapeError(f"`@` needs tensors of rank >= 1, got {a} @ {b}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.rank >= 2 else b.shape[0]
        if ka != kb:
            raise ShapeError(f"{a} @ {b}: inner dims {ka} and {kb} differ")
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        rows = a.shape[-2:-1] if a.rank >= 2 else ()
        cols = b.shape[-1:] if b.rank >= 2 else ()
        return TensorType(dtype, batch + rows + cols)

    def kernel(self, a, b):
        return gemm.matmul(a, b)

    def grad(self, b, inputs, outputs, cts):
        x, y = inputs
        dy = cts[0]
        tx, ty = b.type(x), b.type(y)
        # promote vectors to matrices so one pair of rules covers every case
        x2 = b.unsqueeze(x, axes=(0,)) if tx.rank == 1 else x
        y2 = b.unsqueeze(y, axes=(1,)) if ty.rank == 1 else y
        d2 = dy
        if tx.rank == 1:
            d2 = b.unsqueeze(d2, axes=(-2,))
        if ty.rank == 1:
            d2 = b.unsqueeze(d2, axes=(-1,))
        dx = b.matmul(d2, b.transpose(y2, perm=_swap_last(b.type(y2).rank)))
        if tx.rank >= 3 and ty.rank == 2:
            # a batch of rows times one weight matrix: dW is one GEMM over all the rows
            # (K = batch * rows), not a batch of GEMMs that backprop's sum_to then adds up —
            # ~1.4x faster on NumPy, and built here so every optimization level computes it alike
            k, n = tx.shape[-1], ty.shape[-1]
            rows_x, rows_d = b.reshape(x, shape=(-1, k)), b.reshape(d2, shape=(-1, n))
            dw = b.matmul(b.transpose(rows_x, perm=(1, 0)), rows_d)
        else:
            dw = b.matmul(b.transpose(x2, perm=_swap_last(b.type(x2).rank)), d2)
        if tx.rank == 1:
            dx = b.squeeze(dx, axes=(-2,))
        if ty.rank == 1:
            dw = b.squeeze(dw, axes=(-1,))
        return [dx, dw]

    def onnx(self, e, ins, outs):
        e.node("MatMul", ins, outs)


def _swap_last(rank: int) -> tuple[int, ...]:
    return tuple(range(rank - 2)) + (rank - 1, rank - 2)

"""The NumPy backend's fused products (family ``fused``, imported by fused.py): a matrix
product with what surrounds it folded in by the optimizer — ``matmul_t`` (transposed
operands, compiler/passes/fold_transposes.py), ``matmul_permuted`` (a permuted result,
fold_product_transposes.py) and ``matmul_add`` (an added term, fold_matmul_add.py).
Each computes what its primitives compute, through compiler/ops/gemm.py, and lowers to
them in ONNX.
"""
from __future__ import annotations

import numpy as np

from ..types import ShapeError, check_addend
from . import gemm
from .registry import Arg, Attr, Op, Sample, get_op, register
from .shape import _perm, prod_dims


@register
class MatMulT(Op):
    """``matmul_t(a, b, ta, tb)``: ``a @ b`` with the last two axes of ``a`` (``ta``) and/or
    ``b`` (``tb``) swapped first — a transpose folded into its matmul by the NumPy
    backend's optimizer (compiler/passes/fold_transposes.py), so ``x.T @ dy`` is one
    kernel call on a view.  Both operands have rank >= 2."""

    name, family = "matmul_t", "fused"
    inputs = ("a", "b")
    attrs = {"ta": Attr("bool", False), "tb": Attr("bool", False)}
    samples = [Sample((Arg((3, 2)), Arg((3, 4))), {"ta": True}),
               Sample((Arg((2, 3)), Arg((4, 3))), {"tb": True}),
               Sample((Arg((3, 2)), Arg((4, 3))), {"ta": True, "tb": True}),
               Sample((Arg((2, 5, 3)), Arg((4, 3))), {"tb": True}, note="batched, broadcast"),
               Sample((Arg((2, 3, 5)), Arg((2, 3, 4))), {"ta": True}, note="batched")]

    def shape(self, a, b, ta, tb):
        if a.rank < 2 or b.rank < 2:
            raise ShapeError(f"`matmul_t` needs operands of rank >= 2, got {a} and {b}")
        return get_op("matmul").shape(_swapped(a) if ta else a, _swapped(b) if tb else b)

    def kernel(self, a, b, ta, tb):
        return gemm.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)

    def grad(self, b, inputs, outputs, cts, ta, tb):
        # C = X @ Y with X = op(A), Y = op(B): dX = dC @ Y^T, dY = X^T @ dC, transposed back when ta / tb
        x, y = inputs
        dc = cts[0]
        dx = b.matmul_t(y, dc, ta=tb, tb=True) if ta else b.matmul_t(dc, y, ta=False, tb=not tb)
        dy = b.matmul_t(dc, x, ta=True, tb=ta) if tb else b.matmul_t(x, dc, ta=not ta, tb=False)
        return [dx, dy]

    def onnx(self, e, ins, outs, ta, tb):
        args = []
        for name, t, swap in zip(ins, e.in_types, (ta, tb)):
            perm = list(range(t.rank - 2)) + [t.rank - 1, t.rank - 2]
            args.append(e.node("Transpose", [name], 1, perm=perm)[0] if swap else name)
        e.node("MatMul", args, outs)


def _swapped(t):
    return t.with_shape(t.shape[:-2] + (t.shape[-1], t.shape[-2]))


@register
class MatMulPermuted(Op):
    """``matmul_permuted(a, b, ta, tb, perm)``: ``transpose(matmul_t(a, b, ta, tb), perm)``
    for batched operands, the product written straight into the permuted layout — a
    C-order result, so a following ``reshape`` (attention's heads merged back, ``[B, H,
    T, D] -> [B, T, H·D]``) is a view, not a copy.  Made by the NumPy backend's optimizer
    (compiler/passes/fold_product_transposes.py); ``perm`` keeps the last axis last.

    Each matrix is the same BLAS call as ``matmul_t``'s with the output's row stride as
    its leading dimension (compiler/ops/gemm.py ``matmul_into``), so the values are
    ``matmul_t``'s.  Its gradient is ``matmul_t``'s for the cotangent transposed back."""

    name, family = "matmul_permuted", "fused"
    inputs = ("a", "b")
    attrs = {"ta": Attr("bool", False), "tb": Attr("bool", False),
             "perm": Attr("ints", doc="permutation of the product's axes; the last stays last")}
    samples = [Sample((Arg((2, 3, 4, 5)), Arg((2, 3, 5, 2))), {"perm": (0, 2, 1, 3)}, note="heads merged"),
               Sample((Arg((2, 3, 5, 4)), Arg((2, 3, 2, 5))), {"ta": True, "tb": True, "perm": (2, 0, 1, 3)}),
               Sample((Arg((3, 4, 5)), Arg((3, 5, 2))), {"perm": (1, 0, 2)}),
               Sample((Arg((3, 4, 5)), Arg((5, 2))), {"perm": (1, 0, 2)}, note="a matrix b"),
               Sample((Arg((2, 3, 4, 5)), Arg((2, 3, 5, 2))), {"perm": (0, -2, 1, 3)}, note="negative axes")]

    def shape(self, a, b, ta, tb, perm):
        out = get_op("matmul_t").shape(a, b, ta=ta, tb=tb)
        p = _perm(perm, out.rank)
        if out.rank < 3 or p[-1] != out.rank - 1:
            raise ShapeError(f"`matmul_permuted` needs a product of rank >= 3 and a perm that keeps its last "
                             f"axis last, got {out} and {list(perm)}")
        return out.with_shape(tuple(out.shape[i] for i in p))

    def kernel(self, a, b, ta, tb, perm):
        x = np.swapaxes(a, -1, -2) if ta else a
        y = np.swapaxes(b, -1, -2) if tb else b
        shape = np.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
        perm = tuple(i % len(shape) for i in perm)  # (validated by the shape rule; negative axes allowed)
        out = np.empty(tuple(shape[i] for i in perm), np.result_type(x, y))
        view = np.transpose(out, np.argsort(perm))  # the product's axes, in out's memory
        if x.ndim >= 3 and y.ndim >= 3:
            gemm.matmul_into(x, y, view)
        else:  # a product matmul_t computes otherwise (rows times one matrix): its values, copied
            np.copyto(view, gemm.matmul(x, y))
        return out

    def grad(self, b, inputs, outputs, cts, ta, tb, perm):
        back = tuple(int(i) for i in np.argsort(_perm(perm, len(perm))))
        return get_op("matmul_t").grad(b, inputs, None, [b.transpose(cts[0], perm=back)], ta=ta, tb=tb)

    def onnx(self, e, ins, outs, ta, tb, perm):
        product = e.tmp("product")
        get_op("matmul_t").onnx(e, ins, [product], ta=ta, tb=tb)  # (reads e.in_types: the same inputs)
        e.node("Transpose", [product], outs, perm=list(_perm(perm, len(perm))))


@register
class MatMulAdd(Op):
    """``matmul_add(a, b, c)``: ``a @ b + c``, one GEMM accumulating onto a copy of ``c``
    (``c`` broadcasts to the product's shape and does not enlarge it).  Made by the NumPy
    backend's optimizer (compiler/passes/fold_matmul_add.py) from an ``add`` of a
    ``matmul``'s only use; ``b`` is a matrix.  On MKL the sum is rounded as the GEMM
    accumulates (within float32 rounding of the separate ``add``); on NumPy's BLAS it
    is the two ops' own computation (compiler/ops/gemm.py)."""

    name, family = "matmul_add", "fused"
    inputs = ("a", "b", "c")
    samples = [Sample((Arg((3, 4)), Arg((4, 5)), Arg((3, 5)))),
               Sample((Arg((3, 4)), Arg((4, 5)), Arg((5,))), note="a bias row"),
               Sample((Arg((2, 3, 4)), Arg((4, 5)), Arg((2, 3, 5))), note="batched rows"),
               Sample((Arg((2, 3, 4)), Arg((4, 5)), Arg((3, 1))), note="batched, broadcast")]

    def flops(self, in_types, out_types, **attrs):
        """The product's multiply-adds and the add."""
        n = prod_dims(out_types[0].shape)
        return 2 * n * in_types[0].shape[-1] + n

    def shape(self, a, b, c):
        if a.rank < 2 or b.rank != 2:
            raise ShapeError(f"`matmul_add` needs a of rank >= 2 and a matrix b, got {a} and {b}")
        out = get_op("matmul").shape(a, b)
        check_addend("matmul_add", out, c, "the product")
        return out

    def kernel(self, a, b, c):
        return gemm.matmul_add(a, b, c)

    def grad(self, b, inputs, outputs, cts):
        x, y, c = inputs
        dx, dy = get_op("matmul").grad(b, [x, y], outputs, cts)
        return [dx, dy, cts[0]]  # backprop sums c's cotangent over the axes it was broadcast along

    def onnx(self, e, ins, outs):
        product = e.node("MatMul", list(ins[:2]), 1)[0]
        e.node("Add", [product, ins[2]], outs)

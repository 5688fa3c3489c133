"""More elementwise ops of the ``arithmetic`` family (imported by arith.py):
cos and sin (cosine schedules, positional encodings), floor, the boolean
``and`` / ``or`` / ``not`` behind the language's operators, and ``cast``."""
from __future__ import annotations

import numpy as np

from ..types import FLOATS, ShapeError, TensorType, broadcast_shapes, np_dtype
from .arith import _FloatOnlyUnary as _FloatUnary  # defined before arith imports this module
from .registry import Arg, Attr, Op, Sample, register


@register
class Cos(_FloatUnary):
    """``cos(x)``."""

    name, onnx_op = "cos", "Cos"

    def kernel(self, x):
        return np.cos(x)

    def grad(self, b, inputs, outputs, cts):
        return [b.neg(b.mul(cts[0], b.sin(inputs[0])))]


@register
class Sin(_FloatUnary):
    """``sin(x)``."""

    name, onnx_op = "sin", "Sin"

    def kernel(self, x):
        return np.sin(x)

    def grad(self, b, inputs, outputs, cts):
        return [b.mul(cts[0], b.cos(inputs[0]))]


@register
class Floor(_FloatUnary):
    """``floor(x)``; its gradient is zero almost everywhere, so it is not differentiable here."""

    name, onnx_op = "floor", "Floor"
    differentiable = False

    def kernel(self, x):
        return np.floor(x)


class _Logical(Op):
    """A binary op on bool tensors (broadcasting)."""

    family = "arithmetic"
    inputs = ("a", "b")
    differentiable = False
    samples = [Sample((Arg((2, 3), "bool"), Arg((2, 3), "bool"))), Sample((Arg((2, 1), "bool"), Arg((3,), "bool")))]
    word = onnx_op = ""

    def shape(self, a, b):
        if a.dtype != "bool" or b.dtype != "bool":
            raise ShapeError(f"`{self.word}` needs bool operands, got {a} and {b}")
        return TensorType("bool", broadcast_shapes(a.shape, b.shape))

    def onnx(self, e, ins, outs):
        e.node(self.onnx_op, ins, outs)


@register
class LogicalAnd(_Logical):
    """``a and b`` on bool tensors."""

    name, word, onnx_op = "logical_and", "and", "And"

    def kernel(self, a, b):
        return np.logical_and(a, b)


@register
class LogicalOr(_Logical):
    """``a or b`` on bool tensors."""

    name, word, onnx_op = "logical_or", "or", "Or"

    def kernel(self, a, b):
        return np.logical_or(a, b)


@register
class LogicalNot(Op):
    """``not x`` on a bool tensor."""

    name, family = "logical_not", "arithmetic"
    differentiable = False
    samples = [Sample((Arg((2, 3), "bool"),))]

    def shape(self, x):
        if x.dtype != "bool":
            raise ShapeError(f"`not` needs a bool tensor, got {x}")
        return x

    def kernel(self, x):
        return np.logical_not(x)

    def onnx(self, e, ins, outs):
        e.node("Not", ins, outs)


@register
class Cast(Op):
    """``cast(x, f32)``: convert the dtype; the gradient flows between float types."""

    name, family = "cast", "arithmetic"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"dtype": Attr("dtype", choices=("f16", "f32", "f64", "i32", "i64", "bool"))}
    samples = [Sample((Arg((2, 3)),), {"dtype": "f32"}), Sample((Arg((2, 3), "int", 0, 5),), {"dtype": "f64"}, grad=False)]

    def shape(self, x, dtype):
        return x.with_dtype(dtype)

    def kernel(self, x, dtype):
        return x.astype(np_dtype(dtype))

    def grad(self, b, inputs, outputs, cts, dtype):
        src = b.type(inputs[0]).dtype
        if src not in FLOATS or dtype not in FLOATS:
            return [None]
        return [b.cast(cts[0], dtype=src)]

    def onnx(self, e, ins, outs, dtype):
        e.node("Cast", ins, outs, to=e.onnx_dtype(dtype))

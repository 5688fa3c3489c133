"""Arithmetic ops: elementwise binary/unary math and clip (``@``: ``matmul.py``; comparisons
and ``where``: ``compare.py``).

This module is also the reference for how an op entry is written.
"""
from __future__ import annotations

import numpy as np

from ..types import FLOATS, ShapeError, TensorType, broadcast_shapes, np_dtype, same_dtype
from .registry import Arg, Attr, Op, Sample, register

_BIN = (Arg((2, 3)), Arg((2, 3)))
_BCAST = (Arg((4, 1, 3)), Arg((5, 1)))


def zero_where_no_cotangent(b, ct, grad, also=None):
    """``grad`` with 0 wherever the cotangent ``ct`` is 0 (and where ``also`` holds).

    The partial functions' local derivatives are infinite or NaN outside their
    domain (sqrt and log of negatives, division by 0, exp overflow).  A branch
    ``where`` did not select gets a zero cotangent there, and 0 * inf is NaN: the
    "double where" trap.  Masking makes ``where(v > 0, sqrt(v), v)`` have
    gradient 1 at v <= 0, as the function it computes does."""
    out = b.where(b.eq(ct, 0.0), 0.0, grad)
    # a second Where, not an Or: onnxruntime's CUDA provider has no kernel for Or
    return out if also is None else b.where(also, 0.0, out)


class _Binary(Op):
    """Elementwise, broadcasting, same dtype in and out."""

    family = "arithmetic"
    inputs = ("a", "b")
    samples = [Sample(_BIN), Sample(_BCAST, note="broadcast both ways"), Sample((Arg(()), Arg((3,))))]
    onnx_op = ""

    def shape(self, a, b):
        dtype = same_dtype(self.name, a, b)
        _numbers(self.name, a)
        return TensorType(dtype, broadcast_shapes(a.shape, b.shape))

    def onnx(self, e, ins, outs):
        e.node(self.onnx_op, ins, outs)


def _numbers(op: str, t: TensorType) -> None:
    """Arithmetic needs numbers: on bools NumPy's results are not bools (``/`` gives floats,
    ``-`` raises) and onnxruntime has no kernels for most of them."""
    if t.dtype == "bool":
        raise ShapeError(f"`{op}` needs numbers, got {t}; combine booleans with `and`, `or`, `not`, "
                         "or cast them first (`cast(m, f32)`)")


@register
class Add(_Binary):
    name, onnx_op = "add", "Add"

    def kernel(self, a, b):
        return a + b

    def grad(self, b, inputs, outputs, cts):
        return [cts[0], cts[0]]


@register
class Sub(_Binary):
    name, onnx_op = "sub", "Sub"

    def kernel(self, a, b):
        return a - b

    def grad(self, b, inputs, outputs, cts):
        return [cts[0], b.neg(cts[0])]


@register
class Mul(_Binary):
    name, onnx_op = "mul", "Mul"

    def kernel(self, a, b):
        return a * b

    def grad(self, b, inputs, outputs, cts):
        x, y = inputs
        return [b.mul(cts[0], y), b.mul(cts[0], x)]


@register
class Div(_Binary):
    name, onnx_op = "div", "Div"
    samples = [Sample((Arg((2, 3)), Arg((2, 3), "positive"))), Sample((Arg((4, 1, 3)), Arg((5, 1), "positive")))]

    def kernel(self, a, b):
        if a.dtype.kind in "iu":
            return a // b  # integer division floors (ONNX Div truncates: see onnx)
        return a / b

    def onnx(self, e, ins, outs):
        if e.in_types[0].dtype in FLOATS:
            e.node("Div", ins, outs)
        else:  # ONNX's integer Div truncates toward zero, the kernel floors: lower as floor_div
            FloorDiv.onnx(self, e, ins, outs)

    def grad(self, b, inputs, outputs, cts):
        x, y = inputs
        dx = b.div(cts[0], y)
        return [zero_where_no_cotangent(b, cts[0], dx),
                zero_where_no_cotangent(b, cts[0], b.neg(b.mul(dx, outputs[0])))]


@register
class Pow(_Binary):
    name, onnx_op = "pow", "Pow"
    samples = [Sample((Arg((2, 3), "positive"), Arg((2, 3)))), Sample((Arg((3,), "positive"), Arg(())))]

    def kernel(self, a, b):
        return np.power(a, b)

    def grad(self, b, inputs, outputs, cts):
        x, y = inputs
        dy = cts[0]
        # d/dx = y * x**(y-1); d/dy = log(x) * x**y, with the log guarded so x <= 0 gives 0, not NaN
        dx = zero_where_no_cotangent(b, dy, b.mul(dy, b.mul(y, b.pow(x, b.sub(y, 1.0)))))
        positive = b.gt(x, 0.0)
        safe_x = b.where(positive, x, 1.0)
        dexp = b.mul(dy, b.mul(b.log(safe_x), outputs[0]))
        return [dx, zero_where_no_cotangent(b, dy, dexp, also=b.logical_not(positive))]


@register
class Maximum(_Binary):
    name, onnx_op = "maximum", "Max"

    def kernel(self, a, b):
        return np.maximum(a, b)

    def grad(self, b, inputs, outputs, cts):
        pick = b.ge(inputs[0], inputs[1])
        return [b.where(pick, cts[0], 0.0), b.where(pick, 0.0, cts[0])]


@register
class Minimum(_Binary):
    name, onnx_op = "minimum", "Min"

    def kernel(self, a, b):
        return np.minimum(a, b)

    def grad(self, b, inputs, outputs, cts):
        pick = b.le(inputs[0], inputs[1])
        return [b.where(pick, cts[0], 0.0), b.where(pick, 0.0, cts[0])]


def _float_fmod(e, a: str, b: str) -> tuple[str, str]:
    """(C's fmod(a, b), which takes the dividend's sign; where NumPy's mod adds ``b`` to it:
    a nonzero remainder of the other sign than ``b``).  NumPy's float ``%`` and ``//`` start
    from fmod, exact in floating point; ``a - b * floor(a / b)`` rounds ``a / b`` first, so at
    1.5 // 0.3 it gives 5 where NumPy gives 4 (0.3 is a little above 3/10 in binary).
    (Signs by Greater and Where, not Less/Not/And: onnxruntime's CUDA provider lacks those.)"""
    dtype = np_dtype(e.in_types[0].dtype)
    zero, one, minus = (e.const(np.asarray(v, dtype)) for v in (0.0, 1.0, -1.0))

    def sign(v: str) -> str:  # -1, 0 or 1, exactly (a product of the values could underflow to 0)
        (pos,) = e.node("Where", [e.node("Greater", [v, zero], 1)[0], one, zero], 1)
        return e.node("Where", [e.node("Greater", [zero, v], 1)[0], minus, pos], 1)[0]

    (r,) = e.node("Mod", [a, b], 1, fmod=1)
    (fix,) = e.node("Greater", [zero, e.node("Mul", [sign(r), sign(b)], 1)[0]], 1)
    return r, fix


@register
class Mod(_Binary):
    """``a % b`` as Python and NumPy define it: the result takes the divisor's sign."""

    name = "mod"
    differentiable = False
    samples = [Sample((Arg((2, 3), "int", 0, 20), Arg((2, 3), "int", 1, 7))),
               Sample((Arg((2, 3), "int", -20, 20), Arg((2, 3), "int", -7, -1)), note="negative ints"),
               Sample((Arg((2, 3)), Arg((2, 3), "positive")), note="negative floats")]

    def kernel(self, a, b):
        return np.mod(a, b)

    def onnx(self, e, ins, outs):
        if e.in_types[0].dtype not in FLOATS:
            e.node("Mod", ins, outs, fmod=0)  # integer Mod already follows the divisor's sign
            return
        r, fix = _float_fmod(e, *ins)
        (moved,) = e.node("Add", [r, ins[1]], 1)
        e.node("Where", [fix, moved, r], outs)


@register
class FloorDiv(_Binary):
    """``a // b`` as Python and NumPy define it: the quotient rounded down (toward
    −inf), so that ``a == b * (a // b) + a % b``."""

    name = "floor_div"
    differentiable = False  # piecewise constant
    samples = [Sample((Arg((2, 3), "int", -20, 20), Arg((2, 3), "int", 1, 7))),
               Sample((Arg((2, 3), "int", -20, 20), Arg((2, 3), "int", -7, -1)), note="negative divisors"),
               Sample((Arg((2, 3)), Arg((2, 3), "positive")), note="floats")]

    def kernel(self, a, b):
        return np.floor_divide(a, b)

    def onnx(self, e, ins, outs):
        if e.in_types[0].dtype in FLOATS:  # NumPy's npy_divmod, step for step
            a, b = ins
            r, fix = _float_fmod(e, a, b)
            one, half, zero = (e.const(np.asarray(v, np_dtype(e.in_types[0].dtype))) for v in (1.0, 0.5, 0.0))
            (q,) = e.node("Div", [e.node("Sub", [a, r], 1)[0], b], 1)  # exact: a - fmod(a, b) is a multiple of b
            (q,) = e.node("Where", [fix, e.node("Sub", [q, one], 1)[0], q], 1)
            (fl,) = e.node("Floor", [q], 1)
            (up,) = e.node("Greater", [e.node("Sub", [q, fl], 1)[0], half], 1)
            (fl,) = e.node("Where", [up, e.node("Add", [fl, one], 1)[0], fl], 1)
            (by_zero,) = e.node("Equal", [b, zero], 1)  # a / 0: NumPy gives a / b (inf or nan), fmod a nan
            e.node("Where", [by_zero, e.node("Div", ins, 1)[0], fl], outs)
            return
        # integer Div truncates toward zero; a - a % b (Mod follows the divisor's sign) is an exact multiple
        (m,) = e.node("Mod", ins, 1, fmod=0)
        (d,) = e.node("Sub", [ins[0], m], 1)
        e.node("Div", [d, ins[1]], outs)


class _Unary(Op):
    family = "arithmetic"
    samples = [Sample((Arg((2, 3)),)), Sample((Arg(()),))]
    onnx_op = ""

    def shape(self, x):
        return x

    def onnx(self, e, ins, outs):
        e.node(self.onnx_op, ins, outs)


class _FloatOnlyUnary(_Unary):
    """Unary ops that ONNX defines (and NumPy computes) only for floats: exp, log, sqrt."""

    def shape(self, x):
        if x.dtype not in FLOATS:
            raise ShapeError(f"`{self.name}` needs a float tensor, got {x}")
        return x


@register
class Neg(_Unary):
    name, onnx_op = "neg", "Neg"

    def shape(self, x):
        if x.dtype == "bool":
            raise ShapeError(f"unary minus needs a number, got {x}; write `not x` for booleans")
        return x

    def kernel(self, x):
        return -x

    def grad(self, b, inputs, outputs, cts):
        return [b.neg(cts[0])]


@register
class Abs(_Unary):
    name, onnx_op = "abs", "Abs"

    def shape(self, x):
        _numbers(self.name, x)
        return x

    def kernel(self, x):
        return np.abs(x)

    def grad(self, b, inputs, outputs, cts):
        return [b.mul(cts[0], b.sign(inputs[0]))]


@register
class Sign(_Unary):
    name, onnx_op = "sign", "Sign"
    differentiable = False

    def shape(self, x):
        _numbers(self.name, x)
        return x

    def kernel(self, x):
        return np.sign(x)


@register
class Exp(_FloatOnlyUnary):
    name, onnx_op = "exp", "Exp"

    def kernel(self, x):
        return np.exp(x)

    def grad(self, b, inputs, outputs, cts):
        return [zero_where_no_cotangent(b, cts[0], b.mul(cts[0], outputs[0]))]


@register
class Log(_FloatOnlyUnary):
    name, onnx_op = "log", "Log"
    samples = [Sample((Arg((2, 3), "positive"),))]

    def kernel(self, x):
        return np.log(x)

    def grad(self, b, inputs, outputs, cts):
        return [zero_where_no_cotangent(b, cts[0], b.div(cts[0], inputs[0]))]


@register
class Sqrt(_FloatOnlyUnary):
    name, onnx_op = "sqrt", "Sqrt"
    samples = [Sample((Arg((2, 3), "positive"),))]

    def kernel(self, x):
        return np.sqrt(x)

    def grad(self, b, inputs, outputs, cts):
        # at 0 the derivative is infinite; 0 is the subgradient that keeps a norm or a std of a
        # constant row (sqrt(mean((x - mean(x))**2))) finite, as their one-sided limits are
        return [zero_where_no_cotangent(b, cts[0], b.div(b.mul(cts[0], 0.5), outputs[0]),
                                        also=b.eq(outputs[0], 0.0))]


@register
class Clip(Op):
    """``clip(x, lo, hi)``: x limited to [lo, hi]; gradient passes inside the range."""

    name, family = "clip", "arithmetic"
    attrs = {"lo": Attr("float"), "hi": Attr("float")}
    samples = [Sample((Arg((3, 4)),), {"lo": -0.5, "hi": 0.5})]

    def shape(self, x, lo, hi):
        _numbers("clip", x)
        if lo > hi:
            raise ShapeError(f"clip range is empty: lo = {lo} > hi = {hi}")
        return x

    def kernel(self, x, lo, hi):
        return np.clip(x, lo, hi).astype(x.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, lo, hi):
        x = inputs[0]
        inside = b.logical_and(b.ge(x, lo), b.le(x, hi))
        return [b.where(inside, cts[0], 0.0)]

    def onnx(self, e, ins, outs, lo, hi):
        dt = e.in_types[0].dtype
        e.node("Clip", [ins[0], e.const(np.asarray(lo, dtype=np_dtype(dt))), e.const(np.asarray(hi, dtype=np_dtype(dt)))], outs)


from . import mathfn, matmul  # noqa: E402,F401  (cos, sin, floor, logical_or, logical_not; matmul)

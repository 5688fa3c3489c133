"""Activations: relu and friends, sigmoid, tanh, softplus, gelu, softmax.

Gradients reuse the forward output where that is cheaper and stable
(sigmoid, tanh, softmax); ``gelu`` is the tanh approximation, which ONNX
expresses without ``Erf`` and NumPy without SciPy.
"""
from __future__ import annotations

import math

import numpy as np

from ..types import FLOATS, ShapeError, np_dtype
from . import jit
from .registry import Arg, Attr, Composite, Op, Sample, register
from .rows import dot_keepdims, max_keepdims, sum_keepdims
from .shape import i64, norm_axes

_UNARY = [Sample((Arg((3, 4)),)), Sample((Arg(()),))]


class _Activation(Op):
    family = "activation"
    samples = _UNARY
    onnx_op = ""

    def shape(self, x, **attrs):
        if x.dtype not in FLOATS:
            raise ShapeError(f"`{self.name}` needs a float tensor, got {x}")
        return x

    def onnx(self, e, ins, outs, **attrs):
        e.node(self.onnx_op, ins, outs, **attrs)


@register
class Identity(_Activation):
    """``identity(x)``: x itself (a named no-op, handy as a default activation)."""

    name, onnx_op = "identity", "Identity"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through

    def shape(self, x):
        return x

    def kernel(self, x):
        return x

    def grad(self, b, inputs, outputs, cts):
        return [cts[0]]


@register
class Relu(_Activation):
    """``relu(x)`` = max(x, 0); the gradient at 0 is taken as 0."""

    name, onnx_op = "relu", "Relu"

    def kernel(self, x):
        return np.maximum(x, 0)

    def grad(self, b, inputs, outputs, cts):
        # the output gives the same mask as the input (y > 0 exactly where x > 0, NaN in both
        # cases not) and is kept for the next layer anyway, so the pre-activation can die early
        return [b.relu_grad(cts[0], outputs[0])]


@register
class LeakyRelu(_Activation):
    """``leaky_relu(x, alpha=0.01)``."""

    name, onnx_op = "leaky_relu", "LeakyRelu"
    attrs = {"alpha": Attr("float", 0.01)}
    samples = _UNARY + [Sample((Arg((5,)),), {"alpha": 0.2})]

    def kernel(self, x, alpha):
        scaled = x * np.asarray(alpha, x.dtype)
        if 0.0 < alpha <= 1.0:  # then the larger of x and alpha·x is the one where() picks: no branch
            return np.maximum(x, scaled, out=scaled if isinstance(scaled, np.ndarray) else None)
        return np.where(x > 0, x, scaled)

    def grad(self, b, inputs, outputs, cts, alpha):
        return [b.relu_grad(cts[0], inputs[0], alpha=alpha)]


@register
class ReluGrad(_Activation):
    """``relu_grad(dy, x, alpha=0.0)`` = dy * (1 if x > 0 else alpha): the gradient of
    ``relu`` (alpha 0; ``x`` may be relu's input or its output, the mask is the same) and of
    ``leaky_relu``.

    A multiply by the mask, not a select: ``np.where`` is about 10x slower than a multiply
    and onnxruntime's ``Where`` about 7x slower than ``Mul`` by a cast mask, a fifth of an
    MLP's training step.  So a finite ``dy`` gives exactly 0 (times alpha) at x <= 0, a zero
    ``dy`` stays zero, and a NaN or infinite ``dy`` stays non-finite there (docs/guarantees.md:
    such a cotangent means a derivative downstream was infinite already)."""

    name = "relu_grad"
    inputs = ("dy", "x")
    attrs = {"alpha": Attr("float", 0.0)}
    samples = [Sample((Arg((3, 4)), Arg((3, 4)))), Sample((Arg(()), Arg(()))),
               Sample((Arg((2, 5)), Arg((2, 5))), {"alpha": 0.2}),
               Sample((Arg((2, 5)), Arg((2, 5))), {"alpha": -1.5})]

    def shape(self, dy, x, alpha):
        if dy != x:
            raise ShapeError(f"`relu_grad` needs a cotangent of its input's type, got {dy} and {x}")
        return super().shape(dy)

    def kernel(self, dy, x, alpha):
        return relu_grad(dy, x, alpha)

    def grad(self, b, inputs, outputs, cts, alpha):
        # linear in dy with the same mask; piecewise constant in x (zero almost everywhere)
        return [b.relu_grad(cts[0], inputs[1], alpha=alpha), None]

    def onnx(self, e, ins, outs, alpha):
        t = e.in_types[0]
        dt = np.dtype(np_dtype(t.dtype))
        (positive,) = e.node("Greater", [ins[1], e.const(np.zeros((), dt))], 1)
        (mask,) = e.node("Cast", [positive], 1, to=e.onnx_dtype(t.dtype))
        if 0.0 < alpha <= 1.0:  # 1 where x > 0, alpha elsewhere (as the kernel computes it)
            (mask,) = e.node("Max", [mask, e.const(np.asarray(alpha, dt))], 1)
        elif alpha:
            (mask,) = e.node("Mul", [mask, e.const(np.asarray(1.0 - alpha, dt))], 1)
            (mask,) = e.node("Add", [mask, e.const(np.asarray(alpha, dt))], 1)
        e.node("Mul", [ins[0], mask], outs)


def relu_grad(dy, x, alpha=0.0, out=None):
    """dy * (x > 0 ? 1 : alpha), into ``out`` when given (which may be ``dy`` or ``x``)."""
    if out is None or out is dy:
        # the mask as floats in a fresh buffer, then multiplied in place: one allocation, and
        # float * float runs faster than float * bool
        mask = np.greater(x, 0, out=np.empty(np.shape(dy), dy.dtype))
    else:
        mask = np.greater(x, 0, out=out)  # out may be x: elementwise, each read before its write
    if 0.0 < alpha <= 1.0:
        np.maximum(mask, alpha, out=mask)  # 1 stays 1, 0 becomes alpha: exactly
    elif alpha:
        np.multiply(mask, 1.0 - alpha, out=mask)  # alpha + (1 - alpha) · mask, within rounding
        np.add(mask, alpha, out=mask)
    return np.multiply(dy, mask, out=mask if out is None else out)


@register
class Elu(_Activation):
    """``elu(x, alpha=1.0)`` = x for x > 0, alpha * (exp(x) - 1) otherwise."""

    name, onnx_op = "elu", "Elu"
    attrs = {"alpha": Attr("float", 1.0)}

    def kernel(self, x, alpha):
        a = np.asarray(alpha, x.dtype)
        return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))

    def grad(self, b, inputs, outputs, cts, alpha):
        # for x <= 0: d/dx alpha*(e^x - 1) = y + alpha
        return [b.where(b.gt(inputs[0], 0.0), cts[0], b.mul(cts[0], b.add(outputs[0], alpha)))]


@register
class Selu(Composite):
    """``selu(x)``: scale * elu(x, alpha) with the self-normalising constants."""

    name, family = "selu", "activation"
    samples = _UNARY
    ALPHA, SCALE = 1.6732632423543772, 1.0507009873554805

    def expand(self, b, x):
        return b.mul(b.elu(x, alpha=self.ALPHA), self.SCALE)


@register
class Sigmoid(_Activation):
    """``sigmoid(x)`` = 1 / (1 + exp(-x)), without overflow for large |x|."""

    name, onnx_op = "sigmoid", "Sigmoid"

    def kernel(self, x):
        # one tanh instead of exp + two divisions + where: stable for any |x| and about 3x faster
        half = np.asarray(0.5, x.dtype)
        return half * np.tanh(half * x) + half

    def grad(self, b, inputs, outputs, cts):
        y = outputs[0]
        return [b.mul(cts[0], b.mul(y, b.sub(1.0, y)))]


@register
class Tanh(_Activation):
    """``tanh(x)``."""

    name, onnx_op = "tanh", "Tanh"

    def kernel(self, x):
        return np.tanh(x)

    def grad(self, b, inputs, outputs, cts):
        y = outputs[0]
        return [b.mul(cts[0], b.sub(1.0, b.mul(y, y)))]


@register
class Softplus(_Activation):
    """``softplus(x)`` = log(1 + exp(x)), stable for large |x|."""

    name, onnx_op = "softplus", "Softplus"

    def kernel(self, x):
        return np.logaddexp(np.zeros((), x.dtype), x)

    def grad(self, b, inputs, outputs, cts):
        return [b.mul(cts[0], b.sigmoid(inputs[0]))]


@register
class Softsign(_Activation):
    """``softsign(x)`` = x / (1 + |x|)."""

    name, onnx_op = "softsign", "Softsign"

    def kernel(self, x):
        return x / (1 + np.abs(x))

    def grad(self, b, inputs, outputs, cts):
        d = b.add(b.abs(inputs[0]), 1.0)
        return [b.div(cts[0], b.mul(d, d))]


@register
class Swish(Composite):
    """``swish(x)`` = x * sigmoid(x) (also called SiLU)."""

    name, family = "swish", "activation"
    samples = _UNARY

    def expand(self, b, x):
        return b.mul(x, b.sigmoid(x))


@register
class Gelu(Composite):
    """``gelu(x)``: the tanh approximation 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""

    name, family = "gelu", "activation"
    samples = _UNARY

    def expand(self, b, x):
        inner = b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), 0.044715)), math.sqrt(2 / math.pi))
        return b.mul(b.mul(x, 0.5), b.add(b.tanh(inner), 1.0))


class _SoftmaxLike(_Activation):
    attrs = {"axis": Attr("int", -1)}
    samples = [Sample((Arg((3, 5)),)), Sample((Arg((2, 3, 4)),), {"axis": 1})]

    def shape(self, x, axis):
        norm_axes(self.name, axis, x.rank)
        return super().shape(x)

    def onnx(self, e, ins, outs, axis):
        e.node(self.onnx_op, ins, outs, axis=axis)


# |x| up to which softmax exponentiates x itself: e^64 ~ 6e27 (float32's maximum is 3.4e38, so
# rows of up to 10^10 elements cannot overflow their sum), e^-64 ~ 1.6e-28 is a normal float32
_EXP_SAFE = 64.0
_EXP_SAFE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# from this many elements (the attention scores); below, the row passes saved are a few µs and the
# shifted form's rounding is kept (the loss gradient's softmax, which chaotic specs amplify)
_EXP_SAFE_MIN_SIZE = 1 << 15


def _exp_is_safe(x) -> bool:
    """True for a float32/float64 array of at least ``_EXP_SAFE_MIN_SIZE`` elements whose values
    all lie in [-_EXP_SAFE, _EXP_SAFE] (False for NaN or infinities): then ``exp(x) / sum(exp(x))``
    needs no shift by the row maximum.

    The shift is the usual guard against overflow (and against a row whose exponentials all
    underflow to 0); within these bounds neither can happen, and the unshifted form is as
    accurate (each ``exp`` rounds once; the shifted form first rounds ``x - max``, which ``exp``
    turns into a relative error of ``|x - max|`` ulps).  Checking costs two whole-array
    reductions (~20 µs at the Transformer's [16, 4, 64, 64] scores) and saves the row maximum
    and the broadcast subtraction (452 -> 225 µs there).  The values agree with the shifted
    form within float rounding, not bit for bit."""
    if not isinstance(x, np.ndarray) or x.dtype not in _EXP_SAFE_DTYPES or x.size < _EXP_SAFE_MIN_SIZE:
        return False
    return bool(x.max() <= _EXP_SAFE) and bool(x.min() >= -_EXP_SAFE)  # NaN: both comparisons False


@register
class Softmax(_SoftmaxLike):
    """``softmax(x, axis=-1)``: max-shifted, or on NumPy ``exp(x)`` itself when every |x| <= 64
    (float32/float64 arrays of at least 2^15 elements; see ``_exp_is_safe``)."""

    name, onnx_op = "softmax", "Softmax"

    def kernel(self, x, axis):
        if _exp_is_safe(x):  # no row can overflow or vanish: the shift by the row maximum is not needed
            z = np.exp(x)
            z /= sum_keepdims(z, axis)
            return z
        z = x - max_keepdims(x, axis)
        if not isinstance(z, np.ndarray) or z.ndim == 0 or z.dtype.kind != "f":
            z = np.exp(z)
            return z / np.sum(z, axis=axis, keepdims=True)
        np.exp(z, out=z)  # z is ours: the same ufuncs in the same order, in one buffer
        z /= sum_keepdims(z, axis)
        return z

    def grad(self, b, inputs, outputs, cts, axis):
        return [b.softmax_grad(cts[0], outputs[0], axis=axis)]


@register
class SoftmaxGrad(_SoftmaxLike):
    """``softmax_grad(dy, y, axis=-1)`` = y * (dy - sum(dy * y, axis)): the gradient of
    ``y = softmax(x, axis)`` for the cotangent ``dy``.  One kernel: the row sums of the
    product are one ``einsum`` pass (compiler/ops/rows.py), not a product array and a sum."""

    name = "softmax_grad"
    inputs = ("dy", "y")
    samples = [Sample((Arg((3, 5)), Arg((3, 5), "positive"))),
               Sample((Arg((2, 3, 4)), Arg((2, 3, 4), "positive")), {"axis": 1})]

    def shape(self, dy, y, axis):
        if dy != y:
            raise ShapeError(f"`softmax_grad` needs a cotangent of its output's type, got {dy} and {y}")
        return super().shape(y, axis)

    def kernel(self, dy, y, axis):
        compiled = jit.for_size(np.size(y))
        if compiled is not None and axis in (-1, np.ndim(y) - 1) and jit.rows_of(y) \
                and isinstance(dy, np.ndarray) and dy.dtype == y.dtype:
            rows = np.ascontiguousarray(np.broadcast_to(dy, y.shape))  # a broadcast cotangent: its rows once
            n = y.shape[-1]
            dx = np.empty(y.shape, y.dtype)
            compiled.softmax_grad_rows(rows.reshape(-1, n), y.reshape(-1, n), dx.reshape(-1, n))
            return dx
        dx = dy - dot_keepdims(dy, y, axis)
        dx *= y  # dx is ours
        return dx

    def grad(self, b, inputs, outputs, cts, axis):
        # f = y * (dy - s), s = sum(dy * y): linear in dy with the same form; in y,
        # ct * (dy - s) - dy * sum(ct * y)
        dy, y = inputs
        ct = cts[0]
        s = b.sum(b.mul(dy, y), axes=axis, keepdims=True)
        along = b.sum(b.mul(ct, y), axes=axis, keepdims=True)
        return [b.softmax_grad(ct, y, axis=axis), b.sub(b.mul(ct, b.sub(dy, s)), b.mul(dy, along))]

    def onnx(self, e, ins, outs, axis):
        dy, y = ins
        (prod,) = e.node("Mul", [dy, y], 1)
        (dot,) = e.node("ReduceSum", [prod, i64(e, norm_axes(self.name, axis, e.in_types[0].rank))], 1,
                        keepdims=1)
        (diff,) = e.node("Sub", [dy, dot], 1)
        e.node("Mul", [y, diff], outs)


@register
class LogSoftmax(_SoftmaxLike):
    """``log_softmax(x, axis=-1)`` = x - logsumexp(x, axis)."""

    name, onnx_op = "log_softmax", "LogSoftmax"

    def kernel(self, x, axis):
        z = x - max_keepdims(x, axis)
        return z - np.log(sum_keepdims(np.exp(z), axis))

    def grad(self, b, inputs, outputs, cts, axis):
        total = b.sum(cts[0], axes=axis, keepdims=True)
        return [b.sub(cts[0], b.mul(b.exp(outputs[0]), total))]

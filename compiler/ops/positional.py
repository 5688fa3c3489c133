"""Ops about positions along axes (family ``shape``; registered by the import at
the bottom of ``shape.py``):

- makers: ``arange(start, stop, step)``, ``eye(n, m, k)`` — their sizes may
  be symbolic dims (``arange(T)``, ``eye(T)``), resolved when the model runs;
- masks of the last two axes: ``tril(x, k)``, ``triu(x, k)``;
- orders: ``cumsum(x, axis, exclusive, reverse)``, ``flip(x, axes)``,
  ``reverse_sequence(x, lengths, batch_axis, time_axis)`` (the first
  ``lengths[b]`` steps of each example reversed, the padding left in place).

Every differentiable one is linear, and its gradient is its adjoint:
``tril``/``triu`` and ``flip``/``reverse_sequence`` are their own,
``cumsum``'s is the cumsum in the other direction.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym, dim_str, floordiv
from ..types import DTYPES, INTS, ShapeError, TensorType, norm_axis
from .registry import Arg, Attr, Op, Sample, register
from .shape import i64, norm_axes

_NUMERIC = ("f16", "f32", "f64", "i32", "i64")


def _dim(op: str, key: str, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, Sym)):
        raise ShapeError(f"`{key}` of `{op}` must be an integer or a dim, got {v!r}")
    return int(v) if isinstance(v, (int, np.integer)) else v


def _scalar(e, value, dtype: str) -> str:
    """A 0-d ONNX tensor of ``dtype`` holding the dim or int ``value`` (computed for a Sym)."""
    if not isinstance(value, Sym):
        return e.const(np.asarray(value, dtype=DTYPES[dtype]))
    (v,) = e.node("Reshape", [e.shape_tensor((value,)), e.const(np.zeros(0, np.int64))], 1)
    if dtype != "i64":
        (v,) = e.node("Cast", [v], 1, to=e.onnx_dtype(dtype))
    return v


@register
class Arange(Op):
    """``arange(start, stop=None, step=1, dtype=i64)``: start, start + step, … below
    ``stop`` (``arange(n)`` is 0 … n − 1); bounds are integers or dims."""

    name, family = "arange", "shape"
    inputs = ()
    attrs = {"start": Attr("any"), "stop": Attr("any", None), "step": Attr("int", 1),
             "dtype": Attr("dtype", "i64", _NUMERIC)}
    differentiable = False  # no tensor inputs
    samples = [Sample((), {"start": 5}), Sample((), {"start": 2, "stop": 9, "step": 3, "dtype": "f32"}),
               Sample((), {"start": 6, "stop": 0, "step": -2}), Sample((), {"start": 3, "stop": 3})]

    @staticmethod
    def _bounds(start, stop):
        return (0, start) if stop is None else (start, stop)

    def shape(self, start, stop, step, dtype):
        lo, hi = (_dim(self.name, k, v) for k, v in zip(("start", "stop"), self._bounds(start, stop)))
        if step == 0:
            raise ShapeError("`step` of `arange` must not be 0")
        span = hi - lo if step > 0 else lo - hi
        if isinstance(span, Sym) and step < 0:
            raise ShapeError("`arange` over a symbolic range needs a positive step")
        n = floordiv(span + abs(step) - 1, abs(step))
        return TensorType(dtype, (max(n, 0) if isinstance(n, int) else n,))

    def kernel(self, start, stop, step, dtype):
        lo, hi = self._bounds(start, stop)
        return np.arange(lo, hi, step).astype(DTYPES[dtype])

    def onnx(self, e, ins, outs, start, stop, step, dtype):
        lo, hi = self._bounds(start, stop)
        if dtype != "f16":
            e.node("Range", [_scalar(e, lo, dtype), _scalar(e, hi, dtype), _scalar(e, step, dtype)], outs)
            return
        # ONNX's Range takes no f16: count in i64 (the bounds are integers) and cast
        (count,) = e.node("Range", [_scalar(e, lo, "i64"), _scalar(e, hi, "i64"), _scalar(e, step, "i64")], 1)
        e.node("Cast", [count], outs, to=e.onnx_dtype("f16"))


@register
class Eye(Op):
    """``eye(n, m=n, k=0, dtype=f32)``: ``[n, m]`` with ones on diagonal ``k`` (above
    the main one for k > 0); ``n`` and ``m`` may be dims."""

    name, family = "eye", "shape"
    inputs = ()
    attrs = {"n": Attr("any"), "m": Attr("any", None), "k": Attr("int", 0),
             "dtype": Attr("dtype", "f32", tuple(DTYPES))}
    differentiable = False
    samples = [Sample((), {"n": 3}), Sample((), {"n": 2, "m": 4, "k": 1, "dtype": "i64"}),
               Sample((), {"n": 4, "m": 3, "k": -2, "dtype": "bool"})]

    def shape(self, n, m, k, dtype):
        n = _dim(self.name, "n", n)
        return TensorType(dtype, (n, n if m is None else _dim(self.name, "m", m)))

    def kernel(self, n, m, k, dtype):
        return np.eye(n, n if m is None else m, k, dtype=DTYPES[dtype])

    def onnx(self, e, ins, outs, n, m, k, dtype):
        # rows[i] + k == cols[j], from two Ranges, so symbolic sizes work
        m = n if m is None else m
        one, zero = e.const(np.asarray(1, np.int64)), e.const(np.asarray(0, np.int64))
        (rows,) = e.node("Range", [zero, _scalar(e, n, "i64"), one], 1)
        (cols,) = e.node("Range", [zero, _scalar(e, m, "i64"), one], 1)
        (rows,) = e.node("Unsqueeze", [rows, i64(e, [1])], 1)
        if k:
            (rows,) = e.node("Add", [rows, e.const(np.asarray(k, np.int64))], 1)
        (hit,) = e.node("Equal", [rows, cols], 1)
        e.node("Cast", [hit], outs, to=e.onnx_dtype(dtype))


class _Triangle(Op):
    """Keep one triangle of the last two axes (relative to diagonal ``k``), zero the rest."""

    family = "shape"
    attrs = {"k": Attr("int", 0)}
    upper = False
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((2, 4, 3)),), {"k": 1}), Sample((Arg((3, 3)),), {"k": -1}),
               Sample((Arg((2, 3, 3), "int", -5, 5),), note="ints")]

    def shape(self, x, k):
        if x.rank < 2:
            raise ShapeError(f"`{self.name}` needs a tensor of rank >= 2, got {x}")
        return x

    def kernel(self, x, k):
        return (np.triu if self.upper else np.tril)(x, k)

    def grad(self, b, inputs, outputs, cts, k):
        return [b.apply(self.name, cts[0], k=k)]

    def onnx(self, e, ins, outs, k):
        e.node("Trilu", [ins[0], e.const(np.asarray(k, np.int64))], outs, upper=int(self.upper))


@register
class Tril(_Triangle):
    """``tril(x, k=0)``: the elements on and below diagonal ``k`` of the last two axes."""

    name = "tril"


@register
class Triu(_Triangle):
    """``triu(x, k=0)``: the elements on and above diagonal ``k`` of the last two axes."""

    name, upper = "triu", True


@register
class Cumsum(Op):
    """``cumsum(x, axis=-1, exclusive=false, reverse=false)``: running sums along
    ``axis`` (``exclusive``: each sum leaves its own element out; ``reverse``: from
    the end)."""

    name, family = "cumsum", "shape"
    attrs = {"axis": Attr("int", -1), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)}
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((2, 5, 3)),), {"axis": 1, "exclusive": True}),
               Sample((Arg((4, 2)),), {"axis": 0, "reverse": True}),
               Sample((Arg((2, 4)),), {"exclusive": True, "reverse": True}),
               Sample((Arg((2, 3), "int", -5, 5),), {"axis": 0}, note="ints")]

    def shape(self, x, axis, exclusive, reverse):
        if x.dtype not in _NUMERIC:
            raise ShapeError(f"`cumsum` needs a numeric tensor, got {x}")
        norm_axis(axis, x.rank)
        return x

    def kernel(self, x, axis, exclusive, reverse):
        v = np.flip(x, axis) if reverse else x
        out = np.cumsum(v, axis=axis, dtype=x.dtype)
        if exclusive:
            out = out - v
        return np.ascontiguousarray(np.flip(out, axis) if reverse else out)

    def grad(self, b, inputs, outputs, cts, axis, exclusive, reverse):
        return [b.cumsum(cts[0], axis=axis, exclusive=exclusive, reverse=not reverse)]

    def onnx(self, e, ins, outs, axis, exclusive, reverse):
        e.node("CumSum", [ins[0], e.const(np.asarray(axis, np.int64))], outs, exclusive=int(exclusive),
               reverse=int(reverse))


@register
class Flip(Op):
    """``flip(x, axes=None)``: the order of ``axes`` reversed (None: every axis)."""

    name, family = "flip", "shape"
    attrs = {"axes": Attr("any", None, doc="int, list of ints, or None for every axis")}
    samples = [Sample((Arg((3, 4)),), {"axes": 1}), Sample((Arg((2, 3, 4)),), {"axes": (0, -1)}),
               Sample((Arg((2, 3)),)), Sample((Arg((4,), "int", 0, 9),), {"axes": 0}, note="ints")]

    @staticmethod
    def _axes(rank, axes):
        return tuple(range(rank)) if axes is None else norm_axes("flip", axes, rank)

    def shape(self, x, axes):
        self._axes(x.rank, axes)
        return x

    def kernel(self, x, axes):
        return np.array(np.flip(x, self._axes(x.ndim, axes)), order="C")  # (ascontiguousarray makes 0-d 1-d)

    def grad(self, b, inputs, outputs, cts, axes):
        return [b.flip(cts[0], axes=axes)]

    def onnx(self, e, ins, outs, axes):
        axes = self._axes(e.in_types[0].rank, axes)
        if not axes:  # a scalar (or no axis named): nothing to reverse, and Slice takes no scalars
            e.node("Identity", ins, outs)
            return
        big = np.iinfo(np.int64).max
        e.node("Slice", [ins[0], i64(e, [-1] * len(axes)), i64(e, [-big] * len(axes)), i64(e, axes),
                         i64(e, [-1] * len(axes))], outs)


@register
class ReverseSequence(Op):
    """``reverse_sequence(x, lengths, batch_axis=0, time_axis=1)``: for each example
    b, the first ``lengths[b]`` steps along ``time_axis`` reversed and the rest (the
    padding) left in place — how a backward RNN reads a padded batch."""

    name, family = "reverse_sequence", "shape"
    inputs = ("x", "lengths")
    attrs = {"batch_axis": Attr("int", 0, choices=(0, 1)), "time_axis": Attr("int", 1, choices=(0, 1))}
    samples = [Sample((Arg((3, 5, 2)), np.array([5, 2, 0]))), Sample((Arg((4, 3)), np.array([1, 3, 2])),
                                                                       {"batch_axis": 1, "time_axis": 0})]

    def shape(self, x, lengths, batch_axis, time_axis):
        if batch_axis == time_axis:
            raise ShapeError("`reverse_sequence` needs different batch and time axes")
        if x.rank < 2:
            raise ShapeError(f"`reverse_sequence` needs a tensor of rank >= 2, got {x}")
        if lengths.dtype not in INTS or lengths.shape != (x.shape[batch_axis],):
            raise ShapeError(f"`reverse_sequence` needs integer lengths [{dim_str(x.shape[batch_axis])}], "
                             f"got {lengths}")
        return x

    def kernel(self, x, lengths, batch_axis, time_axis):
        t = x.shape[time_axis]
        steps = np.arange(t)[None, :]
        n = np.clip(lengths.astype(np.int64), 0, t)[:, None]
        src = np.where(steps < n, n - 1 - steps, steps)  # [batch, time]
        if batch_axis == 1:
            src = src.T
        return np.take_along_axis(x, src.reshape(src.shape + (1,) * (x.ndim - 2)), axis=time_axis)

    def grad(self, b, inputs, outputs, cts, batch_axis, time_axis):
        return [b.reverse_sequence(cts[0], inputs[1], batch_axis=batch_axis, time_axis=time_axis), None]

    def onnx(self, e, ins, outs, batch_axis, time_axis):
        lengths = ins[1]
        if e.in_types[1].dtype != "i64":
            (lengths,) = e.node("Cast", [lengths], 1, to=e.onnx_dtype("i64"))
        e.node("ReverseSequence", [ins[0], lengths], outs, batch_axis=batch_axis, time_axis=time_axis)


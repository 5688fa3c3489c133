"""Reductions: sum, mean, reduce_max/min, logsumexp, argmax/argmin, var, std,
count, and ``sum_to`` (the backprop driver's un-broadcast).

``axes`` is an int, a list of ints, or omitted (= every axis); ``keepdims``
keeps reduced axes as size 1.  A mean over a symbolic dim divides by a
``count`` node evaluated at run time, so ``mean`` over ``B`` stays exact for
every batch size.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym
from ..types import FLOATS, ShapeError, TensorType
from .registry import Arg, Attr, Composite, Op, Sample, register
from .rows import row_sum
from .shape import i64, norm_axes, prod_dims

_AXES = {"axes": Attr("any", None, doc="int, list of ints, or none for all"), "keepdims": Attr("bool", False)}
_SAMPLES = [Sample((Arg((2, 3, 4)),)), Sample((Arg((2, 3, 4)),), {"axes": 1}),
            Sample((Arg((2, 3, 4)),), {"axes": [0, 2], "keepdims": True}), Sample((Arg((5,)),), {"axes": -1})]


def reduced_axes(op: str, axes, rank: int) -> tuple[int, ...]:
    """The normalised axes a reduction acts on (all of them for ``None``)."""
    return tuple(range(rank)) if axes is None else norm_axes(op, axes, rank)


def reduced_shape(shape: tuple, axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def keep(b, v, axes: tuple[int, ...], keepdims: bool):
    """``v`` (a reduction's result) with the reduced axes restored as size 1."""
    return v if keepdims or not axes else b.unsqueeze(v, axes=axes)


def spread(b, ct, x, axes: tuple[int, ...], keepdims: bool):
    """A reduction's cotangent broadcast back over ``x``'s shape."""
    return b.broadcast_to(keep(b, ct, axes, keepdims), shape=b.type(x).shape)


class _Reduce(Op):
    family = "reduction"
    attrs = _AXES
    samples = _SAMPLES
    onnx_op = ""

    def shape(self, x, axes, keepdims):
        ax = reduced_axes(self.name, axes, x.rank)
        return x.with_shape(reduced_shape(x.shape, ax, keepdims))

    def onnx(self, e, ins, outs, axes, keepdims):
        ax = reduced_axes(self.name, axes, e.in_types[0].rank)
        if not ax:  # nothing to reduce: ONNX would reduce everything for empty axes
            e.node("Identity", ins, outs)
            return
        if e.in_types[0].dtype != "bool":
            e.node(self.onnx_op, [ins[0], i64(e, ax)], outs, keepdims=int(keepdims))
            return
        # reduce_max/min of bools (any/all): ONNX's reductions take no bools, so reduce 0/1 ints
        (x,) = e.node("Cast", ins, 1, to=e.onnx_dtype("i32"))
        (r,) = e.node(self.onnx_op, [x, i64(e, ax)], 1, keepdims=int(keepdims))
        e.node("Cast", [r], outs, to=e.onnx_dtype("bool"))


@register
class Sum(_Reduce):
    """``sum(x, axes=None, keepdims=false)``."""

    name, onnx_op = "sum", "ReduceSum"

    def shape(self, x, axes, keepdims):
        if x.dtype == "bool":  # NumPy would count the trues (an i64), not give the bool the type says
            raise ShapeError(f"`sum` needs numbers, got {x}; cast booleans first (`sum(cast(m, i64))`)")
        return super().shape(x, axes, keepdims)

    def kernel(self, x, axes, keepdims):
        ax = reduced_axes("sum", axes, x.ndim)
        if ax and ax[0] > 0 and ax == tuple(range(ax[0], x.ndim)):  # trailing axes: row sums
            sums = _trailing_sum(x, ax[0], keepdims)
            if sums is not None:
                return sums
        # (NumPy sums i32 as i64: keep the declared dtype, as ReduceSum does)
        return np.sum(x, axis=ax, keepdims=keepdims, dtype=x.dtype if x.dtype.kind in "iu" else None)

    def grad(self, b, inputs, outputs, cts, axes, keepdims):
        x = inputs[0]
        return [spread(b, cts[0], x, reduced_axes("sum", axes, b.type(x).rank), keepdims)]


def _trailing_sum(x, first: int, keepdims: bool):
    """``np.sum`` over the axes ``first``.. of a C-contiguous ``x`` as BLAS row sums
    (compiler/ops/rows.py), or None where that does not apply."""
    if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or x.size == 0:
        return None  # (an empty x has no [rows, -1] view to take)
    sums = row_sum(x.reshape(x.shape[:first] + (-1,)), keepdims=False)
    if sums is None:
        return None
    return sums.reshape(x.shape[:first] + (1,) * (x.ndim - first)) if keepdims else sums


class _Extreme(_Reduce):
    """reduce_max / reduce_min: the cotangent is shared equally among ties."""

    def grad(self, b, inputs, outputs, cts, axes, keepdims):
        x = inputs[0]
        ax = reduced_axes(self.name, axes, b.type(x).rank)
        hit = b.cast(b.eq(x, keep(b, outputs[0], ax, keepdims)), dtype=b.type(x).dtype)
        share = b.div(hit, b.sum(hit, axes=ax, keepdims=True))
        return [b.mul(share, keep(b, cts[0], ax, keepdims))]


@register
class ReduceMax(_Extreme):
    """``reduce_max(x, axes=None, keepdims=false)``."""

    name, onnx_op = "reduce_max", "ReduceMax"

    def kernel(self, x, axes, keepdims):
        return np.max(x, axis=reduced_axes(self.name, axes, x.ndim), keepdims=keepdims)


@register
class ReduceMin(_Extreme):
    """``reduce_min(x, axes=None, keepdims=false)``."""

    name, onnx_op = "reduce_min", "ReduceMin"

    def kernel(self, x, axes, keepdims):
        return np.min(x, axis=reduced_axes(self.name, axes, x.ndim), keepdims=keepdims)


@register
class LogSumExp(_Reduce):
    """``logsumexp(x, axes=None, keepdims=false)``, computed stably (max shifted out)."""

    name = "logsumexp"

    def shape(self, x, axes, keepdims):
        if x.dtype not in FLOATS:
            raise ShapeError(f"`logsumexp` needs a float tensor, got {x}")
        return super().shape(x, axes, keepdims)

    def kernel(self, x, axes, keepdims):
        ax = reduced_axes(self.name, axes, x.ndim)
        if x.size == 0:
            return np.log(np.sum(np.exp(x), axis=ax, keepdims=keepdims))
        m = np.max(x, axis=ax, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
        return out if keepdims else np.squeeze(out, axis=ax)

    def grad(self, b, inputs, outputs, cts, axes, keepdims):
        x = inputs[0]
        ax = reduced_axes(self.name, axes, b.type(x).rank)
        soft = b.exp(b.sub(x, keep(b, outputs[0], ax, keepdims)))
        return [b.mul(soft, keep(b, cts[0], ax, keepdims))]

    def onnx(self, e, ins, outs, axes, keepdims):
        ax = reduced_axes(self.name, axes, e.in_types[0].rank)
        if not ax:
            e.node("Identity", ins, outs)
            return
        axes_t = i64(e, ax)
        (m,) = e.node("ReduceMax", [ins[0], axes_t], 1, keepdims=1)
        (shifted,) = e.node("Sub", [ins[0], m], 1)
        (ex,) = e.node("Exp", [shifted], 1)
        (s,) = e.node("ReduceSum", [ex, axes_t], 1, keepdims=1)
        (lg,) = e.node("Log", [s], 1)
        if keepdims:
            e.node("Add", [lg, m], outs)
        else:
            (full,) = e.node("Add", [lg, m], 1)
            e.node("Squeeze", [full, axes_t], outs)


class _ArgExtreme(Op):
    family = "reduction"
    attrs = {"axis": Attr("int", -1), "keepdims": Attr("bool", False)}
    differentiable = False
    samples = [Sample((Arg((3, 5)),)), Sample((Arg((2, 3, 4)),), {"axis": 1, "keepdims": True})]
    onnx_op = ""

    def shape(self, x, axis, keepdims):
        (ax,) = norm_axes(self.name, axis, x.rank)
        return TensorType("i64", reduced_shape(x.shape, (ax,), keepdims))

    def kernel(self, x, axis, keepdims):
        out = self.np_fn(x, axis=axis).astype(np.int64)
        return np.expand_dims(out, axis) if keepdims else out

    def onnx(self, e, ins, outs, axis, keepdims):
        (ax,) = norm_axes(self.name, axis, e.in_types[0].rank)
        if e.in_types[0].dtype == "bool":  # ONNX's ArgMax/ArgMin take no bools: compare 0/1 ints
            ins = e.node("Cast", ins, 1, to=e.onnx_dtype("i32"))
        e.node(self.onnx_op, ins, outs, axis=ax, keepdims=int(keepdims), select_last_index=0)


@register
class Argmax(_ArgExtreme):
    """``argmax(x, axis=-1, keepdims=false)``: i64 index of the first maximum."""

    name, onnx_op, np_fn = "argmax", "ArgMax", staticmethod(np.argmax)
    free = True  # dlc summary: 0 FLOPs


@register
class Argmin(_ArgExtreme):
    """``argmin(x, axis=-1, keepdims=false)``: i64 index of the first minimum."""

    name, onnx_op, np_fn = "argmin", "ArgMin", staticmethod(np.argmin)


@register
class Count(Op):
    """``count(x, axes=None)``: how many elements of ``x`` a reduction over
    ``axes`` combines, as a scalar of x's float dtype, read from x's run-time
    shape (so it is right for every value of a symbolic dim)."""

    name, family = "count", "reduction"
    attrs = {"axes": Attr("any", None)}
    differentiable = False
    samples = [Sample((Arg((2, 3, 4)),)), Sample((Arg((2, 3, 4)),), {"axes": [0, 2]})]

    def shape(self, x, axes):
        reduced_axes("count", axes, x.rank)
        return TensorType(x.dtype if x.dtype in FLOATS else "f32", ())

    def kernel(self, x, axes):
        n = prod_dims(x.shape[a] for a in reduced_axes("count", axes, x.ndim))
        return np.asarray(n, dtype=x.dtype if x.dtype.kind == "f" else np.float32)

    def onnx(self, e, ins, outs, axes):
        ax = reduced_axes("count", axes, e.in_types[0].rank)
        (shp,) = e.node("Shape", ins, 1)
        (dims,) = e.node("Gather", [shp, e.const(np.asarray(ax, np.int64))], 1, axis=0)
        e.node("Cast", [e.int_product(dims, len(ax))], outs, to=e.onnx_dtype(e.out_types[0].dtype))


def count_of(b, x, axes: tuple[int, ...]):
    """The element count of ``axes`` of ``x``: a constant when static, else a ``count`` node."""
    n = prod_dims(b.type(x).shape[a] for a in axes)
    if isinstance(n, Sym):
        return b.count(x, axes=list(axes))
    return float(n)


@register
class Mean(Composite):
    """``mean(x, axes=None, keepdims=false)`` = sum / count."""

    name, family = "mean", "reduction"
    attrs = _AXES
    samples = _SAMPLES

    def expand(self, b, x, axes, keepdims):
        ax = reduced_axes("mean", axes, b.type(x).rank)
        return b.div(b.sum(x, axes=ax, keepdims=keepdims), count_of(b, x, ax))


@register
class Var(Composite):
    """``var(x, axes=None, keepdims=false)``: population variance (divides by n)."""

    name, family = "var", "reduction"
    attrs = _AXES
    samples = _SAMPLES

    def expand(self, b, x, axes, keepdims):
        ax = reduced_axes("var", axes, b.type(x).rank)
        centred = b.sub(x, b.mean(x, axes=ax, keepdims=True))
        return b.mean(b.mul(centred, centred), axes=ax, keepdims=keepdims)


@register
class Std(Composite):
    """``std(x, axes=None, keepdims=false, eps=0)``: sqrt(var + eps)."""

    name, family = "std", "reduction"
    attrs = {**_AXES, "eps": Attr("float", 0.0)}
    samples = [Sample((Arg((4, 3)),), {"axes": 0, "eps": 1e-5})]

    def expand(self, b, x, axes, keepdims, eps):
        return b.sqrt(b.add(b.var(x, axes=axes, keepdims=keepdims), eps))


@register
class SumTo(Op):
    """``sum_to(x, shape)``: sum ``x`` down to ``shape`` — the inverse of
    broadcasting (leading axes summed away, size-1 axes summed with keepdims)."""

    name, family = "sum_to", "reduction"
    attrs = {"shape": Attr("shape")}
    samples = [Sample((Arg((4, 2, 3)),), {"shape": (2, 1)}), Sample((Arg((2, 3)),), {"shape": ()}),
               Sample((Arg((2, 3)),), {"shape": (2, 3)})]

    @staticmethod
    def plan(src: tuple, dst: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(leading axes to drop, kept axes to sum with keepdims) taking ``src`` to ``dst``."""
        lead = len(src) - len(dst)
        if lead < 0:
            raise ShapeError(f"cannot sum {list(src)} down to the longer shape {list(dst)}")
        inner = []
        for i, (s, d) in enumerate(zip(src[lead:], dst)):
            if d == 1 and s != 1:
                inner.append(lead + i)
            elif s != d:
                raise ShapeError(f"cannot sum {list(src)} down to {list(dst)}")
        return tuple(range(lead)), tuple(inner)

    def shape(self, x, shape):
        if x.dtype == "bool":  # as for `sum`: NumPy would count the trues
            raise ShapeError(f"`sum_to` needs numbers, got {x}")
        self.plan(x.shape, tuple(shape))
        return x.with_shape(tuple(shape))

    def kernel(self, x, shape):
        lead, inner = self.plan(x.shape, tuple(shape))
        dtype = x.dtype  # (NumPy sums i32 as i64)
        if inner:
            x = np.sum(x, axis=inner, keepdims=True, dtype=dtype)
        return np.sum(x, axis=lead, dtype=dtype) if lead else x

    def grad(self, b, inputs, outputs, cts, shape):
        return [b.broadcast_to(cts[0], shape=b.type(inputs[0]).shape)]

    def onnx(self, e, ins, outs, shape):
        lead, inner = self.plan(e.in_types[0].shape, tuple(shape))
        src = ins[0]
        if inner:
            src = e.node("ReduceSum", [src, i64(e, inner)], outs if not lead else 1, keepdims=1)[0]
        if lead:
            e.node("ReduceSum", [src, i64(e, lead)], outs, keepdims=0)
        elif not inner:
            e.node("Identity", [src], outs)

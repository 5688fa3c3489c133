"""Indexing ops — slice (and its scatter-back gradient slice_grad), pad,
gather (and its scatter-add gradient gather_grad), embedding.

Registered by the import at the bottom of ``shape.py`` (same family).

Slicing follows Python: negative indices count from the end, ``None`` is an
open end, steps may be negative.  On a symbolic dim the rule assumes the dim
is large enough for the bounds (``x[1:]`` of ``T`` has ``T - 1`` rows, ``x[:3]``
has 3); a stepped slice of a symbolic extent has no polynomial length and is
refused.  The gradient of ``slice`` is the primitive ``slice_grad`` (zeros
with the cotangent written into the sliced positions) rather than ``pad``:
one node covers every step, and its ONNX form uses ``Pad`` for unit steps
and ``ScatterElements`` only for strided axes.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym, dim_str, shape_str
from ..types import INTS, ShapeError, TensorType, norm_axis, np_dtype as _np
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import INT64_MAX, INT64_MIN, check_shape, i64, is_dim


_BOUND = "int, dim or None per axis"


def _spec(op: str, rank: int, starts, stops, steps, axes) -> list[tuple]:
    """Validated ``(axis, start, stop, step)`` per sliced axis."""
    for key, val in (("starts", starts), ("stops", stops)):
        if not isinstance(val, (tuple, list)) or not all(v is None or is_dim(v) for v in val):
            raise ShapeError(f"`{op}` needs `{key}` as a list of ({_BOUND}), got {val!r}")
    n = len(starts)
    steps = (1,) * n if steps is None else steps
    axes = tuple(range(n)) if axes is None else axes
    if not isinstance(steps, (tuple, list)) or not all(isinstance(k, (int, np.integer)) and k for k in steps):
        raise ShapeError(f"`{op}` needs non-zero integer steps, got {steps!r}")
    if not isinstance(axes, (tuple, list)) or not all(is_dim(a) and not isinstance(a, Sym) for a in axes):
        raise ShapeError(f"`{op}` needs `axes` as a list of integers, got {axes!r}")
    if not (len(stops) == len(steps) == len(axes) == n):
        raise ShapeError(f"`{op}`: starts, stops, steps and axes must have one entry per sliced axis")
    norm = [norm_axis(int(a), rank) for a in axes]
    if len(set(norm)) != n:
        raise ShapeError(f"`{op}` slices an axis twice: {list(axes)}")
    return [(a, s, t, int(k)) for a, s, t, k in zip(norm, starts, stops, steps)]


def extent(d, start, stop, step: int) -> tuple:
    """``(first, n)``: the position of the first selected element and the count.

    Exact Python semantics when everything is an int; on symbolic values the
    dim is assumed large enough for the bounds."""
    if not any(isinstance(v, Sym) for v in (d, start, stop)):
        r = range(*slice(start, stop, step).indices(d))
        return r.start, len(r)

    def pos(v, open_value):
        if v is None:
            return open_value
        return d + v if isinstance(v, (int, np.integer)) and v < 0 else v

    if step > 0:
        first, end = pos(start, 0), pos(stop, d)
        span = end - first
    else:
        first, end = pos(start, d - 1), pos(stop, -1)
        span = first - end
    if isinstance(span, Sym):
        if abs(step) != 1:
            raise ShapeError(f"a slice with step {step} over the symbolic extent {dim_str(span)} has no "
                             "exact size; slice a fixed-size dim or use step 1")
        return first, span
    return first, max(0, -(-span // abs(step)))


@register
class Slice(Op):
    """``slice(x, starts, stops, steps=None, axes=None)``: Python-style strided slicing
    (``x[1:3]``, ``x[:, ::2]``, ``x[:, -1:]``); ``axes`` default to the leading ones."""

    name, family = "slice", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"starts": Attr("any", doc=_BOUND), "stops": Attr("any", doc=_BOUND),
             "steps": Attr("any", None, doc="non-zero ints; None: all 1"),
             "axes": Attr("any", None, doc="axes sliced; None: the leading ones")}
    samples = [Sample((Arg((5, 3)),), {"starts": (1,), "stops": (3,)}),
               Sample((Arg((4, 6)),), {"starts": (None,), "stops": (None,), "steps": (2,), "axes": (-1,)}),
               Sample((Arg((4, 3)),), {"starts": (-1,), "stops": (None,), "axes": (1,)}, note="x[:, -1:]"),
               Sample((Arg((5, 4)),), {"starts": (None, 3), "stops": (1, None), "steps": (-2, -1)}, note="reversed"),
               Sample((Arg((3, 2)),), {"starts": (2,), "stops": (1,)}, note="empty"),
               Sample((Arg((3, 2)),), {"starts": (-10,), "stops": (10,)}, note="clamped")]

    def shape(self, x, starts, stops, steps, axes):
        shape = list(x.shape)
        for a, s, t, k in _spec("slice", x.rank, starts, stops, steps, axes):
            shape[a] = extent(x.shape[a], s, t, k)[1]
        return x.with_shape(shape)

    def kernel(self, x, starts, stops, steps, axes):
        index = [slice(None)] * x.ndim
        for a, s, t, k in _spec("slice", x.ndim, starts, stops, steps, axes):
            index[a] = slice(s, t, k)
        return x[tuple(index)]

    def grad(self, b, inputs, outputs, cts, starts, stops, steps, axes):
        return [b.slice_grad(cts[0], shape=b.type(inputs[0]).shape, starts=starts, stops=stops,
                             steps=steps, axes=axes)]

    def onnx(self, e, ins, outs, starts, stops, steps, axes):
        spec = _spec("slice", e.in_types[0].rank, starts, stops, steps, axes)
        # open ends become the extreme int64 values, which ONNX clamps like Python does
        lo = [s if s is not None else (0 if k > 0 else INT64_MAX) for _, s, _, k in spec]
        hi = [t if t is not None else (INT64_MAX if k > 0 else INT64_MIN) for _, _, t, k in spec]
        e.node("Slice", [ins[0], i64(e, lo), i64(e, hi), i64(e, [a for a, *_ in spec]),
                         i64(e, [k for *_, k in spec])], outs)


@register
class SliceGrad(Op):
    """``slice_grad(dy, shape, starts, stops, steps, axes)``: zeros of ``shape`` with
    ``dy`` written where ``slice`` (same attrs) reads — the slice's VJP."""

    name, family = "slice_grad", "shape"
    inputs = ("dy",)
    attrs = {"shape": Attr("shape"), **Slice.attrs}
    samples = [Sample((Arg((2, 3)),), {"shape": (5, 3), "starts": (1,), "stops": (3,)}),
               Sample((Arg((4, 3)),), {"shape": (4, 6), "starts": (None,), "stops": (None,), "steps": (2,),
                                       "axes": (-1,)}),
               Sample((Arg((3, 2)),), {"shape": (5, 4), "starts": (None, 3), "stops": (None, 1),
                                       "steps": (-2, -1)}, note="reversed"),
               Sample((Arg((2, 2, 1)),), {"shape": (3, 2, 6), "starts": (1, -1), "stops": (None, -5),
                                          "steps": (1, -4), "axes": (0, 2)}, note="mixed")]

    def shape(self, dy, shape, starts, stops, steps, axes):
        shape = check_shape("slice_grad", shape)
        want = Slice().shape(TensorType(dy.dtype, shape), starts, stops, steps, axes)
        if want.shape != dy.shape:
            raise ShapeError(f"`slice_grad`: slicing {shape_str(shape)} gives {shape_str(want.shape)}, "
                             f"the cotangent is {shape_str(dy.shape)}")
        return dy.with_shape(shape)

    def kernel(self, dy, shape, starts, stops, steps, axes):
        out = np.zeros(shape, dy.dtype)
        index = [slice(None)] * len(shape)
        for a, s, t, k in _spec("slice_grad", len(shape), starts, stops, steps, axes):
            index[a] = slice(s, t, k)
        out[tuple(index)] = dy
        return out

    def grad(self, b, inputs, outputs, cts, shape, starts, stops, steps, axes):
        return [b.slice(cts[0], starts=starts, stops=stops, steps=steps, axes=axes)]

    def onnx(self, e, ins, outs, shape, starts, stops, steps, axes):
        rank = len(shape)
        cur, cur_shape = ins[0], list(e.in_types[0].shape)
        before, after = [0] * rank, [0] * rank
        for a, s, t, k in _spec("slice_grad", rank, starts, stops, steps, axes):
            d = shape[a]
            first, n = extent(d, s, t, k)
            if n == 0:
                before[a] = d  # nothing was read: the whole axis is zeros
                continue
            if k < 0:  # reverse the cotangent so its positions ascend
                cur = e.node("Slice", [cur, i64(e, [-1]), i64(e, [INT64_MIN]), i64(e, [a]), i64(e, [-1])], 1)[0]
                first, k = first + (n - 1) * k, -k
            if k == 1:
                before[a], after[a] = first, d - first - n
                continue
            # strided axis: n is an int here; positions of a symbolic dim are counted from its end
            positions = [_index(first + i * k, d) for i in range(n)]
            idx = e.const(np.asarray(positions, np.int64).reshape([1] * a + [n] + [1] * (rank - a - 1)))
            (shp,) = e.node("Shape", [cur], 1)
            (idx,) = e.node("Expand", [idx, shp], 1)
            cur_shape[a] = d
            (zeros,) = e.node("ConstantOfShape", [i64(e, cur_shape)], 1,
                              value=np.zeros(1, _np(e.in_types[0].dtype)))
            (cur,) = e.node("ScatterElements", [zeros, idx, cur], 1, axis=a)
        if any(p != 0 for p in before + after):
            zero = e.const(np.zeros((), _np(e.in_types[0].dtype)))
            e.node("Pad", [cur, i64(e, before + after), zero], outs, mode="constant")
        else:
            e.node("Identity", [cur], outs)


def _index(p, d) -> int:
    """Position ``p`` of a dim ``d`` as an int index (negative: from the end)."""
    if not isinstance(p, Sym):
        return int(p)
    back = p - d
    if isinstance(back, Sym):
        raise ShapeError(f"position {p} of dim {dim_str(d)} cannot be exported; use a fixed-size dim")
    return back


def _pairs(pads, rank: int) -> tuple[tuple, ...]:
    """``((before, after), ...)`` from nested pairs or a flat list ``[b0, a0, b1, a1, ...]``."""
    if not isinstance(pads, (tuple, list)):
        raise ShapeError(f"`pad` needs pads as ((before, after), ...) per axis, got {pads!r}")
    if all(isinstance(p, (tuple, list)) for p in pads):
        pairs = [tuple(p) for p in pads]
    elif len(pads) % 2 == 0:
        pairs = [tuple(pads[i:i + 2]) for i in range(0, len(pads), 2)]
    else:
        pairs = [()]
    if len(pairs) != rank or any(len(p) != 2 for p in pairs):
        raise ShapeError(f"`pad` needs one (before, after) pair per axis ({rank}), got {list(pads)}")
    return tuple(check_shape("pad", p) for p in pairs)


@register
class Pad(Op):
    """``pad(x, pads, value=0.0)``: constant padding; ``pads`` holds one (before, after)
    pair per axis, nested or flat (``[b0, a0, b1, a1, ...]``)."""

    name, family = "pad", "shape"
    free = True  # dlc summary: 0 FLOPs
    attrs = {"pads": Attr("any", doc="((before, after), ...) per axis, or the same flattened"),
             "value": Attr("float", 0.0)}
    samples = [Sample((Arg((2, 3)),), {"pads": ((1, 0), (2, 1))}),
               Sample((Arg((2, 3)),), {"pads": (0, 0, 1, 1), "value": -1.5}, note="flat pairs"),
               Sample((Arg((3,)),), {"pads": ((0, 0),)}, note="no-op"),
               Sample((Arg((2, 1, 2)),), {"pads": ((0, 0), (2, 3), (0, 1))})]

    def shape(self, x, pads, value):
        pairs = _pairs(pads, x.rank)
        return x.with_shape(tuple(lo + d + hi for d, (lo, hi) in zip(x.shape, pairs)))

    def kernel(self, x, pads, value):
        return np.pad(x, _pairs(pads, x.ndim), constant_values=np.asarray(value, x.dtype))

    def grad(self, b, inputs, outputs, cts, pads, value):
        shape = b.type(inputs[0]).shape
        pairs = _pairs(pads, len(shape))
        return [b.slice(cts[0], starts=tuple(lo for lo, _ in pairs),
                        stops=tuple(lo + d for d, (lo, _) in zip(shape, pairs)))]

    def onnx(self, e, ins, outs, pads, value):
        pairs = _pairs(pads, e.in_types[0].rank)
        flat = [lo for lo, _ in pairs] + [hi for _, hi in pairs]
        e.node("Pad", [ins[0], i64(e, flat), e.const(np.asarray(value, _np(e.in_types[0].dtype)))], outs,
               mode="constant")


def _gather_type(x: TensorType, idx: TensorType, axis: int, op: str = "gather") -> TensorType:
    if idx.dtype not in INTS:
        raise ShapeError(f"`{op}` needs integer indices, got {idx}")
    if x.rank == 0:
        raise ShapeError(f"`{op}` cannot index a scalar")
    a = norm_axis(axis, x.rank)
    return x.with_shape(x.shape[:a] + idx.shape + x.shape[a + 1:])


@register
class Gather(Op):
    """``gather(x, indices, axis=0)``: ``np.take``; negative indices count from the end."""

    name, family = "gather", "shape"
    inputs = ("x", "indices")
    attrs = {"axis": Attr("int", 0)}
    free = True  # dlc summary: 0 FLOPs

    def index_bound(self, in_types, slot, axis):
        return in_types[0].shape[axis % in_types[0].rank] if slot == 1 else None
    samples = [Sample((Arg((5, 3)), Arg((4,), "int", 0, 5))),
               Sample((Arg((2, 4)), Arg((2, 3), "int", -4, 4)), {"axis": -1}, note="negative indices"),
               Sample((Arg((3, 2, 2)), Arg((), "int", 0, 2)), {"axis": 1}, note="scalar index"),
               Sample((Arg((3,)), Arg((6,), "int", 0, 2)), note="repeated indices")]

    def shape(self, x, indices, axis):
        return _gather_type(x, indices, axis)

    def kernel(self, x, indices, axis):
        return np.take(x, indices, axis=axis)

    def grad(self, b, inputs, outputs, cts, axis):
        x, idx = inputs
        return [b.gather_grad(cts[0], idx, shape=b.type(x).shape, axis=axis), None]

    def onnx(self, e, ins, outs, axis):
        e.node("Gather", ins, outs, axis=norm_axis(axis, e.in_types[0].rank))


@register
class GatherGrad(Op):
    """``gather_grad(dy, indices, shape, axis=0)``: zeros of ``shape`` with ``dy``
    scatter-added where ``gather`` read (repeated indices accumulate)."""

    name, family = "gather_grad", "shape"
    inputs = ("dy", "indices")
    attrs = {"shape": Attr("shape"), "axis": Attr("int", 0)}
    samples = [Sample((Arg((4, 3)), Arg((4,), "int", 0, 5)), {"shape": (5, 3)}),
               Sample((Arg((2, 2, 3)), Arg((2, 3), "int", -4, 4)), {"shape": (2, 4), "axis": -1}),
               Sample((Arg((3, 2)), Arg((), "int", 0, 2)), {"shape": (3, 2, 2), "axis": 1})]

    def shape(self, dy, indices, shape, axis):
        shape = check_shape("gather_grad", shape)
        want = _gather_type(TensorType(dy.dtype, shape), indices, axis, "gather_grad")
        if want.shape != dy.shape:
            raise ShapeError(f"`gather_grad`: gathering from {shape_str(shape)} gives {shape_str(want.shape)}, "
                             f"the cotangent is {shape_str(dy.shape)}")
        return dy.with_shape(shape)

    def kernel(self, dy, indices, shape, axis):
        out = np.zeros(shape, dy.dtype)
        a = norm_axis(axis, len(shape))
        np.add.at(out, (slice(None),) * a + (indices,), dy)
        return out

    def grad(self, b, inputs, outputs, cts, shape, axis):
        return [b.gather(cts[0], inputs[1], axis=axis), None]

    def onnx(self, e, ins, outs, shape, axis):
        # ScatterElements wants indices shaped like the updates: flatten the
        # index dims of dy into one axis and broadcast the indices along it
        rank = len(shape)
        a = norm_axis(axis, rank)
        dy, idx = ins
        (dy,) = e.node("Reshape", [dy, i64(e, (0,) * a + (-1,) + tuple(shape[a + 1:]))], 1)
        (idx,) = e.node("Reshape", [idx, i64(e, (1,) * a + (-1,) + (1,) * (rank - a - 1))], 1)
        (shp,) = e.node("Shape", [dy], 1)
        (idx,) = e.node("Expand", [idx, shp], 1)
        (zeros,) = e.node("ConstantOfShape", [i64(e, shape)], 1, value=np.zeros(1, _np(e.in_types[0].dtype)))
        scatter_add(e, zeros, idx, dy, outs, axis=a, dtype=e.in_types[0].dtype)


def scatter_add(e, data: str, indices: str, updates: str, outs, *, axis: int, dtype: str) -> list[str]:
    """``ScatterElements(data, indices, updates, reduction="add")`` of ``dtype`` values into ``outs``.
    onnxruntime's CPU kernel has no f16 add reduction (a run-time error): f16 sums in f32, rounded once."""
    if dtype != "f16":
        return e.node("ScatterElements", [data, indices, updates], outs, axis=axis, reduction="add")
    data, updates = (e.node("Cast", [v], 1, to=e.onnx_dtype("f32"))[0] for v in (data, updates))
    (total,) = e.node("ScatterElements", [data, indices, updates], 1, axis=axis, reduction="add")
    return e.node("Cast", [total], outs, to=e.onnx_dtype("f16"))


@register
class Embedding(Composite):
    """``embedding(ids, table)``: rows of ``table`` picked by ``ids`` (``gather`` on axis 0)."""

    name, family = "embedding", "shape"
    inputs = ("ids", "table")
    samples = [Sample((Arg((2, 3), "int", 0, 5), Arg((5, 4)))), Sample((Arg((3,), "int", 0, 2), Arg((2, 1))))]

    def expand(self, b, ids, table):
        return b.gather(table, ids, axis=0)

"""Ops that add, drop or stretch axes: squeeze, unsqueeze, broadcast_to
(family ``shape``; registered by the import at the bottom of ``shape.py``).
Their kernels return views of the input."""
from __future__ import annotations

import numpy as np

from ..dims import dim_str, shape_str
from ..types import ShapeError, broadcast_shapes
from .registry import Arg, Attr, Op, Sample, register
from .shape import check_shape, i64, norm_axes


@register
class Squeeze(Op):
    """``squeeze(x, axes=None)``: drop size-1 axes (None: every axis of static size 1)."""

    name, family = "squeeze", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"axes": Attr("any", None, doc="int, list of ints, or None for all size-1 axes")}
    samples = [Sample((Arg((2, 1, 3)),), {"axes": 1}), Sample((Arg((1, 2, 1)),)),
               Sample((Arg((2, 1, 1)),), {"axes": (-1, -2)}), Sample((Arg((1,)),), {"axes": 0}, note="to scalar")]

    @staticmethod
    def _axes(shape, axes) -> tuple[int, ...]:
        if axes is None:
            return tuple(i for i, d in enumerate(shape) if d == 1)
        axes = norm_axes("squeeze", axes, len(shape))
        for a in axes:
            if shape[a] != 1:
                raise ShapeError(f"`squeeze` axis {a} has dim {dim_str(shape[a])}, not 1")
        return axes

    def resolve_attrs(self, types, attrs):
        # None means the axes of *static* size 1: fixed here, a symbolic dim bound to 1 at run time stays
        return {**attrs, "axes": self._axes(types[0].shape, attrs["axes"])} if attrs["axes"] is None else attrs

    def shape(self, x, axes):
        drop = self._axes(x.shape, axes)
        return x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in drop))

    def kernel(self, x, axes):
        return np.squeeze(x, axis=self._axes(x.shape, axes))

    def grad(self, b, inputs, outputs, cts, axes):
        return [b.unsqueeze(cts[0], axes=self._axes(b.type(inputs[0]).shape, axes))]

    def onnx(self, e, ins, outs, axes):
        drop = self._axes(e.in_types[0].shape, axes)
        if drop:
            e.node("Squeeze", [ins[0], i64(e, drop)], outs)
        else:
            e.node("Identity", ins, outs)


@register
class Unsqueeze(Op):
    """``unsqueeze(x, axes)``: insert size-1 axes; ``axes`` index the output."""

    name, family = "unsqueeze", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"axes": Attr("any", doc="int or list of ints, positions in the output")}
    samples = [Sample((Arg((2, 3)),), {"axes": 0}), Sample((Arg((2, 3)),), {"axes": (-1, 1)}),
               Sample((Arg(()),), {"axes": (0, 1)}, note="from scalar")]

    def shape(self, x, axes):
        if not isinstance(axes, (int, np.integer, tuple, list)):
            raise ShapeError(f"`unsqueeze` needs axes as an integer or a list of integers, got {axes}")
        rank = x.rank + (1 if isinstance(axes, (int, np.integer)) else len(axes))
        new = norm_axes("unsqueeze", axes, rank)
        rest = iter(x.shape)
        return x.with_shape(tuple(1 if i in new else next(rest) for i in range(rank)))

    def kernel(self, x, axes):
        return np.expand_dims(x, axes if isinstance(axes, (int, np.integer)) else tuple(axes))

    def grad(self, b, inputs, outputs, cts, axes):
        return [b.reshape(cts[0], shape=b.type(inputs[0]).shape)]

    def onnx(self, e, ins, outs, axes):
        e.node("Unsqueeze", [ins[0], i64(e, norm_axes("unsqueeze", axes, e.out_types[0].rank))], outs)


@register
class BroadcastTo(Op):
    """``broadcast_to(x, shape)``: NumPy broadcasting of ``x`` to ``shape``."""

    name, family = "broadcast_to", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"shape": Attr("shape")}
    samples = [Sample((Arg((3,)),), {"shape": (2, 3)}), Sample((Arg((2, 1)),), {"shape": (4, 2, 3)}),
               Sample((Arg(()),), {"shape": (2, 2)}), Sample((Arg((2, 3)),), {"shape": (2, 3)}, note="no-op")]

    def shape(self, x, shape):
        shape = check_shape("broadcast_to", shape)
        try:
            ok = len(shape) >= x.rank and broadcast_shapes(x.shape, shape) == shape
        except ShapeError:
            ok = False
        if not ok:
            raise ShapeError(f"cannot broadcast {shape_str(x.shape)} to {shape_str(shape)}")
        return x.with_shape(shape)

    def kernel(self, x, shape):
        return np.broadcast_to(x, shape)

    def grad(self, b, inputs, outputs, cts, shape):
        return [b.sum_to(cts[0], shape=b.type(inputs[0]).shape)]

    def onnx(self, e, ins, outs, shape):
        e.node("Expand", [ins[0], i64(e, shape)], outs)

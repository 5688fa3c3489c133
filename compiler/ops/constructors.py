"""Constant makers: one_hot, fill, zeros, ones, zeros_like (family ``shape``).

Registered by the import at the bottom of ``shape.py``.  ``fill`` takes a shape
that may hold symbolic dims; ``zeros_like`` reads its shape from a tensor at
run time, so neither needs the dims' values when the graph is built.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym, shape_str
from ..types import DTYPES, INTS, ShapeError, TensorType, np_dtype as _np
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import check_shape, i64, prod_dims

MAX_ELEMENTS = 2**31  # per tensor, as the interpreter's limit on feeds


@register
class OneHot(Op):
    """``one_hot(ids, depth, dtype=f32)``: a trailing axis of size ``depth`` with 1 at
    each id; ids outside [0, depth) give an all-zero row."""

    name, family = "one_hot", "shape"
    inputs = ("ids",)
    free = True  # dlc summary: 0 FLOPs

    def index_bound(self, in_types, slot, depth, dtype):
        return depth
    attrs = {"depth": Attr("int"), "dtype": Attr("dtype", "f32", ("f16", "f32", "f64", "i32", "i64", "bool"))}
    differentiable = False
    samples = [Sample((Arg((4,), "int", 0, 3),), {"depth": 3}),
               Sample((Arg((2, 3), "int", -1, 5),), {"depth": 4, "dtype": "i64"}, note="out-of-range ids"),
               Sample((Arg((), "int", 0, 2),), {"depth": 2, "dtype": "bool"})]

    def shape(self, ids, depth, dtype):
        if ids.dtype not in INTS:
            raise ShapeError(f"`one_hot` needs integer ids, got {ids}")
        if depth < 1:
            raise ShapeError(f"`one_hot` needs depth >= 1, got {depth}")
        return TensorType(dtype, ids.shape + (depth,))

    def kernel(self, ids, depth, dtype):
        return (ids[..., None] == np.arange(depth, dtype=ids.dtype)).astype(_np(dtype))

    def onnx(self, e, ins, outs, depth, dtype):
        # Equal against a range, not OneHot: OneHot wraps negative ids, the kernel does not
        (col,) = e.node("Unsqueeze", [ins[0], i64(e, [-1])], 1)
        (hit,) = e.node("Equal", [col, e.const(np.arange(depth, dtype=_np(e.in_types[0].dtype)))], 1)
        e.node("Cast", [hit], outs, to=e.onnx_dtype(dtype))


def _fill_value(value: float, dtype: str):
    """``value`` as a scalar of ``dtype``, refusing silent truncation."""
    if dtype in ("i32", "i64") and float(value) != int(value):
        raise ShapeError(f"cannot fill a {dtype} tensor with {value}")
    if dtype == "bool" and value not in (0.0, 1.0):
        raise ShapeError(f"cannot fill a bool tensor with {value}; use 0 or 1")
    return np.asarray(value).astype(DTYPES[dtype])


@register
class Fill(Op):
    """``fill(shape, value=0.0, dtype=f32)``: a tensor of one value (shape may hold Syms)."""

    name, family = "fill", "shape"
    free = True  # dlc summary: 0 FLOPs
    inputs = ()
    attrs = {"shape": Attr("shape"), "value": Attr("float", 0.0), "dtype": Attr("dtype", "f32", tuple(DTYPES))}
    differentiable = False  # no tensor inputs
    samples = [Sample((), {"shape": (2, 3), "value": 1.5}), Sample((), {"shape": (), "value": -2.0}),
               Sample((), {"shape": (3, 0), "dtype": "i64", "value": 7.0}),
               Sample((), {"shape": (2,), "dtype": "bool", "value": 1.0})]

    def shape(self, shape, value, dtype):
        _fill_value(value, dtype)
        shape = check_shape("fill", shape)
        fixed = prod_dims(d for d in shape if not isinstance(d, Sym))
        if fixed > MAX_ELEMENTS:  # refuse before anything is allocated
            raise ShapeError(f"`fill` of {shape_str(shape)} would hold {fixed} elements (limit {MAX_ELEMENTS})")
        return TensorType(dtype, shape)

    def kernel(self, shape, value, dtype):
        return np.full(shape, _fill_value(value, dtype))

    def onnx(self, e, ins, outs, shape, value, dtype):
        e.node("ConstantOfShape", [i64(e, shape)], outs, value=_fill_value(value, dtype).reshape(1))


@register
class Zeros(Composite):
    """``zeros(shape, dtype=f32)``."""

    name, family = "zeros", "shape"
    inputs = ()
    attrs = {"shape": Attr("shape"), "dtype": Attr("dtype", "f32", tuple(DTYPES))}
    samples = [Sample((), {"shape": (2, 3)}), Sample((), {"shape": (4,), "dtype": "i32"})]

    def expand(self, b, shape, dtype):
        return b.fill(shape=shape, value=0.0, dtype=dtype)


@register
class Ones(Composite):
    """``ones(shape, dtype=f32)``."""

    name, family = "ones", "shape"
    inputs = ()
    attrs = {"shape": Attr("shape"), "dtype": Attr("dtype", "f32", tuple(DTYPES))}
    samples = [Sample((), {"shape": (2, 3)}), Sample((), {"shape": (), "dtype": "f64"})]

    def expand(self, b, shape, dtype):
        return b.fill(shape=shape, value=1.0, dtype=dtype)


@register
class ZerosLike(Op):
    """``zeros_like(x)``: zeros of x's type; x's values (even inf/NaN) do not matter.

    A primitive rather than ``fill`` so the ONNX form reads the shape from
    ``x`` at run time (``ConstantOfShape(Shape(x))``), with no symbolic dims to
    compute.  Its gradient is zero."""

    name, family = "zeros_like", "shape"
    samples = [Sample((Arg((2, 3)),)), Sample((Arg(()),)), Sample((Arg((3,), "int", 0, 5),))]

    def shape(self, x):
        return x

    def kernel(self, x):
        return np.zeros_like(x)

    def grad(self, b, inputs, outputs, cts):
        return [None]

    def onnx(self, e, ins, outs):
        (shp,) = e.node("Shape", ins, 1)
        e.node("ConstantOfShape", [shp], outs, value=np.zeros(1, DTYPES[e.in_types[0].dtype]))

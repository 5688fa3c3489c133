"""The gradient primitives of pooling (registered by ``nn.py``'s import):
``max_pool{k}d_grad`` (``dy`` scattered onto each window's argmax),
``max_pool{k}d_pick`` (a tensor read at the argmax) and ``avg_pool{k}d_grad``
(the cotangent spread evenly over each window), one class each registered for
every k in ``nn.RANKS``.  The windows and the forward ops are in ``pool.py``.
"""
from __future__ import annotations

import numpy as np

from ..types import ShapeError, np_dtype, same_dtype
from .nn import check_image, onnx_error, per_rank, transpose_to_size
from .pool import (AVG_ATTRS, AVG_CASES, MAX_ATTRS, MAX_CASES, TIE_ROWS, Window, _given, _pooled, _tiles, _without,
                   first_max_masks, flat_argmax, pool_shape, select_bits)
from .indexing import scatter_add
from .registry import Arg, Attr, Op, Sample
from .shape import i64
from .windows import fold

def max_grad_np(x: np.ndarray, dy: np.ndarray, win: Window) -> np.ndarray:
    """``dy`` scattered onto each window's argmax: written slice by slice when the
    windows tile ``x`` (every element is in one window), else one ``bincount``."""
    if x.size == 0:  # an empty batch (or channel axis): nothing to scatter
        return np.zeros_like(x)
    if win.tiles():
        out = np.empty_like(x)
        view, slices = _tiles(out, win)
        # a select, not masks * dy, so a position that is not its window's maximum gets +0
        # whatever dy holds (inf, NaN, a negative value) — as the general path's scatter and
        # onnxruntime's ScatterElements; written straight into each offset's strided slice
        for mask, idx in zip(first_max_masks(x, win), slices):
            select_bits(mask, dy, out=view[idx])
        return out
    flat = np.bincount(flat_argmax(x, win).ravel(), weights=dy.ravel(), minlength=x.size)
    return flat.reshape(x.shape).astype(x.dtype, copy=False)


def max_pick_np(x: np.ndarray, t: np.ndarray, win: Window) -> np.ndarray:
    """``t`` read at each window's first maximum of ``x``: shaped like the pooled output."""
    if x.size == 0:
        return np.empty((*x.shape[:2], *win.out), t.dtype)
    if win.tiles():
        view, slices = _tiles(t, win)
        bits = None  # exactly one offset is selected per window: OR-ing the selections is exact
        for mask, idx in zip(first_max_masks(x, win), slices):
            picked = select_bits(mask, view[idx]).view(np.dtype(f"u{t.dtype.itemsize}"))
            bits = picked if bits is None else np.bitwise_or(bits, picked, out=bits)
        return bits.view(t.dtype)
    return t.reshape(-1)[flat_argmax(x, win)]


def _indices(e, op: str, k: int, x: str, window: dict) -> str:
    win = Window(op, k, e.in_types[0].shape[2:], **window)
    return e.node("MaxPool", [x], 2, dilations=list(win.dilation), **win.onnx_attrs(op))[1]


class MaxPoolGrad(Op):
    """``max_pool{k}d_grad(x, dy, kernel, stride, padding, dilation, ceil_mode)``: ``dy``
    (shaped like the pooled output) added onto the first maximum of each window of ``x``."""

    family = "nn"
    rank = 2
    inputs = ("x", "dy")
    attrs = MAX_ATTRS

    def shape(self, x, dy, **window):
        out = pool_shape(self.name, self.rank, x, **window)
        same_dtype(self.name, x, dy)
        if dy.shape != out.shape:
            raise ShapeError(f"`{self.name}`: dy must be shaped like the pooled output {out}, got {dy}")
        return x

    def kernel(self, x, dy, **window):
        return max_grad_np(x, dy, Window(self.name, self.rank, x.shape[2:], **window))

    def grad(self, b, inputs, outputs, cts, **window):
        # linear in dy (its adjoint reads the cotangent at the argmax); piecewise constant in x
        return [None, b.apply(f"max_pool{self.rank}d_pick", inputs[0], cts[0], **_given(window))]

    def onnx(self, e, ins, outs, **window):
        x, dy = ins
        ind = _indices(e, self.name, self.rank, x, window)
        flat = i64(e, (-1,))
        shape = e.node("Shape", [x], 1)[0]
        zeros = e.node("ConstantOfShape", [shape], 1, value=np.zeros(1, np_dtype(e.in_types[0].dtype)))[0]
        (dx,) = scatter_add(e, e.node("Reshape", [zeros, flat], 1)[0], e.node("Reshape", [ind, flat], 1)[0],
                            e.node("Reshape", [dy, flat], 1)[0], 1, axis=0, dtype=e.in_types[0].dtype)
        e.node("Reshape", [dx, shape], outs)


class MaxPoolPick(Op):
    """``max_pool{k}d_pick(x, t, kernel, stride, padding, dilation, ceil_mode)``: ``t``
    (shaped like ``x``) read at the first maximum of each window of ``x``;
    ``max_pool{k}d(x) = pick(x, x)``."""

    family = "nn"
    rank = 2
    inputs = ("x", "t")
    attrs = MAX_ATTRS

    def shape(self, x, t, **window):
        same_dtype(self.name, x, t)
        if t.shape != x.shape:
            raise ShapeError(f"`{self.name}`: t must be shaped like x {x}, got {t}")
        return pool_shape(self.name, self.rank, x, **window)

    def kernel(self, x, t, **window):
        return max_pick_np(x, t, Window(self.name, self.rank, x.shape[2:], **window))

    def grad(self, b, inputs, outputs, cts, **window):
        return [None, b.apply(f"max_pool{self.rank}d_grad", inputs[0], cts[0], **_given(window))]

    def onnx(self, e, ins, outs, **window):
        x, t = ins
        ind = _indices(e, self.name, self.rank, x, window)
        e.node("Gather", [e.node("Reshape", [t, i64(e, (-1,))], 1)[0], ind], outs, axis=0)


per_rank(MaxPoolGrad, "max_pool{k}d_grad", MAX_CASES + TIE_ROWS,
         lambda xs, a, *tie: Sample((Arg(xs), Arg(_pooled(xs, a))), a) if not tie else
         Sample((xs, Arg(a)), tie[0], grad=False, note="ties: the first maximum wins"))
per_rank(MaxPoolPick, "max_pool{k}d_pick", MAX_CASES + TIE_ROWS,
         lambda xs, a, *tie: Sample((Arg(xs), Arg(xs)), a) if not tie else
         Sample((xs, Arg(xs.shape)), tie[0], grad=False, note="ties: the first maximum wins"))


# -- average pooling ---------------------------------------------------------------------
class AvgPoolGrad(Op):
    """``avg_pool{k}d_grad(dy, size, kernel, stride, padding, ceil_mode, count_include_pad)``:
    the gradient of ``avg_pool{k}d`` over an image of spatial ``size`` — each window's
    cotangent, divided as the forward divided, spread evenly over the window."""

    family = "nn"
    rank = 2
    inputs = ("dy",)
    attrs = {"size": Attr("shape", doc="the spatial size of the pooled image"), **AVG_ATTRS}

    def shape(self, dy, size, count_include_pad, **window):
        check_image(self.name, "dy", dy, self.rank)
        if len(size) != self.rank:
            raise ShapeError(f"`{self.name}` needs a size of {self.rank} dims, got {list(size)}")
        x = dy.with_shape((*dy.shape[:2], *size))
        out = pool_shape(self.name, self.rank, x, **window)
        if out.shape != dy.shape:
            raise ShapeError(f"`{self.name}`: pooling an image of size {list(size)} gives {out}, but dy is {dy}")
        return x

    def kernel(self, dy, size, count_include_pad, **window):
        win = Window(self.name, self.rank, tuple(size), **window)
        g = dy / win.divisor(count_include_pad, dy.dtype)
        if win.tiles():
            spread = g.reshape(*g.shape[:2], *(v for o in win.out for v in (o, 1)))
            tiled = (*g.shape[:2], *(v for o, kk in zip(win.out, win.kernel) for v in (o, kk)))
            return np.broadcast_to(spread, tiled).reshape(*dy.shape[:2], *size)
        return fold(g, tuple(size), win.kernel, win.stride, win.eff, win.dilation, dy.dtype)

    def grad(self, b, inputs, outputs, cts, size, count_include_pad, **window):
        return [b.apply(f"avg_pool{self.rank}d", cts[0], count_include_pad=count_include_pad, **_given(window))]

    def onnx(self, e, ins, outs, size, count_include_pad, **window):
        t = e.in_types[0]
        win = Window(self.name, self.rank, tuple(size), **window)
        dtype = np_dtype(t.dtype)
        c = t.shape[1]
        if not isinstance(c, int):
            raise onnx_error(self.name, f"the channel dim {c} must be fixed (it is the ConvTranspose group)")
        try:
            g = e.node("Div", [ins[0], e.const(win.divisor(count_include_pad, dtype))], 1)[0]
        except ShapeError as exc:
            raise onnx_error(self.name, exc) from None
        if win.ceil and not win.static:
            raise onnx_error(self.name, "ceil_mode over a symbolic size needs a fixed size for the gradient")
        transpose_to_size(e, [g, e.const(np.ones((c, 1, *win.kernel), dtype))], outs, win.kernel, win.stride,
                          win.eff, win.dilation, c, size, t.shape[2:])


per_rank(AvgPoolGrad, "avg_pool{k}d_grad", AVG_CASES,
         lambda xs, a: Sample((Arg(_pooled(xs, _without(a, "count_include_pad"))),), {"size": xs[2:], **a}))


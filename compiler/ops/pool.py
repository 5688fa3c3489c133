"""Pooling of every spatial rank (registered by ``nn.py``'s import):
``max_pool{k}d``, ``avg_pool{k}d``, ``global_avg_pool``, ``global_max_pool``;
the gradient primitives ``max_pool{k}d_grad``, ``max_pool{k}d_pick``,
``avg_pool{k}d_grad`` are in ``pool_grad.py`` (upsampling: ``upsample.py``),
one class each registered for every k in ``nn.RANKS``.

Windows: ``kernel``, ``stride`` (default: the kernel, non-overlapping) and
``dilation`` (max pooling) are an int or one per axis; ``padding`` takes
every form the convs take (``"same"``, ``"valid"``, int, per axis, pairs) and
is at most half the (dilated) kernel on each side (PyTorch's rule: every
window keeps a real element).  The output size is ⌊(S + before + after −
d(k − 1) − 1) / s⌋ + 1, or with ``ceil_mode = true`` the ceiling, where a
last window that would start in the after-padding is dropped (PyTorch's
rule); ceil mode is padding added after the axis (``windows.ceil_extra``),
which never wins a maximum and never counts in an average.

Max pooling routes the gradient to the first maximum of each window in
row-major order, the element ONNX ``MaxPool``'s ``Indices`` output names.
The gradient is a scatter of ``dy`` onto each window's argmax, found once.
When the windows tile the image (stride = kernel, no padding: LeNet's 2x2
pools) the image is viewed as ``[N, C, o0, k0, o1, k1, ...]`` without a
copy, each kernel offset's slice of it copied to a contiguous plane, the
first maximum found one window axis at a time (``_winners``) and turned into
a mask per kernel offset (``first_max_masks``); the gradient is
``dy`` selected by each mask (``select_bits``), written into that offset's
slice of the output, with no scatter.  Otherwise the argmax is one ``np.argmax`` over the window axis
of the im2col view and the scatter a ``bincount``.  Two primitives carry it,
each the other's gradient with respect to its second input (both are
piecewise constant in ``x``):

- ``max_pool{k}d_grad(x, dy)``: scatter-add ``dy`` onto the argmax positions
  (ONNX: ``MaxPool`` indices + ``ScatterElements`` with ``reduction="add"``);
- ``max_pool{k}d_pick(x, t)``: ``t`` read at ``x``'s argmax positions
  (ONNX: ``MaxPool`` indices + ``Gather``).

Average pooling is linear: ``avg_pool{k}d_grad`` (ONNX: a depthwise
``ConvTranspose`` with a constant kernel of ones) and ``avg_pool{k}d`` are
each other's gradients.  ``count_include_pad = false`` divides by the number
of real elements in each window instead of the kernel size.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..types import ShapeError, TensorType, np_dtype
from .nn import check_image, onnx_error, onnx_pads, per_rank, rank_of
from .windows import conv_out
from .registry import Arg, Attr, Composite, Op, Sample, register
from .windows import axis_names, ceil_extra, ntuple, offset_slices, pad_image, resolve_pads, window_counts, windows

WINDOW_ATTRS = {"kernel": Attr("ints", doc="int or one per spatial axis"),
                "stride": Attr("ints", None, doc="int or one per axis; default: the kernel"),
                "padding": Attr("pads", 0, doc='"same", "valid", int, one per axis, or [[before, after], ...]')}
MAX_ATTRS = {**WINDOW_ATTRS, "dilation": Attr("ints", (1,), doc="int or one per axis"),
             "ceil_mode": Attr("bool", False, doc="round the window count up")}
AVG_ATTRS = {**WINDOW_ATTRS, "ceil_mode": MAX_ATTRS["ceil_mode"],
             "count_include_pad": Attr("bool", True, doc="divide by the kernel size (true) "
                                                         "or by the real elements (false)")}


class Window:
    """A pooling op's resolved geometry over an image of spatial ``size``:
    ``kernel``, ``stride``, ``pads``, ``dilation`` (k-tuples / pairs), ``out``
    (the window count per axis) and, for int sizes, ``eff`` (the pads with
    what ``ceil_mode`` adds after each axis)."""

    def __init__(self, op: str, k: int, size, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
        self.kernel = ntuple(op, "kernel", kernel, k, 1)
        self.stride = self.kernel if stride is None else ntuple(op, "stride", stride, k, 1)
        self.dilation = ntuple(op, "dilation", dilation, k, 1)
        self.pads = resolve_pads(op, padding, k, self.kernel, self.dilation, self.stride)
        for axis, kk, d, (a, b) in zip(axis_names(k), self.kernel, self.dilation, self.pads):
            if max(a, b) > (d * (kk - 1) + 1) // 2:
                raise ShapeError(f"`{op}`: padding {[a, b]} on {axis} is more than half the kernel {kk}")
        self.size = tuple(size)
        self.ceil = ceil_mode
        self.out = conv_out(op, self.size, self.kernel, self.stride, self.pads, self.dilation, ceil_mode)
        self.static = all(isinstance(n, int) for n in (*self.size, *self.out))
        self.eff = tuple((a, b + ceil_extra(n, kk, s, (a, b), d, o)) if self.static else (a, b)
                         for n, kk, s, (a, b), d, o in zip(self.size, self.kernel, self.stride, self.pads,
                                                           self.dilation, self.out))

    def tiles(self) -> bool:
        """Do the windows tile the image exactly (no overlap, gap or padding)?"""
        return (self.stride == self.kernel and set(self.dilation) == {1} and not any(map(any, self.eff))
                and all(o * kk == n for o, kk, n in zip(self.out, self.kernel, self.size)))

    def onnx_attrs(self, op: str) -> dict:
        """kernel_shape, strides, pads (and ceil_mode for a symbolic size) of MaxPool/AveragePool."""
        attrs = {"kernel_shape": list(self.kernel), "strides": list(self.stride)}
        if self.static or not self.ceil:
            return {**attrs, "pads": onnx_pads(self.eff)}
        return {**attrs, "pads": onnx_pads(self.pads), "ceil_mode": 1}  # symbolic: no last-window correction

    def divisor(self, count_include_pad: bool, dtype):
        """What each window's sum is divided by: a scalar, or per-window counts ``[*out]``
        (of the taps inside the padded image, or inside the image)."""
        lo = [0] * len(self.size) if count_include_pad else [a for a, _ in self.pads]
        hi = [n + a + (b if count_include_pad else 0) for n, (a, b) in zip(self.size, self.pads)]
        if count_include_pad and not any(b - p for (_, b), (_, p) in zip(self.eff, self.pads)):
            return np.asarray(math.prod(self.kernel), dtype=dtype)
        if not self.static:
            raise ShapeError("the divisor of each window depends on the image size; give the axes a fixed size")
        counts = window_counts(self.kernel, self.stride, self.dilation, self.out, lo, hi, dtype)
        return counts.reshape(()) if counts.size == 1 else counts


def pool_shape(op: str, k: int, x: TensorType, **window) -> TensorType:
    check_image(op, "x", x, k)
    return x.with_shape((*x.shape[:2], *Window(op, k, x.shape[2:], **window).out))


def _pooled(xs, a) -> tuple:
    """The pooled shape of a sample row (x shape, attrs)."""
    return (*xs[:2], *Window("sample", rank_of(xs), xs[2:], **a).out)


def _without(a: dict, *keys) -> dict:
    return {k: v for k, v in a.items() if k not in keys}


def _given(window: dict) -> dict:
    """The window attrs to pass on to the ops a gradient rule adds (None: the default)."""
    return {k: v for k, v in window.items() if v is not None}


# -- max pooling --------------------------------------------------------------------------
def max_np(x: np.ndarray, win: Window) -> np.ndarray:
    """The maximum of each window: one ``np.maximum`` per kernel offset over strided slices,
    or, when the windows tile ``x``, one window axis at a time (last first), so that every
    pass after the first reads contiguous rows of what the one before wrote."""
    if win.tiles():
        y, _ = _tiles(x, win)  # [N, C, o0, k0, o1, k1, ...]
        for axis in reversed(range(len(win.kernel))):
            at = (slice(None),) * (3 + 2 * axis)
            acc = np.maximum(y[(*at, 0)], y[(*at, 1)]) if win.kernel[axis] > 1 else y[(*at, 0)].copy()
            for i in range(2, win.kernel[axis]):
                np.maximum(acc, y[(*at, i)], out=acc)
            y = acc
        return y
    xp = pad_image(x, win.eff, -np.inf)
    y = None
    for _, idx in offset_slices(win.kernel, win.stride, win.dilation, win.out):
        y = xp[idx].copy() if y is None else np.maximum(y, xp[idx], out=y)
    return y


def _tiles(x: np.ndarray, win: Window):
    """When the windows tile ``x``: ``x`` viewed as ``[N, C, o0, k0, o1, k1, ...]`` (no
    copy) and, per kernel offset in row-major order, the index of its ``[N, C, *out]``
    slice in that view."""
    view = x.reshape(*x.shape[:2], *(v for o, kk in zip(win.out, win.kernel) for v in (o, kk)))
    offsets = itertools.product(*(range(kk) for kk in win.kernel))
    return view, [(slice(None), slice(None), *(v for i in offset for v in (slice(None), i))) for offset in offsets]


def _winners(planes: np.ndarray, kernel, nan: bool):
    """Each window's first maximum found one window axis at a time, last first, from
    ``planes`` (``[*kernel, N, C, *out]``: every kernel offset's values, contiguous) —
    ``(best, winners)`` with ``best`` the maxima ``[N, C, *out]`` and ``winners[a]`` the
    winning offset along axis ``a`` (bool for 2 taps: is it the second?, int8 otherwise,
    None for 1), shaped ``[*kernel[:a], N, C, *out]``: one per window and choice along
    the axes before ``a``.  The row-major first maximum is the first row holding the
    maximum, then the first maximum in that row, so a later tap wins only if strictly
    greater (or, with ``nan``, a NaN over a non-NaN: NaN is the maximum, as np.argmax
    has it)."""
    v, winners = planes, []
    for axis in reversed(range(len(kernel))):
        at = (slice(None),) * axis
        best, idx = v[(*at, 0)], None
        for i in range(1, kernel[axis]):
            tap = v[(*at, i)]
            better = tap > best
            if nan:
                better |= np.isnan(tap) & ~np.isnan(best)
            if kernel[axis] == 2:
                idx = better
            else:
                idx = np.zeros(better.shape, np.int8) if idx is None else idx
                idx[better] = i
            best = np.maximum(best, tap)
        winners.append(idx)
        v = best
    return v, winners[::-1]


def first_max_masks(x: np.ndarray, win: Window) -> list[np.ndarray]:
    """When the windows tile ``x``: per kernel offset in row-major order (the order of
    ``_tiles``' slices), a bool ``[N, C, *out]`` true where that offset is its window's
    first maximum; exactly one offset is true per window.  Each offset's strided slice
    is copied once into a contiguous plane (numpy is several times slower on the
    stride-``k`` slices themselves); then ``_winners`` (a comparison and a maximum per
    tap), redone NaN-aware only when a window's maximum is NaN, and the masks as the
    conjunctions of the winners along each axis."""
    view, slices = _tiles(x, win)
    planes = np.empty((*win.kernel, *x.shape[:2], *win.out), x.dtype)
    for plane, idx in zip(planes.reshape(-1, *x.shape[:2], *win.out), slices):
        np.copyto(plane, view[idx])
    best, winners = _winners(planes, win.kernel, nan=False)
    if np.isnan(best).any():
        best, winners = _winners(planes, win.kernel, nan=True)
    masks: list = [None]  # the masks of the offsets chosen so far, along the axes before this one
    for axis, kk in enumerate(win.kernel):
        idx, grown = winners[axis], []
        for n, mask in enumerate(masks):
            pick = None if idx is None else idx[np.unravel_index(n, win.kernel[:axis]) if axis else ()]
            for t in range(kk):
                if pick is None:
                    grown.append(mask)
                elif kk == 2 and mask is not None:  # mask & ~pick as mask ^ (mask & pick): no negation
                    second = mask & pick
                    grown.extend((mask ^ second, second))
                    break
                else:
                    here = (pick if t else ~pick) if kk == 2 else pick == t
                    grown.append(here if mask is None else mask & here)
        masks = grown
    return [np.ones(best.shape, bool) if m is None else m for m in masks]


def select_bits(mask: np.ndarray, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``values`` where ``mask``, +0 elsewhere, bit for bit (whatever ``values`` holds:
    inf, NaN, -0): the bit patterns as unsigned integers times 0 or 1 (into ``out``,
    an array of ``values``' dtype, when given).  np.where and a masked copyto take ~15x
    longer on the unpredictable masks of max pooling."""
    bits = np.dtype(f"u{values.dtype.itemsize}")
    if out is None:
        return np.multiply(values.view(bits), mask).view(values.dtype)
    np.multiply(values.view(bits), mask, out=out.view(bits))
    return out


def window_argmax(x: np.ndarray, win: Window) -> np.ndarray:
    """``[N, C, *out]`` integers: each window's first maximum, as an offset in the window
    (row-major): one ``argmax`` over the window axis of the im2col view."""
    view = windows(pad_image(x, win.eff, -np.inf), win.kernel, win.stride, win.dilation, win.out)
    return view.reshape(*x.shape[:2], -1, *win.out).argmax(axis=2)


def flat_argmax(x: np.ndarray, win: Window) -> np.ndarray:
    """int64 ``[N, C, *out]``: the flat index into ``x`` of each window's first maximum
    (as ONNX MaxPool's Indices output)."""
    offsets = np.unravel_index(window_argmax(x, win), win.kernel)
    k = len(win.kernel)
    flat = np.arange(x.shape[0] * x.shape[1]).reshape(*x.shape[:2], *(1,) * k)
    for axis, (i, s, d, (a, _), o, n) in enumerate(zip(offsets, win.stride, win.dilation, win.pads, win.out,
                                                       x.shape[2:])):
        start = (np.arange(o) * s - a).reshape((o,) + (1,) * (k - 1 - axis))
        flat = flat * n + start + i * d
    return flat


# (x shape, attrs) rows, every rank: default stride, strided + padded, rectangular,
# overlapping, dilated, asymmetric and "same" padding, ceil mode
MAX_CASES = [((2, 3, 8), {"kernel": 2}),
             ((2, 2, 9), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
             ((2, 3, 5, 5), {"kernel": 2}),
             ((2, 3, 4, 6), {"kernel": 2}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1}),
             ((1, 2, 6, 5), {"kernel": (2, 3), "stride": (1, 2), "padding": 1}),
             ((2, 2, 4, 4), {"kernel": 3, "stride": 1}),
             ((1, 2, 7, 6), {"kernel": 2, "dilation": 2, "stride": 1}),
             ((1, 2, 5, 6), {"kernel": 3, "stride": 1, "padding": "same"}),
             ((1, 2, 5, 5), {"kernel": 2, "ceil_mode": True}),
             ((1, 2, 6, 7), {"kernel": 3, "stride": 2, "padding": ((1, 0), (0, 1)), "ceil_mode": True}),
             ((1, 2, 4, 4, 4), {"kernel": 2}),
             ((1, 2, 5, 4, 3), {"kernel": (3, 2, 2), "stride": (2, 1, 1), "padding": (1, 0, 1)})]
# ties: every window of the 2x2 pooling holds equal maxima; the first (row-major) must win
TIES = np.array([[[[1., 1., 0., 2.], [1., 0., 2., 2.], [3., 3., 3., 3.], [3., 3., 3., 3.]]]])
TIE_ROWS = [(TIES, (1, 1, 2, 2), {"kernel": 2}), (TIES, (1, 1, 3, 3), {"kernel": 2, "stride": 1})]


class MaxPool(Op):
    """``max_pool{k}d(x[N, C, *S], kernel, stride=kernel, padding=0, dilation=1,
    ceil_mode=false)``: the maximum of each window (padding never wins); the
    gradient goes to the first maximum."""

    family = "nn"
    rank = 2
    attrs = MAX_ATTRS

    def shape(self, x, **window):
        return pool_shape(self.name, self.rank, x, **window)

    def kernel(self, x, **window):
        return max_np(x, Window(self.name, self.rank, x.shape[2:], **window))

    def grad(self, b, inputs, outputs, cts, **window):
        return [b.apply(f"max_pool{self.rank}d_grad", inputs[0], cts[0], **_given(window))]

    def onnx(self, e, ins, outs, **window):
        win = Window(self.name, self.rank, e.in_types[0].shape[2:], **window)
        e.node("MaxPool", ins, outs, dilations=list(win.dilation), **win.onnx_attrs(self.name))


per_rank(MaxPool, "max_pool{k}d", MAX_CASES, lambda xs, a: Sample((Arg(xs),), a))



# -- average pooling ----------------------------------------------------------------------
AVG_CASES = [((2, 3, 7), {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
             ((2, 3, 5, 5), {"kernel": 2}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
             ((1, 2, 6, 5), {"kernel": (2, 3), "stride": (1, 2), "padding": 1, "count_include_pad": False}),
             ((1, 2, 5, 5), {"kernel": 2, "ceil_mode": True}),
             ((1, 2, 6, 7), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
             ((1, 2, 5, 6), {"kernel": 3, "stride": 1, "padding": "same", "count_include_pad": False}),
             ((1, 2, 4, 6, 4), {"kernel": 2})]


def avg_np(x: np.ndarray, win: Window, count_include_pad: bool) -> np.ndarray:
    if win.tiles():
        view, _ = _tiles(x, win)
        return view.mean(axis=tuple(range(3, 3 + 2 * len(win.kernel), 2)))
    xp = pad_image(x, win.eff)
    y = None
    for _, idx in offset_slices(win.kernel, win.stride, win.dilation, win.out):
        y = xp[idx].copy() if y is None else np.add(y, xp[idx], out=y)
    return y / win.divisor(count_include_pad, x.dtype)


class AvgPool(Op):
    """``avg_pool{k}d(x[N, C, *S], kernel, stride=kernel, padding=0, ceil_mode=false,
    count_include_pad=true)``: the mean of each window (zero padding counts unless
    ``count_include_pad = false``; what ceil mode adds never counts)."""

    family = "nn"
    rank = 2
    attrs = AVG_ATTRS

    def shape(self, x, count_include_pad, **window):
        return pool_shape(self.name, self.rank, x, **window)

    def kernel(self, x, count_include_pad, **window):
        return avg_np(x, Window(self.name, self.rank, x.shape[2:], **window), count_include_pad)

    def grad(self, b, inputs, outputs, cts, count_include_pad, **window):
        return [b.apply(f"avg_pool{self.rank}d_grad", cts[0], size=b.type(inputs[0]).shape[2:],
                        count_include_pad=count_include_pad, **_given(window))]

    def onnx(self, e, ins, outs, count_include_pad, **window):
        t = e.in_types[0]
        win = Window(self.name, self.rank, t.shape[2:], **window)
        # no ceil-mode overhang, or a symbolic size (the shape rule ruled out PyTorch's last-window
        # correction there): AveragePool's own rule, which divides the overhanging window as PyTorch does
        if win.eff == win.pads or not win.static:
            e.node("AveragePool", ins, outs, count_include_pad=int(count_include_pad), **win.onnx_attrs(self.name))
            return
        try:  # the sum of each window (padding is zeros), divided as the kernel divides
            divisor = win.divisor(count_include_pad, np_dtype(t.dtype))
        except ShapeError as exc:
            raise onnx_error(self.name, exc) from None
        total = e.node("AveragePool", ins, 1, count_include_pad=1, **win.onnx_attrs(self.name))[0]
        scale = e.const(np.asarray(math.prod(win.kernel), np_dtype(t.dtype)) / divisor)
        e.node("Mul", [total, scale], outs)


per_rank(AvgPool, "avg_pool{k}d", AVG_CASES, lambda xs, a: Sample((Arg(xs),), a))


# -- global pooling -----------------------------------------------------------------------
def _spatial(b, op: str, x) -> tuple[int, ...]:
    rank = b.type(x).rank
    if rank < 3:
        raise b.error("E0104", f"shape mismatch in `{op}`: needs [N, C, spatial...], got {b.type(x)}")
    return tuple(range(2, rank))


@register
class GlobalAvgPool(Composite):
    """``global_avg_pool(x[N, C, ...])`` → ``[N, C, 1, ...]``: the mean over every spatial axis."""

    name, family = "global_avg_pool", "nn"
    samples = [Sample((Arg((2, 3, 4, 5)),)), Sample((Arg((2, 3, 4)),), note="1-D spatial")]

    def expand(self, b, x):
        return b.mean(x, axes=_spatial(b, self.name, x), keepdims=True)


@register
class GlobalMaxPool(Composite):
    """``global_max_pool(x[N, C, ...])`` → ``[N, C, 1, ...]``: the maximum over every spatial axis."""

    name, family = "global_max_pool", "nn"
    samples = [Sample((Arg((2, 3, 4, 5)),)), Sample((Arg((2, 3, 4, 2, 3)),), note="3-D spatial")]

    def expand(self, b, x):
        return b.reduce_max(x, axes=_spatial(b, self.name, x), keepdims=True)

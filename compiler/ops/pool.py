"""Pooling and upsampling (registered by ``nn.py``'s import): max_pool2d,
avg_pool2d, global_avg_pool, upsample_nearest, upsample, and the gradient
primitives max_pool2d_grad, max_pool2d_pick, avg_pool2d_grad.

Windows: ``kernel``, ``stride`` (default: the kernel, non-overlapping) and
symmetric ``padding`` are an int or ``[h, w]``; padding is at most half the
kernel (PyTorch's rule: every window keeps a real element); the output size
is floor((H + 2p - k) / s) + 1 (ONNX ``ceil_mode = 0``).

Max pooling routes the gradient to the first maximum of each window in
row-major order, which is the element ONNX ``MaxPool``'s ``Indices`` output
names (onnxruntime keeps the first of equal values).  Two primitives carry
it, each the other's gradient with respect to its second input (both are
piecewise constant in ``x``, so that gradient is zero):

- ``max_pool2d_grad(x, dy)``: scatter-add ``dy`` onto the argmax positions
  (ONNX: ``MaxPool`` indices + ``ScatterElements`` with ``reduction="add"``);
- ``max_pool2d_pick(x, t)``: ``t`` read at ``x``'s argmax positions
  (ONNX: ``MaxPool`` indices + ``Gather``).

Average pooling is linear: ``avg_pool2d_grad`` (ONNX: a depthwise
``ConvTranspose`` with a constant kernel of ones) and ``avg_pool2d`` are
each other's gradients.  ``count_include_pad = false`` divides by the number
of real elements in each window instead of the kernel size.
"""
from __future__ import annotations

import numpy as np

from dlc.grammar.errors import DlcError

from ..types import ShapeError, TensorType, np_dtype, same_dtype
from .nn import check_image, conv_onnx_attrs, conv_out, remainder
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import i64
from .windows import fold, offset_slices, pad_image, pair, window_counts

ONE = (1, 1)
POOL_ATTRS = {"kernel": Attr("ints", doc="int or [kh, kw]"),
              "stride": Attr("ints", None, doc="int or [sh, sw]; default: the kernel"),
              "padding": Attr("ints", (0, 0), doc="int or [ph, pw], at most half the kernel")}


def pool_params(op: str, kernel, stride, padding):
    """(kernel, stride, padding) as validated (h, w) pairs."""
    k = pair(op, "kernel", kernel, 1)
    s = k if stride is None else pair(op, "stride", stride, 1)
    p = pair(op, "padding", padding, 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ShapeError(f"`{op}`: padding {list(p)} is more than half the kernel {list(k)}")
    return k, s, p


def pool_kw(op: str, kernel, stride, padding) -> dict:
    """The window attrs resolved (stride filled in), for the ops a gradient rule adds."""
    k, s, p = pool_params(op, kernel, stride, padding)
    return {"kernel": k, "stride": s, "padding": p}


def pool_shape(op: str, x: TensorType, kernel, stride, padding) -> TensorType:
    check_image(op, "x", x)
    k, s, p = pool_params(op, kernel, stride, padding)
    return x.with_shape((*x.shape[:2], *conv_out(op, x.shape[2:], k, s, p, ONE)))


def pool_out(x: np.ndarray, k, s, p) -> tuple[int, int]:
    return tuple(conv_out("pool", x.shape[2:], k, s, p, ONE))


def pool_onnx_attrs(k, s, p) -> dict:
    return {"kernel_shape": list(k), "strides": list(s), "pads": [*p, *p]}


def _export_error(op: str, why: str) -> DlcError:
    return DlcError("E0501", f"cannot export `{op}`: {why}", hint="give that axis a fixed size")


# -- max pooling --------------------------------------------------------------------------
def argmax_flat(x: np.ndarray, k, s, p) -> np.ndarray:
    """int64 ``[N, C, Ho, Wo]``: the flat index into ``x`` of each window's first
    maximum (row-major in the window), as ONNX MaxPool's Indices output."""
    n, c, h, w = x.shape
    ho, wo = pool_out(x, k, s, p)
    xp = pad_image(x, p, -np.inf)
    best = arg = None
    for (i, j), idx in offset_slices(k, s, ONE, (ho, wo)):
        v = xp[idx]
        if best is None:
            best, arg = v.copy(), np.zeros(v.shape, dtype=np.int64)
            continue
        better = v > best  # strict: an equal value later in the window does not win
        np.copyto(best, v, where=better)
        arg[better] = i * k[1] + j
    rows = np.arange(ho).reshape(ho, 1) * s[0] + arg // k[1] - p[0]
    cols = np.arange(wo) * s[1] + arg % k[1] - p[1]
    return (np.arange(n * c).reshape(n, c, 1, 1) * h + rows) * w + cols


def _pooled(xs, a) -> tuple:
    """The pooled shape of a sample row (x shape, attrs)."""
    k, st, p = pool_params("sample", a["kernel"], a.get("stride"), a.get("padding", 0))
    return (*xs[:2], *conv_out("sample", xs[2:], k, st, p, ONE))


# (x shape, attrs) rows: default stride, strided + padded, rectangular, overlapping windows
MAX_CASES = [((2, 3, 5, 5), {"kernel": 2}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1}),
             ((1, 2, 6, 5), {"kernel": (2, 3), "stride": (1, 2), "padding": 1}),
             ((2, 2, 4, 4), {"kernel": 3, "stride": 1})]
# ties: every window of the 2x2 pooling holds equal maxima; the first (row-major) must win
TIES = np.array([[[[1., 1., 0., 2.], [1., 0., 2., 2.], [3., 3., 3., 3.], [3., 3., 3., 3.]]]])


@register
class MaxPool2d(Op):
    """``max_pool2d(x[N, C, H, W], kernel, stride=kernel, padding=0)``: the maximum of
    each window (padding never wins); the gradient goes to the first maximum."""

    name, family = "max_pool2d", "nn"
    attrs = POOL_ATTRS
    samples = [Sample((Arg(xs),), a) for xs, a in MAX_CASES]

    def shape(self, x, kernel, stride, padding):
        return pool_shape(self.name, x, kernel, stride, padding)

    def kernel(self, x, kernel, stride, padding):
        k, s, p = pool_params(self.name, kernel, stride, padding)
        xp = pad_image(x, p, -np.inf)
        y = None
        for _, idx in offset_slices(k, s, ONE, pool_out(x, k, s, p)):
            y = xp[idx].copy() if y is None else np.maximum(y, xp[idx], out=y)
        return y

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding):
        return [b.max_pool2d_grad(inputs[0], cts[0], **pool_kw(self.name, kernel, stride, padding))]

    def onnx(self, e, ins, outs, kernel, stride, padding):
        e.node("MaxPool", ins, outs, **pool_onnx_attrs(*pool_params(self.name, kernel, stride, padding)))


def _indices(e, x, k, s, p) -> str:
    return e.node("MaxPool", [x], 2, **pool_onnx_attrs(k, s, p))[1]


@register
class MaxPool2dGrad(Op):
    """``max_pool2d_grad(x, dy, kernel, stride, padding)``: ``dy`` (shaped like the
    pooled output) added onto the first maximum of each window of ``x``."""

    name, family = "max_pool2d_grad", "nn"
    inputs = ("x", "dy")
    attrs = POOL_ATTRS
    samples = [Sample((Arg(xs), Arg(_pooled(xs, a))), a) for xs, a in MAX_CASES] + [
        Sample((TIES, Arg((1, 1, 2, 2))), {"kernel": 2}, grad=False, note="ties: the first maximum wins")]

    def shape(self, x, dy, kernel, stride, padding):
        out = pool_shape(self.name, x, kernel, stride, padding)
        same_dtype(self.name, x, dy)
        if dy.shape != out.shape:
            raise ShapeError(f"`{self.name}`: dy must be shaped like the pooled output {out}, got {dy}")
        return x

    def kernel(self, x, dy, kernel, stride, padding):
        idx = argmax_flat(x, *pool_params(self.name, kernel, stride, padding))
        flat = np.bincount(idx.ravel(), weights=dy.ravel(), minlength=x.size)
        return flat.reshape(x.shape).astype(x.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding):
        # linear in dy (its adjoint reads the cotangent at the argmax); piecewise constant in x
        return [None, b.max_pool2d_pick(inputs[0], cts[0], **pool_kw(self.name, kernel, stride, padding))]

    def onnx(self, e, ins, outs, kernel, stride, padding):
        x, dy = ins
        ind = _indices(e, x, *pool_params(self.name, kernel, stride, padding))
        flat = i64(e, (-1,))
        shape = e.node("Shape", [x], 1)[0]
        zeros = e.node("ConstantOfShape", [shape], 1, value=np.zeros(1, np_dtype(e.in_types[0].dtype)))[0]
        dx = e.node("ScatterElements", [e.node("Reshape", [zeros, flat], 1)[0], e.node("Reshape", [ind, flat], 1)[0],
                                        e.node("Reshape", [dy, flat], 1)[0]], 1, axis=0, reduction="add")[0]
        e.node("Reshape", [dx, shape], outs)


@register
class MaxPool2dPick(Op):
    """``max_pool2d_pick(x, t, kernel, stride, padding)``: ``t`` (shaped like ``x``)
    read at the first maximum of each window of ``x``; ``max_pool2d(x) = pick(x, x)``."""

    name, family = "max_pool2d_pick", "nn"
    inputs = ("x", "t")
    attrs = POOL_ATTRS
    samples = [Sample((Arg(xs), Arg(xs)), a) for xs, a in MAX_CASES] + [
        Sample((TIES, Arg((1, 1, 4, 4))), {"kernel": 2}, grad=False, note="ties: the first maximum wins")]

    def shape(self, x, t, kernel, stride, padding):
        same_dtype(self.name, x, t)
        if t.shape != x.shape:
            raise ShapeError(f"`{self.name}`: t must be shaped like x {x}, got {t}")
        return pool_shape(self.name, x, kernel, stride, padding)

    def kernel(self, x, t, kernel, stride, padding):
        return t.reshape(-1)[argmax_flat(x, *pool_params(self.name, kernel, stride, padding))]

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding):
        return [None, b.max_pool2d_grad(inputs[0], cts[0], **pool_kw(self.name, kernel, stride, padding))]

    def onnx(self, e, ins, outs, kernel, stride, padding):
        x, t = ins
        ind = _indices(e, x, *pool_params(self.name, kernel, stride, padding))
        e.node("Gather", [e.node("Reshape", [t, i64(e, (-1,))], 1)[0], ind], outs, axis=0)


# -- average pooling ----------------------------------------------------------------------
AVG_ATTRS = {**POOL_ATTRS, "count_include_pad": Attr("bool", True, doc="divide by the kernel size (true) "
                                                                       "or by the real elements (false)")}
AVG_CASES = [((2, 3, 5, 5), {"kernel": 2}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1}),
             ((2, 3, 5, 5), {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
             ((1, 2, 6, 5), {"kernel": (2, 3), "stride": (1, 2), "padding": 1, "count_include_pad": False})]


def _divisor(size, k, s, p, count_include_pad: bool, dtype):
    """What each window's sum is divided by: the kernel size, or [Ho, Wo] real-element counts."""
    if count_include_pad:
        return np.asarray(k[0] * k[1], dtype=dtype)
    return window_counts(size, k, s, p, dtype)


@register
class AvgPool2d(Op):
    """``avg_pool2d(x[N, C, H, W], kernel, stride=kernel, padding=0, count_include_pad=true)``:
    the mean of each window (zero padding counts unless ``count_include_pad = false``)."""

    name, family = "avg_pool2d", "nn"
    attrs = AVG_ATTRS
    samples = [Sample((Arg(xs),), a) for xs, a in AVG_CASES]

    def shape(self, x, kernel, stride, padding, count_include_pad):
        return pool_shape(self.name, x, kernel, stride, padding)

    def kernel(self, x, kernel, stride, padding, count_include_pad):
        k, s, p = pool_params(self.name, kernel, stride, padding)
        xp = pad_image(x, p)
        y = None
        for _, idx in offset_slices(k, s, ONE, pool_out(x, k, s, p)):
            y = xp[idx].copy() if y is None else np.add(y, xp[idx], out=y)
        return y / _divisor(x.shape[2:], k, s, p, count_include_pad, x.dtype)

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding, count_include_pad):
        return [b.avg_pool2d_grad(cts[0], size=b.type(inputs[0]).shape[2:], count_include_pad=count_include_pad,
                                  **pool_kw(self.name, kernel, stride, padding))]

    def onnx(self, e, ins, outs, kernel, stride, padding, count_include_pad):
        e.node("AveragePool", ins, outs, count_include_pad=int(count_include_pad),
               **pool_onnx_attrs(*pool_params(self.name, kernel, stride, padding)))


@register
class AvgPool2dGrad(Op):
    """``avg_pool2d_grad(dy, size, kernel, stride, padding, count_include_pad)``: the
    gradient of ``avg_pool2d`` over an image of spatial ``size`` — each window's
    cotangent, divided as the forward divided, spread evenly over the window."""

    name, family = "avg_pool2d_grad", "nn"
    inputs = ("dy",)
    attrs = {"size": Attr("shape", doc="[H, W] of the pooled image"), **AVG_ATTRS}
    samples = [Sample((Arg(_pooled(xs, a)),), {"size": xs[2:], **a}) for xs, a in AVG_CASES]

    def shape(self, dy, size, kernel, stride, padding, count_include_pad):
        check_image(self.name, "dy", dy)
        if len(size) != 2:
            raise ShapeError(f"`{self.name}` needs size = [H, W], got {list(size)}")
        x = dy.with_shape((*dy.shape[:2], *size))
        out = pool_shape(self.name, x, kernel, stride, padding)
        if out.shape != dy.shape:
            raise ShapeError(f"`{self.name}`: pooling an image of size {list(size)} gives {out}, but dy is {dy}")
        return x

    def kernel(self, dy, size, kernel, stride, padding, count_include_pad):
        k, s, p = pool_params(self.name, kernel, stride, padding)
        g = dy / _divisor(tuple(size), k, s, p, count_include_pad, dy.dtype)
        return fold(g, tuple(size), k, s, p, ONE, dy.dtype)

    def grad(self, b, inputs, outputs, cts, size, kernel, stride, padding, count_include_pad):
        return [b.avg_pool2d(cts[0], count_include_pad=count_include_pad,
                             **pool_kw(self.name, kernel, stride, padding))]

    def onnx(self, e, ins, outs, size, kernel, stride, padding, count_include_pad):
        k, s, p = pool_params(self.name, kernel, stride, padding)
        t = e.in_types[0]
        dtype = np_dtype(t.dtype)
        c = t.shape[1]
        if not isinstance(c, int):
            raise _export_error(self.name, f"the channel dim {c} must be fixed (it is the ConvTranspose group)")
        if not count_include_pad and not all(isinstance(d, int) for d in size):
            raise _export_error(self.name, "count_include_pad = false needs a fixed H and W")
        g = e.node("Div", [ins[0], e.const(_divisor(tuple(size), k, s, p, count_include_pad, dtype))], 1)[0]
        try:
            rest = remainder(size, k, s, p, ONE, t.shape[2:])
        except ShapeError as exc:
            raise _export_error(self.name, str(exc)) from None
        e.node("ConvTranspose", [g, e.const(np.ones((c, 1, *k), dtype))], outs, output_padding=rest,
               **conv_onnx_attrs(k, s, p, ONE, c))


@register
class GlobalAvgPool(Composite):
    """``global_avg_pool(x[N, C, ...])`` → ``[N, C, 1, ...]``: the mean over every spatial axis."""

    name, family = "global_avg_pool", "nn"
    samples = [Sample((Arg((2, 3, 4, 5)),)), Sample((Arg((2, 3, 4)),), note="1-D spatial")]

    def expand(self, b, x):
        rank = b.type(x).rank
        if rank < 3:
            raise b.error("E0104", f"shape mismatch in `global_avg_pool`: needs [N, C, spatial...], got {b.type(x)}")
        return b.mean(x, axes=tuple(range(2, rank)), keepdims=True)


# -- upsampling ---------------------------------------------------------------------------
@register
class UpsampleNearest(Op):
    """``upsample_nearest(x[N, C, H, W], scale)`` → ``[N, C, H*sh, W*sw]``: each pixel
    repeated into an sh x sw block (integer ``scale``, an int or ``[sh, sw]``); the
    gradient sums each block."""

    name, family = "upsample_nearest", "nn"
    attrs = {"scale": Attr("ints", doc="int or [sh, sw]")}
    samples = [Sample((Arg((2, 3, 2, 3)),), {"scale": 2}), Sample((Arg((1, 2, 3, 2)),), {"scale": (2, 3)}),
               Sample((Arg((1, 1, 2, 2)),), {"scale": 1}, note="identity")]

    def shape(self, x, scale):
        check_image(self.name, "x", x)
        sh, sw = pair(self.name, "scale", scale, 1)
        n, c, h, w = x.shape
        return x.with_shape((n, c, h * sh, w * sw))

    def kernel(self, x, scale):
        sh, sw = pair(self.name, "scale", scale, 1)
        n, c, h, w = x.shape
        return np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw)).reshape(n, c, h * sh, w * sw)

    def grad(self, b, inputs, outputs, cts, scale):
        sh, sw = pair(self.name, "scale", scale, 1)
        n, c, h, w = b.type(inputs[0]).shape
        return [b.sum(b.reshape(cts[0], shape=(n, c, h, sh, w, sw)), axes=(3, 5))]

    def onnx(self, e, ins, outs, scale):
        sh, sw = pair(self.name, "scale", scale, 1)
        # asymmetric + floor: output pixel y reads input floor(y / sh), an exact repeat for integer scales
        e.node("Resize", [ins[0], "", e.const(np.array([1, 1, sh, sw], dtype=np.float32))], outs, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@register
class Upsample(Composite):
    """``upsample(x, scale, mode="nearest")``: ``upsample_nearest`` (the only mode so far)."""

    name, family = "upsample", "nn"
    attrs = {"scale": Attr("ints"), "mode": Attr("str", "nearest", choices=("nearest",))}
    samples = [Sample((Arg((2, 3, 2, 3)),), {"scale": 2})]

    def expand(self, b, x, scale, mode):
        return b.upsample_nearest(x, scale=scale)

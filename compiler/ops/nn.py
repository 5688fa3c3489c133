"""The nn (vision) family: convolutions here; their gradient primitives in
``conv_grad.py``; pooling and upsampling in ``pool.py`` (both imported at the
bottom, so loading the family module ``nn`` registers them all).

Conventions (PyTorch's and ONNX's):

- images are ``[N, C, H, W]``; a conv kernel is ``w[O, C/groups, kh, kw]``, a
  transposed-conv kernel ``w[C, O/groups, kh, kw]``;
- ``stride``, ``padding`` (symmetric: the same on both sides of an axis) and
  ``dilation`` are an int or a list ``[h, w]``; ``groups`` splits the channels;
- bias is not part of the op: add ``reshape(b, [1, O, 1, 1])``.

Shapes: the batch ``N`` (and channels) may be symbolic.  A symbolic H or W is
accepted when the output size is symbolically exact (always for stride 1);
otherwise the shape rule asks for a fixed size.

Kernels: im2col as a strided view (``windows.windows``) copied once into a
``[G, Cg*kh*kw, N*Ho*Wo]`` matrix, then one GEMM per group; the transposed
direction is one GEMM then col2im (``windows.fold``, a loop over the kernel
offsets only).

The gradients form a closed set of three bilinear maps, each differentiable
by the others (``C`` = conv2d(x, w), ``B`` = conv2d_grad_input(dy, w),
``GW`` = conv2d_grad_weight(x, dy); ``<C(x, w), dy> = <x, B(dy, w)> =
<w, GW(x, dy)>``); ``conv_transpose2d`` is ``B`` with its output size given
by ``output_padding``.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym, dim_str, shape_str
from ..types import FLOATS, ShapeError, TensorType, same_dtype
from .registry import Arg, Attr, Composite, Op, Sample, register
from .windows import fold, out_dim, pad_image, pair, windows

CONV_ATTRS = {"stride": Attr("ints", (1, 1), doc="int or [sh, sw]"),
              "padding": Attr("ints", (0, 0), doc="int or [ph, pw], added on both sides"),
              "dilation": Attr("ints", (1, 1), doc="int or [dh, dw]"),
              "groups": Attr("int", 1)}


# -- attribute and shape helpers (shared with conv_grad.py) ----------------------------
def conv_params(op: str, stride, padding, dilation, groups):
    """(stride, padding, dilation) as validated (h, w) pairs; checks groups."""
    if groups < 1:
        raise ShapeError(f"`groups` of `{op}` must be >= 1, got {groups}")
    return pair(op, "stride", stride, 1), pair(op, "padding", padding, 0), pair(op, "dilation", dilation, 1)


def check_image(op: str, name: str, t: TensorType) -> None:
    if t.rank != 4:
        raise ShapeError(f"`{op}` needs {name} of rank 4 ([N, C, H, W]), got {t}")
    if t.dtype not in FLOATS:
        raise ShapeError(f"`{op}` needs float tensors, got {t}")


def kernel_size(op: str, w: TensorType) -> tuple[int, int]:
    kh, kw = w.shape[2:]
    if not isinstance(kh, int) or not isinstance(kw, int):
        raise ShapeError(f"`{op}` needs a kernel of fixed spatial size, got {w}")
    return kh, kw


def divisible(op: str, what: str, d, groups: int) -> None:
    if groups > 1 and (not isinstance(d, int) or d % groups):
        raise ShapeError(f"`{op}`: {what} ({dim_str(d)}) must be a multiple of groups = {groups}")


def conv_out(op: str, size, kernel, stride, padding, dilation) -> tuple:
    """The spatial output size of a convolution over ``size``."""
    return tuple(out_dim(op, axis, n, k, s, p, d) for axis, n, k, s, p, d
                 in zip(("H", "W"), size, kernel, stride, padding, dilation))


def check_fits(op: str, size, kernel, stride, padding, dilation, got) -> None:
    """The windows of an image of ``size`` must number ``got`` (grad ops' consistency)."""
    want = conv_out(op, size, kernel, stride, padding, dilation)
    if tuple(want) != tuple(got):
        raise ShapeError(f"`{op}`: an image of size {shape_str(size)} has {shape_str(want)} windows "
                         f"with these settings, but the gradient is {shape_str(got)}")


def conv_onnx_attrs(kernel, stride, padding, dilation, groups) -> dict:
    return {"kernel_shape": list(kernel), "strides": list(stride), "pads": [*padding, *padding],
            "dilations": list(dilation), "group": groups}


def remainder(size, kernel, stride, padding, dilation, out) -> list[int]:
    """Rows/columns at the far edge no window reaches (ConvTranspose's output_padding)."""
    rest = []
    for n, k, s, p, d, o in zip(size, kernel, stride, padding, dilation, out):
        r = n + 2 * p - d * (k - 1) - 1 - (o - 1) * s
        if isinstance(r, Sym):
            raise ShapeError(f"cannot export: the uncovered edge {dim_str(r)} is not a fixed number")
        rest.append(int(r))
    return rest


# -- NumPy kernels ----------------------------------------------------------------------
def im2col(x, kernel, stride, padding, dilation, groups, out) -> np.ndarray:
    """The windows of ``x`` as a ``[G, Cg*kh*kw, N*Ho*Wo]`` matrix (one copy)."""
    n, c = x.shape[:2]
    win = windows(pad_image(x, padding), kernel, stride, dilation, out)
    win = win.reshape(n, groups, c // groups, *kernel, *out).transpose(1, 2, 3, 4, 0, 5, 6)
    return win.reshape(groups, (c // groups) * kernel[0] * kernel[1], n * out[0] * out[1])


def by_group(t: np.ndarray, groups: int) -> np.ndarray:
    """``[N, O, Ho, Wo]`` → ``[G, O/G, N*Ho*Wo]`` (a copy)."""
    n, o, ho, wo = t.shape
    return t.reshape(n, groups, o // groups, ho * wo).transpose(1, 2, 0, 3).reshape(groups, o // groups, -1)


def conv2d_np(x, w, stride, padding, dilation, groups) -> np.ndarray:
    n = x.shape[0]
    o, kernel = w.shape[0], w.shape[2:]
    out = conv_out("conv2d", x.shape[2:], kernel, stride, padding, dilation)
    y = np.matmul(w.reshape(groups, o // groups, -1), im2col(x, kernel, stride, padding, dilation, groups, out))
    y = y.reshape(groups, o // groups, n, *out).transpose(2, 0, 1, 3, 4)
    return np.ascontiguousarray(y).reshape(n, o, *out)


def deconv_np(dy, w, size, stride, padding, dilation, groups) -> np.ndarray:
    """conv2d_grad_input: ``dy[N, O, Ho, Wo]`` spread back through ``w[O, Cg, kh, kw]``."""
    n, o, ho, wo = dy.shape
    cg, kernel = w.shape[1], w.shape[2:]
    cols = np.matmul(w.reshape(groups, o // groups, -1).transpose(0, 2, 1), by_group(dy, groups))
    cols = cols.reshape(groups, cg, *kernel, n, ho, wo).transpose(4, 0, 1, 2, 3, 5, 6)
    cols = cols.reshape(n, groups * cg, *kernel, ho, wo)
    return fold(lambda i, j: cols[:, :, i, j], size, kernel, stride, padding, dilation, dy.dtype)


def wgrad_np(x, dy, kernel, stride, padding, dilation, groups) -> np.ndarray:
    """conv2d_grad_weight: ``[O, Cg, kh, kw]`` from the image and the output cotangent."""
    o, c = dy.shape[1], x.shape[1]
    cols = im2col(x, kernel, stride, padding, dilation, groups, dy.shape[2:])
    dw = np.matmul(by_group(dy, groups), cols.transpose(0, 2, 1))
    return dw.reshape(o, c // groups, *kernel)


# -- conv2d -----------------------------------------------------------------------------
# (x shape, w shape, attrs) sample rows covering stride, padding, dilation and groups; the
# grad ops' samples derive from them (conv_grad.py).  Some strided rows leave edge rows no
# window reaches, which exercises ConvTranspose's output_padding and the weight-grad Slice.
CONV_CASES = [((2, 3, 5, 5), (4, 3, 3, 3), {}),
              ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
              ((2, 2, 6, 7), (3, 2, 3, 2), {"stride": (1, 2), "padding": (1, 2), "dilation": 2}),
              ((2, 4, 5, 5), (6, 2, 3, 3), {"groups": 2, "padding": 1, "stride": 2}),
              ((1, 3, 6, 6), (3, 1, 2, 2), {"groups": 3, "stride": 2, "dilation": (2, 1)}),
              ((2, 3, 4, 5), (2, 3, 1, 1), {"stride": 2})]


@register
class Conv2d(Op):
    """``conv2d(x[N, C, H, W], w[O, C/groups, kh, kw], stride=1, padding=0, dilation=1,
    groups=1)`` → ``[N, O, H', W']`` with H' = floor((H + 2p - d(kh - 1) - 1) / s) + 1
    (cross-correlation, as every framework computes it)."""

    name, family = "conv2d", "nn"
    inputs = ("x", "w")
    attrs = CONV_ATTRS
    samples = [Sample((Arg(xs), Arg(ws)), a) for xs, ws, a in CONV_CASES]

    def flops(self, in_types, out_types, **attrs):
        """A multiply-add (2 FLOPs) per output element and weight of its window."""
        n = 1
        for d in (*out_types[0].shape, *in_types[1].shape[1:]):
            n = n * d
        return 2 * n

    def shape(self, x, w, stride, padding, dilation, groups):
        stride, padding, dilation = conv_params("conv2d", stride, padding, dilation, groups)
        dtype = same_dtype("conv2d", x, w)
        check_image("conv2d", "x", x)
        check_image("conv2d", "w", w)
        o, cg = w.shape[:2]
        if x.shape[1] != cg * groups:
            raise ShapeError(f"`conv2d`: x {shape_str(x.shape)} has {dim_str(x.shape[1])} channels, but the "
                             f"kernel {shape_str(w.shape)} with groups = {groups} expects {dim_str(cg * groups)}")
        divisible("conv2d", "the output channels", o, groups)
        out = conv_out("conv2d", x.shape[2:], kernel_size("conv2d", w), stride, padding, dilation)
        return TensorType(dtype, (x.shape[0], o, *out))

    def kernel(self, x, w, stride, padding, dilation, groups):
        return conv2d_np(x, w, *conv_params("conv2d", stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, stride, padding, dilation, groups):
        x, w = inputs
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        return [b.conv2d_grad_input(cts[0], w, size=b.type(x).shape[2:], **kw),
                b.conv2d_grad_weight(x, cts[0], kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, stride, padding, dilation, groups):
        s, p, d = conv_params("conv2d", stride, padding, dilation, groups)
        e.node("Conv", ins, outs, **conv_onnx_attrs(e.in_types[1].shape[2:], s, p, d, groups))


# -- conv_transpose2d --------------------------------------------------------------------
def transpose_out(op: str, size, kernel, stride, padding, output_padding, dilation) -> tuple:
    """(H - 1)s - 2p + d(k - 1) + output_padding + 1 per axis."""
    out = []
    for axis, n, k, s, p, q, d in zip("HW", size, kernel, stride, padding, output_padding, dilation):
        if q >= s:
            raise ShapeError(f"`{op}` needs output_padding < stride, got {q} >= {s} on {axis}")
        m = (n - 1) * s - 2 * p + d * (k - 1) + q + 1
        if isinstance(m, int) and m < 1:
            raise ShapeError(f"`{op}`: padding {p} leaves no output on {axis} (size {m})")
        out.append(m)
    return tuple(out)


@register
class ConvTranspose2d(Op):
    """``conv_transpose2d(x[N, C, H, W], w[C, O/groups, kh, kw], stride=1, padding=0,
    output_padding=0, dilation=1, groups=1)`` → ``[N, O, H', W']`` with
    H' = (H - 1)s - 2p + d(kh - 1) + output_padding + 1: the input-gradient of the
    conv2d with the same settings (so it undoes a strided conv's downsampling)."""

    name, family = "conv_transpose2d", "nn"
    inputs = ("x", "w")
    attrs = {"stride": CONV_ATTRS["stride"], "padding": CONV_ATTRS["padding"],
             "output_padding": Attr("ints", (0, 0), doc="extra rows/columns at the far edge, < stride"),
             "dilation": CONV_ATTRS["dilation"], "groups": CONV_ATTRS["groups"]}
    samples = [Sample((Arg((2, 4, 3, 3)), Arg((4, 2, 3, 3))), {"stride": 2, "padding": 1, "output_padding": 1}),
               Sample((Arg((2, 4, 3, 4)), Arg((4, 3, 2, 3))), {"groups": 2, "dilation": 2, "stride": (1, 2)}),
               Sample((Arg((1, 2, 4, 4)), Arg((2, 3, 3, 3))), {}),
               Sample((Arg((2, 3, 2, 3)), Arg((3, 2, 2, 2))), {"stride": 2}, note="2x upsampling")]

    @staticmethod
    def _params(stride, padding, output_padding, dilation, groups):
        s, p, d = conv_params("conv_transpose2d", stride, padding, dilation, groups)
        return s, p, pair("conv_transpose2d", "output_padding", output_padding, 0), d

    def flops(self, in_types, out_types, **attrs):
        """A multiply-add (2 FLOPs) per input element and weight it spreads over."""
        n = 1
        for d in (*in_types[0].shape, *in_types[1].shape[1:]):
            n = n * d
        return 2 * n

    def shape(self, x, w, stride, padding, output_padding, dilation, groups):
        s, p, q, d = self._params(stride, padding, output_padding, dilation, groups)
        dtype = same_dtype("conv_transpose2d", x, w)
        check_image("conv_transpose2d", "x", x)
        check_image("conv_transpose2d", "w", w)
        if x.shape[1] != w.shape[0]:
            raise ShapeError(f"`conv_transpose2d`: x {shape_str(x.shape)} has {dim_str(x.shape[1])} channels, "
                             f"but the kernel {shape_str(w.shape)} takes {dim_str(w.shape[0])}")
        divisible("conv_transpose2d", "the input channels", x.shape[1], groups)
        out = transpose_out("conv_transpose2d", x.shape[2:], kernel_size("conv_transpose2d", w), s, p, q, d)
        return TensorType(dtype, (x.shape[0], w.shape[1] * groups, *out))

    def kernel(self, x, w, stride, padding, output_padding, dilation, groups):
        s, p, q, d = self._params(stride, padding, output_padding, dilation, groups)
        size = transpose_out("conv_transpose2d", x.shape[2:], w.shape[2:], s, p, q, d)
        return deconv_np(x, w, size, s, p, d, groups)

    def grad(self, b, inputs, outputs, cts, stride, padding, output_padding, dilation, groups):
        x, w = inputs
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        return [b.conv2d(cts[0], w, **kw), b.conv2d_grad_weight(cts[0], x, kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, stride, padding, output_padding, dilation, groups):
        s, p, q, d = self._params(stride, padding, output_padding, dilation, groups)
        e.node("ConvTranspose", ins, outs, output_padding=list(q),
               **conv_onnx_attrs(e.in_types[1].shape[2:], s, p, d, groups))


# -- conv1d -------------------------------------------------------------------------------
@register
class Conv1d(Composite):
    """``conv1d(x[N, C, L], w[O, C/groups, k], stride=1, padding=0, dilation=1, groups=1)``
    → ``[N, O, L']``: a conv2d over a height-1 image."""

    name, family = "conv1d", "nn"
    inputs = ("x", "w")
    attrs = {"stride": Attr("int", 1), "padding": Attr("int", 0), "dilation": Attr("int", 1),
             "groups": Attr("int", 1)}
    samples = [Sample((Arg((2, 3, 7)), Arg((4, 3, 3)))),
               Sample((Arg((2, 4, 9)), Arg((4, 2, 3))), {"stride": 2, "padding": 1, "dilation": 2, "groups": 2})]

    def expand(self, b, x, w, stride, padding, dilation, groups):
        for name, v in (("x", x), ("w", w)):
            if b.type(v).rank != 3:
                raise b.error("E0104", f"shape mismatch in `conv1d`: {name} must have rank 3, got {b.type(v)}")
        y = b.conv2d(b.unsqueeze(x, axes=(2,)), b.unsqueeze(w, axes=(2,)), stride=(1, stride),
                     padding=(0, padding), dilation=(1, dilation), groups=groups)
        return b.squeeze(y, axes=(2,))


from . import conv_grad, pool  # noqa: E402,F401  (the gradient primitives; pooling and upsampling)

"""The gradient primitives of conv2d (registered by ``nn.py``'s import).

- ``conv2d_grad_input(dy[N, O, Ho, Wo], w[O, Cg, kh, kw], size=[H, W], ...)``
  → ``dx[N, Cg*groups, H, W]``; ``size`` is needed because a strided conv
  maps several input sizes to one output size.  ONNX: ``ConvTranspose`` with
  ``output_padding`` = the rows/columns no window reached.
- ``conv2d_grad_weight(x[N, C, H, W], dy[N, O, Ho, Wo], kernel=[kh, kw], ...)``
  → ``dw[O, C/groups, kh, kw]``.  ONNX: a ``Conv`` with the roles swapped —
  the batch becomes the channel axis, ``dy`` the kernel, stride and dilation
  trade places — then a ``Slice`` to ``kernel`` (a strided conv may leave
  edge rows no window used) and a ``Transpose`` back to ``[O, Cg, kh, kw]``.

Both are bilinear, and with conv2d they are each other's gradients (see
``nn.py``), so second derivatives of convolutions work too.
"""
from __future__ import annotations

from ..dims import dim_str, shape_str
from ..types import ShapeError, TensorType, same_dtype
from .nn import (CONV_ATTRS, CONV_CASES, check_fits, check_image, conv_onnx_attrs, conv_out, conv_params,
                 deconv_np, divisible, kernel_size, remainder, wgrad_np)
from .registry import Arg, Attr, Op, Sample, register
from .shape import i64


def _resolved(case):
    """(x shape, w shape, attrs, output spatial size) of a conv2d sample row."""
    xs, ws, attrs = case
    s, p, d = conv_params("conv2d", attrs.get("stride", 1), attrs.get("padding", 0), attrs.get("dilation", 1),
                          attrs.get("groups", 1))
    return xs, ws, attrs, conv_out("conv2d", xs[2:], ws[2:], s, p, d)


@register
class Conv2dGradInput(Op):
    """``conv2d_grad_input(dy, w, size, stride, padding, dilation, groups)``: the
    gradient of ``conv2d(x, w, ...)`` with respect to ``x`` (of spatial ``size``)."""

    name, family = "conv2d_grad_input", "nn"
    inputs = ("dy", "w")
    attrs = {"size": Attr("shape", doc="[H, W] of the conv's input"), **CONV_ATTRS}
    samples = [Sample((Arg((xs[0], ws[0], *out)), Arg(ws)), {"size": xs[2:], **a})
               for xs, ws, a, out in map(_resolved, CONV_CASES)]

    def shape(self, dy, w, size, stride, padding, dilation, groups):
        s, p, d = conv_params(self.name, stride, padding, dilation, groups)
        dtype = same_dtype(self.name, dy, w)
        check_image(self.name, "dy", dy)
        check_image(self.name, "w", w)
        if len(size) != 2:
            raise ShapeError(f"`{self.name}` needs size = [H, W], got {list(size)}")
        if dy.shape[1] != w.shape[0]:
            raise ShapeError(f"`{self.name}`: dy {shape_str(dy.shape)} has {dim_str(dy.shape[1])} channels, "
                             f"the kernel {shape_str(w.shape)} makes {dim_str(w.shape[0])}")
        divisible(self.name, "the output channels", w.shape[0], groups)
        check_fits(self.name, tuple(size), kernel_size(self.name, w), s, p, d, dy.shape[2:])
        return TensorType(dtype, (dy.shape[0], w.shape[1] * groups, *size))

    def kernel(self, dy, w, size, stride, padding, dilation, groups):
        return deconv_np(dy, w, tuple(size), *conv_params(self.name, stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, size, stride, padding, dilation, groups):
        dy, w = inputs
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        # <ct, B(dy, w)> = <conv2d(ct, w), dy>
        return [b.conv2d(cts[0], w, **kw), b.conv2d_grad_weight(cts[0], dy, kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, size, stride, padding, dilation, groups):
        s, p, d = conv_params(self.name, stride, padding, dilation, groups)
        kernel = e.in_types[1].shape[2:]
        try:
            rest = remainder(size, kernel, s, p, d, e.in_types[0].shape[2:])
        except ShapeError as exc:
            from dlc.grammar.errors import DlcError

            raise DlcError("E0501", f"`{self.name}`: {exc}") from None
        e.node("ConvTranspose", ins, outs, output_padding=rest, **conv_onnx_attrs(kernel, s, p, d, groups))


@register
class Conv2dGradWeight(Op):
    """``conv2d_grad_weight(x, dy, kernel, stride, padding, dilation, groups)``: the
    gradient of ``conv2d(x, w, ...)`` with respect to ``w`` (of spatial size ``kernel``)."""

    name, family = "conv2d_grad_weight", "nn"
    inputs = ("x", "dy")
    attrs = {"kernel": Attr("ints", doc="[kh, kw] of the conv's kernel"), **CONV_ATTRS}
    samples = [Sample((Arg(xs), Arg((xs[0], ws[0], *out))), {"kernel": ws[2:], **a})
               for xs, ws, a, out in map(_resolved, CONV_CASES)]

    def shape(self, x, dy, kernel, stride, padding, dilation, groups):
        s, p, d = conv_params(self.name, stride, padding, dilation, groups)
        dtype = same_dtype(self.name, x, dy)
        check_image(self.name, "x", x)
        check_image(self.name, "dy", dy)
        if len(kernel) != 2 or min(kernel) < 1:
            raise ShapeError(f"`{self.name}` needs kernel = [kh, kw] of positive ints, got {list(kernel)}")
        if x.shape[0] != dy.shape[0]:
            raise ShapeError(f"`{self.name}`: x {shape_str(x.shape)} and dy {shape_str(dy.shape)} "
                             "differ in the batch dim")
        divisible(self.name, "the input channels", x.shape[1], groups)
        divisible(self.name, "the output channels", dy.shape[1], groups)
        check_fits(self.name, x.shape[2:], tuple(kernel), s, p, d, dy.shape[2:])
        return TensorType(dtype, (dy.shape[1], x.shape[1] // groups, *kernel))

    def kernel(self, x, dy, kernel, stride, padding, dilation, groups):
        return wgrad_np(x, dy, tuple(kernel), *conv_params(self.name, stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding, dilation, groups):
        x, dy = inputs
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        # <ct, GW(x, dy)> = <conv2d(x, ct), dy> = <x, B(dy, ct)>
        return [b.conv2d_grad_input(dy, cts[0], size=b.type(x).shape[2:], **kw), b.conv2d(x, cts[0], **kw)]

    def onnx(self, e, ins, outs, kernel, stride, padding, dilation, groups):
        s, p, d = conv_params(self.name, stride, padding, dilation, groups)
        x, dy = ins
        tx, tdy = e.in_types
        c = tx.shape[1]
        if groups == 1:
            xt = e.node("Transpose", [x], 1, perm=[1, 0, 2, 3])[0]  # [C, N, H, W]: the batch is the channel
        else:  # channels (g, n): conv group g sees the batch of group g's input channels
            h, w = tx.shape[2:]
            x5 = e.node("Reshape", [x, i64(e, (0, groups, c // groups, h, w))], 1)[0]  # 0: copy N
            x5 = e.node("Transpose", [x5], 1, perm=[2, 1, 0, 3, 4])[0]  # [Cg, G, N, H, W]
            xt = e.node("Reshape", [x5, i64(e, (c // groups, -1, h, w))], 1)[0]
        dyt = e.node("Transpose", [dy], 1, perm=[1, 0, 2, 3])[0]  # [O, N, Ho, Wo]: dy is the kernel
        full = conv_out(self.name, tx.shape[2:], tdy.shape[2:], d, p, s)  # what the swapped conv yields
        cw = e.node("Conv", [xt, dyt], 1, strides=list(d), dilations=list(s), pads=[*p, *p], group=groups)[0]
        if tuple(full) != tuple(kernel):  # edge rows no window used: the swapped conv yields a larger kernel
            cw = e.node("Slice", [cw, i64(e, (0, 0)), i64(e, tuple(kernel)), i64(e, (2, 3))], 1)[0]
        e.node("Transpose", [cw], outs, perm=[1, 0, 2, 3])


"""The gradient primitives of the convolutions (registered by ``nn.py``'s
import), one class each for every rank k in ``nn.RANKS``:

- ``conv{k}d_grad_input(dy[N, O, *out], w[O, Cg, *k], size=S, ...)`` →
  ``dx[N, Cg*groups, *S]``; ``size`` is needed because a strided conv maps
  several input sizes to one output size (NumPy: ``conv_kernels.deconv_np``, by rows
  for stride 1).  ONNX: ``ConvTranspose`` whose
  pads and ``output_padding`` cut or extend the far edge to ``size``.
- ``conv{k}d_grad_weight(x[N, C, *S], dy[N, O, *out], kernel=k, ...)`` →
  ``dw[O, C/groups, *k]``: GEMMs of ``dy`` with the im2col matrix of ``x``
  (``conv_kernels.wgrad_np``: per example, or one over the whole batch).  ONNX: a ``Conv`` with the roles swapped — the batch becomes the
  channel axis, ``dy`` the kernel, stride and dilation trade places — then a
  ``Slice`` to ``kernel`` (a strided conv may leave edge rows no window used)
  and a ``Transpose`` back to ``[O, Cg, *k]``.

Both are bilinear, and with the conv they are each other's gradients (see
``nn.py``), so second derivatives of convolutions work to any order.
"""
from __future__ import annotations

from ..dims import dim_str, shape_str
from ..types import ShapeError, TensorType, same_dtype
from .conv_kernels import deconv_np, wgrad_np
from .nn import (CONV_ATTRS, CONV_CASES, Op, check_fits, check_image, conv_params, divisible, kernel_size, onnx_error,
                 onnx_pads, per_rank, transpose_to_size)
from .windows import conv_out
from .registry import Arg, Attr, Sample
from .shape import i64


def _out(xs, ws, attrs):
    """The dy shape of a conv sample row."""
    s, p, d = conv_params("sample", len(xs) - 2, ws[2:], attrs.get("stride", 1), attrs.get("padding", 0),
                          attrs.get("dilation", 1), attrs.get("groups", 1))
    return (xs[0], ws[0], *conv_out("sample", xs[2:], ws[2:], s, p, d))


class ConvGradInput(Op):
    """``conv{k}d_grad_input(dy, w, size, stride, padding, dilation, groups)``: the
    gradient of ``conv{k}d(x, w, ...)`` with respect to ``x`` (of spatial ``size``)."""

    family = "nn"
    rank = 2
    inputs = ("dy", "w")
    attrs = {"size": Attr("shape", doc="the spatial size of the conv's input"), **CONV_ATTRS}

    def params(self, w_shape, stride, padding, dilation, groups):
        return conv_params(self.name, self.rank, tuple(w_shape[2:]), stride, padding, dilation, groups)

    def shape(self, dy, w, size, stride, padding, dilation, groups):
        dtype = same_dtype(self.name, dy, w)
        check_image(self.name, "dy", dy, self.rank)
        check_image(self.name, "w", w, self.rank)
        s, p, d = self.params(w.shape, stride, padding, dilation, groups)
        if len(size) != self.rank:
            raise ShapeError(f"`{self.name}` needs a size of {self.rank} dims, got {list(size)}")
        if dy.shape[1] != w.shape[0]:
            raise ShapeError(f"`{self.name}`: dy {shape_str(dy.shape)} has {dim_str(dy.shape[1])} channels, "
                             f"the kernel {shape_str(w.shape)} makes {dim_str(w.shape[0])}")
        divisible(self.name, "the output channels", w.shape[0], groups)
        check_fits(self.name, tuple(size), kernel_size(self.name, w), s, p, d, dy.shape[2:])
        return TensorType(dtype, (dy.shape[0], w.shape[1] * groups, *size))

    def kernel(self, dy, w, size, stride, padding, dilation, groups):
        return deconv_np(dy, w, tuple(size), *self.params(w.shape, stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, size, stride, padding, dilation, groups):
        dy, w = inputs
        s, p, d = self.params(b.type(w).shape, stride, padding, dilation, groups)
        kw = dict(stride=s, padding=p, dilation=d, groups=groups)
        k = self.rank
        # <ct, B(dy, w)> = <conv(ct, w), dy> = <w, GW(ct, dy)>
        return [b.apply(f"conv{k}d", cts[0], w, **kw),
                b.apply(f"conv{k}d_grad_weight", cts[0], dy, kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, size, stride, padding, dilation, groups):
        w = e.in_types[1].shape
        s, p, d = self.params(w, stride, padding, dilation, groups)
        transpose_to_size(e, ins, outs, w[2:], s, p, d, groups, size, e.in_types[0].shape[2:])


class ConvGradWeight(Op):
    """``conv{k}d_grad_weight(x, dy, kernel, stride, padding, dilation, groups)``: the
    gradient of ``conv{k}d(x, w, ...)`` with respect to ``w`` (of spatial size ``kernel``)."""

    family = "nn"
    rank = 2
    inputs = ("x", "dy")
    attrs = {"kernel": Attr("ints", doc="the spatial size of the conv's kernel"), **CONV_ATTRS}

    def params(self, kernel, stride, padding, dilation, groups):
        return conv_params(self.name, self.rank, tuple(kernel), stride, padding, dilation, groups)

    def shape(self, x, dy, kernel, stride, padding, dilation, groups):
        dtype = same_dtype(self.name, x, dy)
        check_image(self.name, "x", x, self.rank)
        check_image(self.name, "dy", dy, self.rank)
        if len(kernel) != self.rank or min(kernel) < 1:
            raise ShapeError(f"`{self.name}` needs a kernel of {self.rank} positive ints, got {list(kernel)}")
        s, p, d = self.params(kernel, stride, padding, dilation, groups)
        if x.shape[0] != dy.shape[0]:
            raise ShapeError(f"`{self.name}`: x {shape_str(x.shape)} and dy {shape_str(dy.shape)} "
                             "differ in the batch dim")
        divisible(self.name, "the input channels", x.shape[1], groups)
        divisible(self.name, "the output channels", dy.shape[1], groups)
        check_fits(self.name, x.shape[2:], tuple(kernel), s, p, d, dy.shape[2:])
        return TensorType(dtype, (dy.shape[1], x.shape[1] // groups, *kernel))

    def kernel(self, x, dy, kernel, stride, padding, dilation, groups):
        return wgrad_np(x, dy, tuple(kernel), *self.params(kernel, stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, kernel, stride, padding, dilation, groups):
        x, dy = inputs
        s, p, d = self.params(kernel, stride, padding, dilation, groups)
        kw = dict(stride=s, padding=p, dilation=d, groups=groups)
        k = self.rank
        # <ct, GW(x, dy)> = <conv(x, ct), dy> = <x, B(dy, ct)>
        return [b.apply(f"conv{k}d_grad_input", dy, cts[0], size=b.type(x).shape[2:], **kw),
                b.apply(f"conv{k}d", x, cts[0], **kw)]

    def onnx(self, e, ins, outs, kernel, stride, padding, dilation, groups):
        s, p, d = self.params(kernel, stride, padding, dilation, groups)
        x, dy = ins
        tx, tdy = e.in_types
        c, k = tx.shape[1], self.rank
        spatial = list(range(2, 2 + k))
        if groups == 1:
            xt = e.node("Transpose", [x], 1, perm=[1, 0, *spatial])[0]  # [C, N, *S]: the batch is the channel
        else:  # channels (g, n): conv group g sees the batch of group g's input channels
            x5 = e.node("Reshape", [x, e.shape_tensor((0, groups, c // groups, *tx.shape[2:]))], 1)[0]
            x5 = e.node("Transpose", [x5], 1, perm=[2, 1, 0, *(a + 1 for a in spatial)])[0]  # [Cg, G, N, *S]
            xt = e.node("Reshape", [x5, e.shape_tensor((c // groups, -1, *tx.shape[2:]))], 1)[0]
        dyt = e.node("Transpose", [dy], 1, perm=[1, 0, *spatial])[0]  # [O, N, *out]: dy is the kernel
        try:
            full = conv_out(self.name, tx.shape[2:], tdy.shape[2:], d, p, s)  # what the swapped conv yields
        except ShapeError as exc:
            raise onnx_error(self.name, exc) from None
        cw = e.node("Conv", [xt, dyt], 1, strides=list(d), dilations=list(s), pads=onnx_pads(p), group=groups)[0]
        if tuple(full) != tuple(kernel):  # edge rows no window used: the swapped conv yields a larger kernel
            cw = e.node("Slice", [cw, i64(e, (0,) * k), i64(e, tuple(kernel)), i64(e, tuple(spatial))], 1)[0]
        e.node("Transpose", [cw], outs, perm=[1, 0, *spatial])


per_rank(ConvGradInput, "conv{k}d_grad_input", CONV_CASES,
         lambda xs, ws, a: Sample((Arg(_out(xs, ws, a)), Arg(ws)), {"size": xs[2:], **a}))
per_rank(ConvGradWeight, "conv{k}d_grad_weight", CONV_CASES,
         lambda xs, ws, a: Sample((Arg(xs), Arg(_out(xs, ws, a))), {"kernel": ws[2:], **a}))

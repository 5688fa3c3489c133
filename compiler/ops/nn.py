"""The nn (vision) family: convolutions of every spatial rank here, their NumPy
kernels in ``conv_kernels.py``; their gradient primitives in ``conv_grad.py``; pooling in ``pool.py``, its
gradient primitives in ``pool_grad.py``, upsampling in ``upsample.py`` (all
imported at the bottom, so loading the family module ``nn`` registers them all).

One implementation serves every rank k (``RANKS``): ``conv1d``, ``conv2d``,
``conv3d``, ``conv_transpose1d`` … are the same class registered per rank,
their samples the rows of ``CONV_CASES`` of that rank.  Adding a rank is
adding it to ``RANKS`` and sample rows.

Conventions (PyTorch's and ONNX's):

- images are ``[N, C, *spatial]``; a conv kernel is ``w[O, C/groups, *k]``, a
  transposed-conv kernel ``w[C, O/groups, *k]``;
- ``stride`` and ``dilation`` are an int or a list of k; ``padding`` is
  ``"same"`` | ``"valid"`` | an int | a list of k | k pairs
  ``[[before, after], ...]`` (``windows.resolve_pads``); ``groups`` splits the
  channels;
- bias is not part of the op: add ``reshape(b, [1, O, 1, 1])`` (the NumPy backend's
  optimizer folds that add into ``conv{k}d_add``, compiler/passes/fold_conv_add.py).

Shapes: batch, channels and spatial dims may be symbolic; a strided window
over a symbolic axis gives a floor-division dim (``(H + 1)//2``).

Kernels: im2col as a strided view copied once, in its own order, into an
``[N, G, Cg*prod(k), prod(out)]`` matrix (a chunk of examples at a time when
it is big), then one batched GEMM (forward and weight gradient; a weight
gradient over many window columns is one GEMM over the whole batch, from
``[G, Cg*prod(k), N*prod(out)]``; a forward with stride 1 along the first
axis goes by rows, ``conv_rows_np``: im2col over the other axes, a GEMM per
tap of the first); the input gradient is one batched GEMM then col2im
(``windows.fold``, a loop over the kernel offsets only).  No Python loop
runs over output positions.

The gradients form a closed set of three bilinear maps, each differentiable
by the others (``C`` = conv(x, w), ``B`` = conv_grad_input(dy, w), ``GW`` =
conv_grad_weight(x, dy); ``<C(x, w), dy> = <x, B(dy, w)> = <w, GW(x, dy)>``),
so second derivatives of convolutions are convolutions; ``conv_transpose`` is
``B`` with its output size given by ``output_padding``.
"""
from __future__ import annotations

import numpy as np

from ..dims import Sym, dim_str, shape_str
from ..types import FLOATS, AttrError, ShapeError, TensorType, check_addend, same_dtype
from .registry import Arg, Attr, Op, Sample, register
from .conv_kernels import conv_np, deconv_np
from .shape import prod_dims
from .windows import axis_names, conv_out, ntuple, resolve_pads

RANKS = (1, 2, 3)

CONV_ATTRS = {"stride": Attr("ints", (1,), doc="int or one per spatial axis"),
              "padding": Attr("pads", 0, doc='"same", "valid", int, one per axis, or [[before, after], ...]'),
              "dilation": Attr("ints", (1,), doc="int or one per spatial axis"),
              "groups": Attr("int", 1)}


# -- attribute and shape helpers (shared with conv_grad.py and the pool modules) ----------
def conv_params(op: str, k: int, kernel, stride, padding, dilation, groups):
    """(stride, pads, dilation) validated for rank ``k``: k-tuples and k (before, after) pairs."""
    if groups < 1:
        raise ShapeError(f"`groups` of `{op}` must be >= 1, got {groups}")
    s, d = ntuple(op, "stride", stride, k, 1), ntuple(op, "dilation", dilation, k, 1)
    return s, resolve_pads(op, padding, k, kernel, d, s), d


def check_image(op: str, name: str, t: TensorType, k: int) -> None:
    if t.rank != k + 2:
        axes = ", ".join(axis_names(k))
        raise ShapeError(f"`{op}` needs {name} of rank {k + 2} ([N, C, {axes}]), got {t}")
    if t.dtype not in FLOATS:
        raise ShapeError(f"`{op}` needs float tensors, got {t}")


def kernel_size(op: str, w: TensorType) -> tuple[int, ...]:
    kernel = tuple(w.shape[2:])
    if not all(isinstance(n, int) for n in kernel):
        raise ShapeError(f"`{op}` needs a kernel of fixed spatial size, got {w}")
    return kernel


def divisible(op: str, what: str, d, groups: int) -> None:
    if groups > 1 and (not isinstance(d, int) or d % groups):
        raise ShapeError(f"`{op}`: {what} ({dim_str(d)}) must be a multiple of groups = {groups}")


def check_fits(op: str, size, kernel, stride, pads, dilation, got, ceil: bool = False) -> None:
    """The windows of an image of ``size`` must number ``got`` (grad ops' consistency)."""
    want = conv_out(op, size, kernel, stride, pads, dilation, ceil)
    if tuple(want) != tuple(got):
        raise ShapeError(f"`{op}`: an image of size {shape_str(size)} has {shape_str(want)} windows "
                         f"with these settings, but the gradient is {shape_str(got)}")


def onnx_pads(pads) -> list[int]:
    """ONNX order: every axis's before, then every axis's after."""
    return [a for a, _ in pads] + [b for _, b in pads]


def conv_onnx_attrs(kernel, stride, pads, dilation, groups) -> dict:
    return {"kernel_shape": list(kernel), "strides": list(stride), "pads": onnx_pads(pads),
            "dilations": list(dilation), "group": groups}


def transpose_pads(size, kernel, stride, pads, dilation, out) -> tuple[list, list]:
    """(pads, output_padding) of the ONNX ``ConvTranspose`` that maps ``out``
    windows back onto an image of ``size``: the full transposed image is cut
    by the before-padding, and at the far edge either cut (windows reaching
    into the after-padding) or extended with zeros (rows no window reached)."""
    begins, ends, extra = [], [], []
    for n, k, s, (a, _), d, o in zip(size, kernel, stride, pads, dilation, out):
        rest = n + a - ((o - 1) * s + d * (k - 1) + 1)  # > 0: uncovered rows; < 0: overhang to cut
        if isinstance(rest, Sym):
            raise ShapeError(f"the uncovered edge {dim_str(rest)} is not a fixed number")
        begins.append(a)
        ends.append(max(0, -rest))
        extra.append(max(0, rest))
    return begins + ends, extra


def transpose_to_size(e, ins, outs, kernel, stride, pads, dilation, groups, size, out) -> None:
    """An ONNX ``ConvTranspose`` of ``out`` windows back onto an image of ``size``.
    Static sizes: its pads and ``output_padding`` cut or extend the far edge
    (``transpose_pads``).  Symbolic ones (a floor-division dim): the transposed
    windows cut by the before-padding only, then a ``Pad`` of the far edge to
    ``size``, by an amount computed when the model runs (negative pads cut
    what reached into the after-padding)."""
    attrs = conv_onnx_attrs(kernel, stride, pads, dilation, groups)
    try:
        begins_ends, extra = transpose_pads(size, kernel, stride, pads, dilation, out)
    except ShapeError:  # transposed windows cut only before; the far edge is cut or padded to size
        k = len(size)
        (full,) = e.node("ConvTranspose", ins, 1, **{**attrs, "pads": [a for a, _ in pads] + [0] * k})
        (have,) = e.node("Shape", [full], 1, start=2)
        (rest,) = e.node("Sub", [e.shape_tensor(tuple(size)), have], 1)
        zeros = e.const(np.zeros(2 + k + 2, np.int64))  # no padding before any axis, nor after N and C
        (amounts,) = e.node("Concat", [zeros, rest], 1, axis=0)
        e.node("Pad", [full, amounts], outs)
        return
    e.node("ConvTranspose", ins, outs, output_padding=extra, **{**attrs, "pads": begins_ends})


def onnx_error(op: str, exc: Exception):
    from dlc.grammar.errors import DlcError

    return DlcError("E0501", f"cannot export `{op}`: {exc}", hint="give that axis a fixed size")


def rank_of(xs) -> int:
    """The spatial rank of a sample row's first input (a shape or an array)."""
    return len(np.shape(xs) if isinstance(xs, np.ndarray) else xs) - 2


# -- conv -------------------------------------------------------------------------------
# (x shape, w shape, attrs) rows, every rank: stride, padding (symmetric, asymmetric, "same"),
# dilation and groups; the grad ops' samples derive from them (conv_grad.py).  Some strided
# rows leave edge rows no window reaches (ConvTranspose's output_padding, the weight-grad Slice).
CONV_CASES = [((2, 3, 7), (4, 3, 3), {}),
              ((2, 4, 9), (4, 2, 3), {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}),
              ((2, 2, 8), (3, 2, 4), {"padding": "same"}),
              ((2, 3, 5, 5), (4, 3, 3, 3), {}),
              ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
              ((2, 2, 6, 7), (3, 2, 3, 2), {"stride": (1, 2), "padding": (1, 2), "dilation": 2}),
              ((2, 4, 5, 5), (6, 2, 3, 3), {"groups": 2, "padding": 1, "stride": 2}),
              ((1, 3, 6, 6), (3, 1, 2, 2), {"groups": 3, "stride": 2, "dilation": (2, 1)}),
              ((2, 3, 4, 5), (2, 3, 1, 1), {"stride": 2}),
              ((2, 2, 5, 6), (3, 2, 2, 3), {"padding": ((0, 1), (2, 0)), "stride": 2}),
              ((1, 2, 5, 4), (2, 2, 2, 3), {"padding": "same", "dilation": (2, 1)}),
              ((2, 2, 4, 5, 4), (3, 2, 3, 3, 2), {"padding": 1}),
              ((1, 2, 5, 4, 6), (2, 1, 2, 3, 3), {"stride": (2, 1, 2), "padding": ((1, 0), (0, 1), (1, 1)),
                                                  "groups": 2, "dilation": (1, 1, 2)})]


class Conv(Op):
    """``conv{k}d(x[N, C, *S], w[O, C/groups, *k], stride=1, padding=0, dilation=1,
    groups=1)`` → ``[N, O, *S']`` with S' = ⌊(S + before + after − d(k − 1) − 1) / s⌋ + 1
    per axis (cross-correlation, as every framework computes it)."""

    family = "nn"
    rank = 2
    inputs = ("x", "w")
    attrs = CONV_ATTRS

    def params(self, w_shape, stride, padding, dilation, groups):
        return conv_params(self.name, self.rank, tuple(w_shape[2:]), stride, padding, dilation, groups)

    def flops(self, in_types, out_types, **attrs):
        """A multiply-add (2 FLOPs) per output element and weight of its window."""
        return 2 * prod_dims((*out_types[0].shape, *in_types[1].shape[1:]))

    def shape(self, x, w, stride, padding, dilation, groups):
        dtype = same_dtype(self.name, x, w)
        check_image(self.name, "x", x, self.rank)
        check_image(self.name, "w", w, self.rank)
        kernel = kernel_size(self.name, w)
        s, p, d = self.params(w.shape, stride, padding, dilation, groups)
        o, cg = w.shape[:2]
        if x.shape[1] != cg * groups:
            raise ShapeError(f"`{self.name}`: x {shape_str(x.shape)} has {dim_str(x.shape[1])} channels, but the "
                             f"kernel {shape_str(w.shape)} with groups = {groups} expects {dim_str(cg * groups)}")
        divisible(self.name, "the output channels", o, groups)
        return TensorType(dtype, (x.shape[0], o, *conv_out(self.name, x.shape[2:], kernel, s, p, d)))

    def kernel(self, x, w, stride, padding, dilation, groups):
        return conv_np(x, w, *self.params(w.shape, stride, padding, dilation, groups), groups)

    def grad(self, b, inputs, outputs, cts, stride, padding, dilation, groups):
        x, w = inputs
        s, p, d = self.params(b.type(w).shape, stride, padding, dilation, groups)
        kw = dict(stride=s, padding=p, dilation=d, groups=groups)
        k = self.rank
        return [b.apply(f"conv{k}d_grad_input", cts[0], w, size=b.type(x).shape[2:], **kw),
                b.apply(f"conv{k}d_grad_weight", x, cts[0], kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, stride, padding, dilation, groups):
        w = e.in_types[1].shape
        e.node("Conv", ins, outs, **conv_onnx_attrs(w[2:], *self.params(w, stride, padding, dilation, groups),
                                                    groups))


# -- conv_transpose ------------------------------------------------------------------------
def transpose_out(op: str, size, kernel, stride, pads, output_padding, dilation) -> tuple:
    """(S − 1)s − before − after + d(k − 1) + output_padding + 1 per axis."""
    out = []
    for axis, n, k, s, (a, b), q, d in zip(axis_names(len(size)), size, kernel, stride, pads, output_padding,
                                           dilation):
        if q >= s and q >= d:
            raise ShapeError(f"`{op}` needs output_padding < stride, got {q} >= {s} on {axis}")
        m = (n - 1) * s - a - b + d * (k - 1) + q + 1
        if isinstance(m, int) and m < 1:
            raise ShapeError(f"`{op}`: padding {[a, b]} leaves no output on {axis} (size {m})")
        out.append(m)
    return tuple(out)


TRANSPOSE_CASES = [((2, 4, 3), (4, 2, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
                   ((2, 4, 3, 3), (4, 2, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
                   ((2, 4, 3, 4), (4, 3, 2, 3), {"groups": 2, "dilation": 2, "stride": (1, 2)}),
                   ((1, 2, 4, 4), (2, 3, 3, 3), {}),
                   ((2, 3, 2, 3), (3, 2, 2, 2), {"stride": 2}),
                   ((1, 2, 3, 4), (2, 2, 3, 3), {"stride": 2, "padding": ((1, 0), (0, 1))}),
                   ((1, 2, 2, 3, 2), (2, 2, 2, 3, 2), {"stride": 2, "padding": (0, 1, 0)})]


class ConvTranspose(Op):
    """``conv_transpose{k}d(x[N, C, *S], w[C, O/groups, *k], stride=1, padding=0,
    output_padding=0, dilation=1, groups=1)`` → ``[N, O, *S']`` with
    S' = (S − 1)s − before − after + d(k − 1) + output_padding + 1: the
    input-gradient of the conv with the same settings (so it undoes a
    strided conv's downsampling)."""

    family = "nn"
    rank = 2
    inputs = ("x", "w")
    attrs = {"stride": CONV_ATTRS["stride"],
             "padding": Attr("pads", 0, doc="int, one per axis, or [[before, after], ...]"),
             "output_padding": Attr("ints", (0,), doc="extra rows at the far edge of each axis, < stride"),
             "dilation": CONV_ATTRS["dilation"], "groups": CONV_ATTRS["groups"]}

    def params(self, w_shape, stride, padding, output_padding, dilation, groups):
        if isinstance(padding, str):
            raise AttrError(f"`{self.name}` takes padding as numbers, got {padding!r}")
        s, p, d = conv_params(self.name, self.rank, tuple(w_shape[2:]), stride, padding, dilation, groups)
        return s, p, ntuple(self.name, "output_padding", output_padding, self.rank, 0), d

    def flops(self, in_types, out_types, **attrs):
        """A multiply-add (2 FLOPs) per input element and weight it spreads over."""
        return 2 * prod_dims((*in_types[0].shape, *in_types[1].shape[1:]))

    def shape(self, x, w, stride, padding, output_padding, dilation, groups):
        dtype = same_dtype(self.name, x, w)
        check_image(self.name, "x", x, self.rank)
        check_image(self.name, "w", w, self.rank)
        kernel = kernel_size(self.name, w)
        s, p, q, d = self.params(w.shape, stride, padding, output_padding, dilation, groups)
        if x.shape[1] != w.shape[0]:
            raise ShapeError(f"`{self.name}`: x {shape_str(x.shape)} has {dim_str(x.shape[1])} channels, "
                             f"but the kernel {shape_str(w.shape)} takes {dim_str(w.shape[0])}")
        divisible(self.name, "the input channels", x.shape[1], groups)
        out = transpose_out(self.name, x.shape[2:], kernel, s, p, q, d)
        return TensorType(dtype, (x.shape[0], w.shape[1] * groups, *out))

    def kernel(self, x, w, stride, padding, output_padding, dilation, groups):
        s, p, q, d = self.params(w.shape, stride, padding, output_padding, dilation, groups)
        size = transpose_out(self.name, x.shape[2:], w.shape[2:], s, p, q, d)
        return deconv_np(x, w, size, s, p, d, groups)

    def grad(self, b, inputs, outputs, cts, stride, padding, output_padding, dilation, groups):
        x, w = inputs
        s, p, _, d = self.params(b.type(w).shape, stride, padding, output_padding, dilation, groups)
        kw = dict(stride=s, padding=p, dilation=d, groups=groups)
        k = self.rank
        return [b.apply(f"conv{k}d", cts[0], w, **kw),
                b.apply(f"conv{k}d_grad_weight", cts[0], x, kernel=b.type(w).shape[2:], **kw)]

    def onnx(self, e, ins, outs, stride, padding, output_padding, dilation, groups):
        w = e.in_types[1].shape
        s, p, q, d = self.params(w, stride, padding, output_padding, dilation, groups)
        e.node("ConvTranspose", ins, outs, output_padding=list(q), **conv_onnx_attrs(w[2:], s, p, d, groups))


class ConvAdd(Conv):
    """``conv{k}d_add(x, w, c, stride, padding, dilation, groups)``: ``conv{k}d(x, w) + c``,
    ``c`` (a bias ``[O, 1, ...]``, or any term broadcasting to the output without enlarging
    it) added to each chunk of the output as the conv computes it, while the chunk is in
    cache: per element the one addition the separate ``add`` makes, so bit-identical.  Made
    by the NumPy backend's optimizer (compiler/passes/fold_conv_add.py) from an ``add`` of
    a conv's only use."""

    family = "fused"
    inputs = ("x", "w", "c")

    def flops(self, in_types, out_types, **attrs):
        """The conv's multiply-adds and the add."""
        return super().flops(in_types[:2], out_types, **attrs) + prod_dims(out_types[0].shape)

    def shape(self, x, w, c, stride, padding, dilation, groups):
        out = super().shape(x, w, stride, padding, dilation, groups)
        check_addend(self.name, out, c, "the conv's output")
        return out

    def kernel(self, x, w, c, stride, padding, dilation, groups):
        return conv_np(x, w, *self.params(w.shape, stride, padding, dilation, groups), groups, c=c)

    def grad(self, b, inputs, outputs, cts, stride, padding, dilation, groups):
        dx, dw = super().grad(b, inputs[:2], outputs, cts, stride, padding, dilation, groups)
        return [dx, dw, cts[0]]  # backprop sums c's cotangent over the axes it was broadcast along

    def onnx(self, e, ins, outs, stride, padding, dilation, groups):
        product = e.tmp("conv")
        super().onnx(e, ins[:2], [product], stride, padding, dilation, groups)  # (reads e.in_types[1]: w)
        e.node("Add", [product, ins[2]], outs)


def per_rank(base: type, name: str, cases, sample) -> None:
    """Register ``base`` once per rank in RANKS as ``name.format(k=...)``, with
    the sample rows of that rank."""
    for k in RANKS:
        rows = [sample(*c) for c in cases if rank_of(c[0]) == k]
        register(type(base.__name__ + f"{k}d", (base,), {"name": name.format(k=k), "rank": k, "samples": rows,
                                                          "__doc__": base.__doc__.replace("{k}", str(k))}))


per_rank(Conv, "conv{k}d", CONV_CASES, lambda xs, ws, a: Sample((Arg(xs), Arg(ws)), a))
per_rank(ConvAdd, "conv{k}d_add", CONV_CASES,
         lambda xs, ws, a: Sample((Arg(xs), Arg(ws), Arg((ws[0],) + (1,) * (len(xs) - 2))), a, note="a bias"))
per_rank(ConvTranspose, "conv_transpose{k}d", TRANSPOSE_CASES, lambda xs, ws, a: Sample((Arg(xs), Arg(ws)), a))

from . import conv_grad, pool, pool_grad, upsample  # noqa: E402,F401  (the gradient primitives; pooling, its gradients, upsampling)

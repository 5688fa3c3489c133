"""The nn (vision) family: convolutions of every spatial rank here; their
gradient primitives in ``conv_grad.py``; pooling in ``pool.py``, its
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

import math

import numpy as np

from ..dims import Sym, dim_str, shape_str
from ..types import FLOATS, AttrError, ShapeError, TensorType, broadcast_shapes, same_dtype
from .registry import Arg, Attr, Op, Sample, register
from . import gemm
from .windows import axis_names, fold, im2col, im2col_by_channel, ntuple, out_dim, pad_image, resolve_pads, windows

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


def conv_out(op: str, size, kernel, stride, pads, dilation, ceil: bool = False) -> tuple:
    """The spatial output size of a window op over ``size``."""
    return tuple(out_dim(op, axis, n, k, s, p, d, ceil) for axis, n, k, s, p, d
                 in zip(axis_names(len(size)), size, kernel, stride, pads, dilation))


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


# -- NumPy kernels ----------------------------------------------------------------------
# Layout: the im2col matrix is [N, G, Cg*prod(k), prod(out)], so every kernel is one batched
# GEMM (np.matmul broadcasting the weight over the batch) with no transposes of big operands:
# the output [N, G, O/G, prod(out)] is already [N, O, *out]; the weight gradient sums the
# per-example products over N, or is one GEMM over the whole batch (WGRAD_ONE_GEMM_COLUMNS).
# Stride 1: the input gradient by rows (deconv_rows_np), the batch inside the GEMM when it
# has many rows (DECONV_BATCH_INSIDE_ROWS).
# The batch's im2col matrix from which conv_np builds it a chunk of examples at a time (each
# chunk's GEMMs read it from cache): LeNet's first conv (1 MB per 12 examples) 0.53 -> 0.40 ms.
IM2COL_CHUNK_BYTES = 1 << 20
# Window columns off the first axis (Cg*prod(k[1:])) from which the stride-1 conv goes by rows
# (conv_rows_np): LeNet's second conv (30) 0.62 -> 0.47 ms; its first (5) is 1.4x slower.
ROWS_MIN_COLUMNS = 16


def chunks(n: int, example_bytes: int) -> list[tuple[int, int]]:
    """(start, stop) spans of a batch of ``n`` examples, each span's window columns
    (``example_bytes`` per example) at most ``IM2COL_CHUNK_BYTES`` (one example at least)."""
    size = max(1, IM2COL_CHUNK_BYTES // max(1, example_bytes))
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def conv_np(x, w, stride, pads, dilation, groups, c=None) -> np.ndarray:
    """The convolution as batched GEMMs over the im2col matrix, built a chunk of examples
    at a time; by rows (``conv_rows_np``) when the first axis has stride 1 and the other
    axes' windows have enough columns.  ``c`` (of the output's dtype, broadcasting to the
    output without enlarging it): added in place to each chunk of the output while the
    chunk is in cache — per element the one addition a separate ``add`` makes."""
    n, o, kernel = x.shape[0], w.shape[0], w.shape[2:]
    out = conv_out("conv", x.shape[2:], kernel, stride, pads, dilation)
    if stride[0] == 1 and kernel[0] > 1 and w.shape[1] * math.prod(kernel[1:]) >= ROWS_MIN_COLUMNS:
        y = conv_rows_np(x, w, stride, pads, dilation, groups, out)
        return y if c is None else np.add(y, c, out=y)
    wg = w.reshape(groups, o // groups, -1)
    spans = chunks(n, x.shape[1] * math.prod(kernel) * math.prod(out) * x.itemsize)
    if len(spans) == 1:
        y = np.matmul(wg, im2col(x, kernel, stride, pads, dilation, groups, out)).reshape(n, o, *out)
        return y if c is None else np.add(y, c, out=y)
    y = np.empty((n, groups, o // groups, math.prod(out)), np.result_type(x, w))
    image = y.reshape(n, o, *out)  # a view of y
    added = None if c is None else np.broadcast_to(c, image.shape)
    for start, stop in spans:
        np.matmul(wg, im2col(x[start:stop], kernel, stride, pads, dilation, groups, out), out=y[start:stop])
        if added is not None:
            np.add(image[start:stop], added[start:stop], out=image[start:stop])
    return image


def conv_rows_np(x, w, stride, pads, dilation, groups, out) -> np.ndarray:
    """The convolution with stride 1 along the first axis, by rows: im2col over the other
    axes only (``[N, G, Cg*prod(k[1:]), padded0*prod(out[1:])]``, k0 times smaller than
    the full one), then per tap i of the first axis one batched GEMM with the rows from
    i*d0 on (a strided view, no copy), summed."""
    n, c, o, kernel = x.shape[0], x.shape[1], w.shape[0], w.shape[2:]
    cg, og = c // groups, o // groups
    xp = pad_image(x, pads)
    rest = math.prod(out[1:])
    view = windows(xp, (1, *kernel[1:]), (1, *stride[1:]), (1, *dilation[1:]), (xp.shape[2], *out[1:]))
    cols = np.ascontiguousarray(view).reshape(n, groups, cg * math.prod(kernel[1:]), xp.shape[2] * rest)
    wr = np.ascontiguousarray(w.reshape(groups, og, cg, kernel[0], -1).transpose(3, 0, 1, 2, 4))
    wr = wr.reshape(kernel[0], groups, og, -1)  # [k0, G, O/G, Cg*prod(k[1:])]
    y = None
    for i in range(kernel[0]):
        at = i * dilation[0] * rest
        part = np.matmul(wr[i], cols[..., at:at + out[0] * rest])
        y = part if y is None else np.add(y, part, out=y)
    return y.reshape(n, o, *out)


def deconv_np(dy, w, size, stride, pads, dilation, groups) -> np.ndarray:
    """conv_grad_input: ``dy[N, O, *out]`` spread back through ``w[O, Cg, *k]``:
    one batched GEMM to window columns, then col2im; with stride 1, ``deconv_rows_np``."""
    n, o, out = dy.shape[0], dy.shape[1], dy.shape[2:]
    cg, kernel = w.shape[1], w.shape[2:]
    padded = tuple(m + a + b for m, (a, b) in zip(size, pads))
    if set(stride) == {1} and all(p - d * (k - 1) == m for p, k, d, m in zip(padded, kernel, dilation, out)):
        return deconv_rows_np(dy, w, size, pads, dilation, groups)
    wt = w.reshape(groups, o // groups, -1).transpose(0, 2, 1)  # [G, Cg*prod(k), O/G]
    cols = np.matmul(wt, dy.reshape(n, groups, o // groups, -1))  # [N, G, Cg*prod(k), prod(out)]
    return fold(cols.reshape(n, groups * cg, *kernel, *out), size, kernel, stride, pads, dilation, dy.dtype)


# GEMM rows (Cg*k0: input channels times first-axis taps) from which the stride-1 input
# gradient puts the batch inside one GEMM per group ([Cg*k0, Og*prod(k[1:])] x
# [Og*prod(k[1:]), N*o0*prod(padded[1:])]) instead of a batched GEMM per example, when that
# GEMM goes to MKL (bit-identical at LeNet's shapes): LeNet's second conv (30 rows) 0.84 ->
# 0.73 ms; on NumPy's BLAS (DLC_BLAS=numpy) it is slower (0.85 -> 0.96 ms), and at the first
# conv (5 rows, a shape conv_transpose meets too) a wash (1.00 ms both), so those stay.
DECONV_BATCH_INSIDE_ROWS = 16


def deconv_rows_np(dy, w, size, pads, dilation, groups) -> np.ndarray:
    """conv_grad_input for stride 1, by rows: along every axis but the first it is a
    full correlation of ``dy`` with the flipped kernel (im2col of ``dy`` zero-extended
    by the dilated kernel on both sides, over those axes only), one batched GEMM
    gives, for every tap i of the first axis, whole rows of the padded image, and
    col2im is left to the first axis alone: k0 adds of contiguous rows instead of
    prod(k) adds of short ones (2-D: 1/k1 of the adds, each k1 times longer)."""
    n, o, out = dy.shape[0], dy.shape[1], dy.shape[2:]
    cg, kernel = w.shape[1], w.shape[2:]
    og, k = o // groups, len(kernel)
    padded = tuple(m + a + b for m, (a, b) in zip(size, pads))
    ext = tuple(d * (kk - 1) for kk, d in zip(kernel[1:], dilation[1:]))
    flipped = w[(slice(None), slice(None), slice(None), *(slice(None, None, -1),) * (k - 1))]
    wr = flipped.reshape(groups, og, cg, kernel[0], -1).transpose(0, 2, 3, 1, 4).reshape(groups, cg * kernel[0], -1)
    rest = out[0] * math.prod(padded[1:])
    batch_inside = cg * kernel[0] >= DECONV_BATCH_INSIDE_ROWS and \
        gemm.goes_to_mkl(cg * kernel[0], og * math.prod(kernel[1:]), n * rest, dy.dtype)
    # dy zero-extended by the dilated kernel on both sides of every axis but the first; with
    # the batch inside the GEMM, channel-major ([O, N, ...]: the copy transposes as it fills)
    lead = (o, n) if batch_inside else (n, o)
    dz = np.zeros((*lead, out[0], *(m + 2 * e for m, e in zip(out[1:], ext))), dy.dtype)
    dz[(slice(None), slice(None), slice(None), *(slice(e, e + m) for m, e in zip(out[1:], ext)))] = \
        dy.transpose(1, 0, *range(2, k + 2)) if batch_inside else dy
    # [N, O, 1, *k[1:], o0, *padded[1:]] (N and O swapped with the batch inside): tap j of axis a
    # reads dy at X + j d - e = X - (k - 1 - j) d
    view = windows(dz, (1, *kernel[1:]), (1,) * k, (1, *dilation[1:]), (out[0], *padded[1:]))
    if batch_inside:
        # [G, Og*prod(k[1:]), N*o0*prod(padded[1:])]: one GEMM per group, the batch along its columns
        cols = np.ascontiguousarray(view.transpose(0, *range(2, k + 2), 1, *range(k + 2, 2 * k + 2)))
        cols = cols.reshape(groups, -1, n * rest)
        rows = [gemm.gemm_2d(a, b).reshape(cg, kernel[0], n, out[0], *padded[1:]) for a, b in zip(wr, cols)]
        rows = np.concatenate(rows) if groups > 1 else rows[0]  # [C, k0, N, o0, ...]
        image = np.empty((n, groups * cg, *padded), dy.dtype)
        target = image.transpose(1, 0, *range(2, k + 2))  # [C, N, *padded]: a view of the image
        target[:, :, :out[0]] = rows[:, 0]  # tap 0 copied, not added to zeros (the same values)
        target[:, :, out[0]:] = 0
        for i in range(1, kernel[0]):
            target[:, :, i * dilation[0]:i * dilation[0] + out[0]] += rows[:, i]
    else:
        image = np.zeros((n, groups * cg, *padded), dy.dtype)
        cols = np.ascontiguousarray(view).reshape(n, groups, -1, rest)
        rows = np.matmul(wr, cols).reshape(n, groups * cg, kernel[0], out[0], *padded[1:])  # [N, C, k0, o0, ...]
        for i in range(kernel[0]):
            image[:, :, i * dilation[0]:i * dilation[0] + out[0]] += rows[:, :, i]
    return image[(slice(None), slice(None), *(slice(a, a + m) for m, (a, _) in zip(size, pads)))]


# Window columns (Cg*prod(k)) from which the weight gradient is one GEMM per group over the
# whole batch rather than a GEMM per example summed over the batch.  Measured with 1 thread at
# LeNet-5's shapes (benchmarks/windows.py): with 25 columns (its first conv, 1 channel 5x5) the
# skinny [O, N*P] x [N*P, 25] product is slower as one GEMM; with 150 (its second) it is faster.
WGRAD_ONE_GEMM_COLUMNS = 64


def wgrad_np(x, dy, kernel, stride, pads, dilation, groups) -> np.ndarray:
    """conv_grad_weight: ``[O, Cg, *k]``, GEMMs of dy with the im2col matrix: one per
    group over the whole batch when the windows have many columns, else one per
    example, summed."""
    n, o, c = dy.shape[0], dy.shape[1], x.shape[1]
    og = o // groups
    if (c // groups) * math.prod(kernel) >= WGRAD_ONE_GEMM_COLUMNS:
        cols = im2col_by_channel(x, kernel, stride, pads, dilation, groups, dy.shape[2:])  # [G, Cg*K, N*P]
        dyt = np.ascontiguousarray(dy.reshape(n, groups, og, -1).transpose(1, 2, 0, 3)).reshape(groups, og, -1)
        # [G, Cg*K, O/G]: this orientation (the short side last) is 1.5x faster in MKL at LeNet's shapes
        dw = np.stack([gemm.gemm_2d(cg, d.T) for d, cg in zip(dyt, cols)])
        return np.ascontiguousarray(dw.transpose(0, 2, 1)).reshape(o, c // groups, *kernel)
    dyg = dy.reshape(n, groups, og, -1)
    per_example = np.empty((n, groups, og, (c // groups) * math.prod(kernel)), np.result_type(x, dy))
    for start, stop in chunks(n, c * math.prod(kernel) * math.prod(dy.shape[2:]) * x.itemsize):  # as conv_np
        cols = im2col(x[start:stop], kernel, stride, pads, dilation, groups, dy.shape[2:])
        np.matmul(dyg[start:stop], cols.transpose(0, 1, 3, 2), out=per_example[start:stop])
    return per_example.sum(axis=0).reshape(o, c // groups, *kernel)


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
        n = 1
        for d in (*out_types[0].shape, *in_types[1].shape[1:]):
            n = n * d
        return 2 * n

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
        n = 1
        for d in (*in_types[0].shape, *in_types[1].shape[1:]):
            n = n * d
        return 2 * n

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
        n = 1
        for d in out_types[0].shape:
            n = n * d
        return super().flops(in_types[:2], out_types, **attrs) + n

    def shape(self, x, w, c, stride, padding, dilation, groups):
        out = super().shape(x, w, stride, padding, dilation, groups)
        same_dtype(self.name, out, c)
        if c.rank > out.rank or broadcast_shapes(out.shape, c.shape) != out.shape:
            raise ShapeError(f"`{self.name}`: {c} does not broadcast to the conv's output {out}")
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

"""The NumPy kernels of the convolutions (compiler/ops/nn.py, conv_grad.py): forward, input
gradient and weight gradient, rank-generic, each a formulation picked from shapes only.

Layout: the im2col matrix is [N, G, Cg*prod(k), prod(out)], so every kernel is one batched
GEMM (np.matmul broadcasting the weight over the batch) with no transposes of big operands:
the output [N, G, O/G, prod(out)] is already [N, O, *out]; the weight gradient sums the
per-example products over N, or is one GEMM over the whole batch (WGRAD_ONE_GEMM_COLUMNS).
Stride 1: the forward and the input gradient by rows (conv_rows_np, deconv_rows_np), the
input gradient's batch inside the GEMM when it has many rows (DECONV_BATCH_INSIDE_ROWS).
The thresholds are measured at LeNet-5's shapes (``python benchmarks/windows.py``).
"""
from __future__ import annotations

import math

import numpy as np

from . import gemm
from .windows import conv_out, fold, im2col, im2col_by_channel, pad_image, windows

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

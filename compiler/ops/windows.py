"""Sliding windows over k spatial axes: the one core of convolution and pooling.

No ops are registered here.  Every conv, transposed conv and pooling op of
every rank (``conv1d`` … ``max_pool3d``, their gradient primitives) is built on
these helpers, which never assume a rank:

- attribute arithmetic: ``ntuple`` (an int or a list as a k-tuple),
  ``resolve_pads`` (``"valid"``, ``"same"``, an int, a per-axis list or
  ``[[before, after], ...]`` as k (before, after) pairs), ``out_dim`` (the
  number of windows along an axis, floor or ceil, symbolic where exact) and
  ``ceil_extra`` (what ``ceil_mode`` adds after an axis);
- NumPy kernels: ``windows`` (a strided read-only view of every window —
  im2col without a copy), ``im2col`` (that view as one GEMM operand per
  example; in two copies when output rows are short, ``windows_in_two_steps``),
  ``im2col_by_channel`` (the same with the batch joined to the output positions),
  ``fold`` (col2im: window values summed back into the image),
  ``window_counts`` (the elements of each window inside given bounds).

Layout: images are ``[N, C, *spatial]``; a window view is
``[N, C, *kernel, *out]``, so a loop over kernel offsets (prod(kernel)
iterations, never per output position) sees whole ``[N, C, *out]`` slices.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dims import Sym, dim_str, floordiv
from ..types import AttrError, ShapeError

AXES = ("L",), ("H", "W"), ("D", "H", "W")  # axis names for messages, by rank


def axis_names(k: int) -> tuple[str, ...]:
    return AXES[k - 1] if k <= len(AXES) else tuple(f"S{i}" for i in range(k))


def _listed(value) -> str:
    """An attribute value as the user wrote it (`[0, 1, 0, 1]`, not a Python tuple)."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_listed(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def ntuple(op: str, key: str, value, k: int, low: int) -> tuple[int, ...]:
    """``value`` (an int, or a list of 1 or k ints) as a k-tuple, each >= ``low``."""
    seq = (value,) if _is_int(value) else value
    if not isinstance(seq, (tuple, list)) or len(seq) not in (1, k) or not all(map(_is_int, seq)):
        raise AttrError(f"`{key}` of `{op}` must be an integer or a list of {k} integers, got {_listed(value)}")
    out = tuple(int(v) for v in seq) * (k if len(seq) == 1 else 1)
    if min(out) < low:
        raise AttrError(f"`{key}` of `{op}` must be >= {low}, got {_listed(seq)}")
    return out


def resolve_pads(op: str, padding, k: int, kernel, dilation, stride) -> tuple[tuple[int, int], ...]:
    """k (before, after) pairs from ``padding``: ``"valid"`` (none), ``"same"``
    (the output keeps the input's size; stride 1 only, the odd element after,
    as ONNX ``SAME_UPPER``), an int, a list of k ints (both sides), or a list
    of k ``[before, after]`` pairs (asymmetric)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * k
        if padding == "same":
            if any(s != 1 for s in stride):
                raise AttrError(f"`{op}`: padding = \"same\" needs stride 1, got stride {list(stride)}; "
                                 "give the padding as numbers for a strided window")
            total = [d * (n - 1) for n, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise AttrError(f"`padding` of `{op}` must be \"same\", \"valid\", an integer or a list, got {padding!r}")
    if (isinstance(padding, (tuple, list)) and len(padding) == k
            and all(isinstance(p, (tuple, list)) for p in padding)):
        if not all(len(p) == 2 and all(map(_is_int, p)) and min(p) >= 0 for p in padding):
            raise AttrError(f"`padding` of `{op}` as pairs must be {k} lists [before, after] of integers >= 0, "
                            f"got {_listed(padding)}")
        return tuple((int(a), int(b)) for a, b in padding)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 * k and k > 1 and all(map(_is_int, padding)):
        raise AttrError(f"`padding` of `{op}`: a flat list of {2 * k} numbers ({_listed(padding)}) is ambiguous; "
                        f"write asymmetric padding as {k} pairs [[before, after], ...]")
    return tuple((p, p) for p in ntuple(op, "padding", padding, k, 0))


def out_dim(op: str, axis: str, n, k: int, s: int, pads: tuple[int, int], d: int, ceil: bool = False):
    """The number of windows along an axis of size ``n``:
    ⌊(n + before + after − d(k − 1) − 1) / s⌋ + 1 (⌈ ⌉ with ``ceil``, where,
    as PyTorch, a last window starting in the after-padding is dropped).
    A symbolic ``n`` gives a symbolic dim (a floor-division term when the
    stride does not divide it)."""
    span = n + pads[0] + pads[1] - d * (k - 1) - 1
    if not isinstance(span, Sym) and span < 0:
        raise ShapeError(f"`{op}`: the {axis} axis ({dim_str(n)}, padded by {list(pads)}) is smaller "
                         f"than the window ({k} taps, dilation {d})")
    if not ceil:
        return floordiv(span, s) + 1
    out = floordiv(span + s - 1, s) + 1
    if isinstance(out, Sym):
        if pads[1] - d * (k - 1) + s - 2 >= 0:  # the PyTorch correction may apply: it needs the size
            raise ShapeError(f"`{op}`: ceil_mode over the symbolic {axis} axis {dim_str(n)} with stride {s} "
                             "needs a fixed size (a last window could start in the padding)")
        return out
    return out - 1 if (out - 1) * s >= n + pads[0] else out



def conv_out(op: str, size, kernel, stride, pads, dilation, ceil: bool = False) -> tuple:
    """The spatial output size of a window op over ``size``."""
    return tuple(out_dim(op, axis, n, k, s, p, d, ceil) for axis, n, k, s, p, d
                 in zip(axis_names(len(size)), size, kernel, stride, pads, dilation))

def ceil_extra(n: int, k: int, s: int, pads: tuple[int, int], d: int, out: int) -> int:
    """The padding ``ceil_mode`` adds after an axis so that ``out`` windows fit."""
    return max(0, (out - 1) * s + d * (k - 1) + 1 - (n + pads[0] + pads[1]))


def pad_image(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    """``x`` with ``pads`` ((before, after) per spatial axis) of ``value``."""
    if not any(a or b for a, b in pads):
        return x
    out = np.full((*x.shape[:2], *(m + a + b for m, (a, b) in zip(x.shape[2:], pads))), value, x.dtype)
    out[(slice(None), slice(None), *(slice(a, a + m) for m, (a, _) in zip(x.shape[2:], pads)))] = x
    return out  # (np.pad does the same at twice the cost for LeNet's first conv)


def windows(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """The read-only view ``[N, C, *kernel, *out]`` of the windows of the (already
    padded) image ``xp``: element [n, c, *i, *y] is ``xp[n, c, *(y*s + i*d)]``."""
    lead, spatial = xp.strides[:2], xp.strides[2:]
    strides = (*lead, *(st * d for st, d in zip(spatial, dilation)), *(st * s for st, s in zip(spatial, stride)))
    return as_strided(xp, (*xp.shape[:2], *kernel, *out), strides, writeable=False)


# An output row shorter than this makes the one-copy im2col slow (NumPy's copy loop pays per
# contiguous run, and the view's runs are one output row): LeNet's second conv (rows of 10)
# copies 1.4x faster in two steps; its first (rows of 28) is faster in one.
SHORT_ROW = 16


def im2col(x: np.ndarray, kernel, stride, pads, dilation, groups: int, out) -> np.ndarray:
    """The windows of ``x`` as ``[N, G, Cg*prod(kernel), prod(out)]``: the strided view
    copied in its own order (no transposes), a batched GEMM operand.  Short output rows
    (more than one spatial axis): the same array in two copies (``windows_in_two_steps``)."""
    n, c = x.shape[:2]
    xp = pad_image(x, pads)
    if len(kernel) > 1 and out[-1] < SHORT_ROW:
        win = windows_in_two_steps(xp, kernel, stride, dilation, out)
    else:
        win = np.ascontiguousarray(windows(xp, kernel, stride, dilation, out))
    return win.reshape(n, groups, (c // groups) * math.prod(kernel), math.prod(out))


def im2col_by_channel(x: np.ndarray, kernel, stride, pads, dilation, groups: int, out) -> np.ndarray:
    """The windows of ``x`` as ``[G, Cg*prod(kernel), N*prod(out)]``: the batch joins the
    output positions, so a product over both is one GEMM per group (the weight
    gradient's reduction) rather than one per example.  Short output rows: in two
    copies, as ``im2col`` (LeNet's second conv: 0.41 -> 0.29 ms)."""
    n, c = x.shape[:2]
    k = len(kernel)
    xp = pad_image(x, pads)
    if k > 1 and out[-1] < SHORT_ROW:
        win = windows_in_two_steps(xp, kernel, stride, dilation, out, by_channel=True)
    else:
        win = windows(xp, kernel, stride, dilation, out)  # [N, C, *kernel, *out]
        win = np.ascontiguousarray(win.transpose(1, *range(2, 2 + k), 0, *range(2 + k, 2 + 2 * k)))
    return win.reshape(groups, (c // groups) * math.prod(kernel), n * math.prod(out))


def windows_in_two_steps(xp: np.ndarray, kernel, stride, dilation, out, by_channel: bool = False) -> np.ndarray:
    """``windows(xp, ...)`` copied to a C-contiguous ``[N, C, *kernel, *out]`` array (with
    ``by_channel``, ``[C, *kernel, N, *out]``) in two steps: the windows along the last
    axis (``[N, C, k_last, *padded[:-1], o_last]``, or ``[C, k_last, N, ...]``), then the
    windows of that over the other axes, whose contiguous runs span whole output rows
    (for 2-D the whole ``[o0, o1]`` block) instead of one."""
    k = len(kernel)
    (n, c), (sn, sc), spatial = xp.shape[:2], xp.strides[:2], xp.strides[2:]
    tap = spatial[-1] * dilation[-1]
    lead, lead_strides = ((c, kernel[-1], n), (sc, tap, sn)) if by_channel else ((n, c, kernel[-1]), (sn, sc, tap))
    rows = np.ascontiguousarray(as_strided(
        xp, (*lead, *xp.shape[2:-1], out[-1]), (*lead_strides, *spatial[:-1], spatial[-1] * stride[-1]),
        writeable=False))
    st = rows.strides  # [N, C, j, *Y, x] or [C, j, N, *Y, x]
    taps = tuple(st[3 + a] * dilation[a] for a in range(k - 1))
    steps = tuple(st[3 + a] * stride[a] for a in range(k - 1))
    if by_channel:
        view = as_strided(rows, (c, *kernel, n, *out), (st[0], *taps, st[1], st[2], *steps, st[-1]), writeable=False)
    else:
        view = as_strided(rows, (n, c, *kernel, *out), (st[0], st[1], *taps, st[2], *steps, st[-1]), writeable=False)
    return np.ascontiguousarray(view)


def offset_slices(kernel, stride, dilation, out):
    """(offset, index) for every kernel offset: ``xp[index]`` is the [N, C, *out]
    slice of the padded image that this offset of every window reads."""
    for offset in itertools.product(*(range(k) for k in kernel)):
        yield offset, (slice(None), slice(None),
                       *(slice(i * d, i * d + (o - 1) * s + 1, s)
                         for i, s, d, o in zip(offset, stride, dilation, out)))


def fold(cols, size, kernel, stride, pads, dilation, dtype) -> np.ndarray:
    """col2im, the transpose of ``windows``: sum ``cols[:, :, *offset]`` (an array
    ``[N, C, *kernel, *out]``, or one ``[N, C, *out]`` array for every offset)
    into an image of spatial ``size`` where the windows read; padding is cut off."""
    k = len(size)
    per_offset = cols.ndim == 2 + 2 * k
    n, c, out = cols.shape[0], cols.shape[1], cols.shape[cols.ndim - k:]
    image = np.zeros((n, c, *(m + a + b for m, (a, b) in zip(size, pads))), dtype=dtype)
    for offset, idx in offset_slices(kernel, stride, dilation, out):
        image[idx] += cols[(slice(None), slice(None), *offset)] if per_offset else cols
    return image[(slice(None), slice(None), *(slice(a, a + m) for m, (a, _) in zip(size, pads)))]


def window_counts(kernel, stride, dilation, out, lo, hi, dtype) -> np.ndarray:
    """``[*out]``: how many taps of each window fall in [lo, hi) per axis, with
    positions counted in the padded image."""
    per_axis = []
    for k, s, d, o, a, b in zip(kernel, stride, dilation, out, lo, hi):
        taps = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d
        per_axis.append(((taps >= a) & (taps < b)).sum(axis=1))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return counts.astype(dtype)

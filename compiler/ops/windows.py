"""Sliding-window helpers shared by the nn family (conv, conv grads, pooling).

No ops are registered here.  Two halves:

- attribute and shape arithmetic: ``pair`` (an int or a 1-/2-list as (h, w)),
  ``out_dim`` (the size of a window axis, exact for symbolic dims where
  possible);
- NumPy kernels: ``windows`` (a strided, read-only view of every window:
  im2col without a copy), ``fold`` (its transpose, col2im: sums window values
  back into the image), ``window_counts`` (real, unpadded elements per
  window).

Layout: images are ``[N, C, H, W]``; a window view is
``[N, C, kh, kw, Ho, Wo]`` so a loop over the kernel offsets (``kh * kw``
iterations, never per pixel) sees whole ``[N, C, Ho, Wo]`` slices.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dims import Sym, dim_str
from ..types import AttrError, ShapeError


def _listed(value) -> str:
    """An attribute value as the user wrote it (`[0, 1, 0, 1]`, not a Python tuple)."""
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (tuple, list)) else repr(value)


def pair(op: str, key: str, value, low: int) -> tuple[int, int]:
    """``value`` (an int, or a list of 1 or 2 ints) as (h, w), each >= ``low``."""
    seq = (value,) if isinstance(value, (int, np.integer)) else value
    if (not isinstance(seq, (tuple, list)) or len(seq) not in (1, 2)
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seq)):
        raise AttrError(f"`{key}` of `{op}` must be an integer or a list of 2 integers, got {_listed(value)}")
    h, w = (int(seq[0]), int(seq[-1]))
    if h < low or w < low:
        raise AttrError(f"`{key}` of `{op}` must be >= {low}, got {list(seq)}")
    return h, w


def out_dim(op: str, axis: str, n, k: int, s: int, p: int, d: int):
    """floor((n + 2p - d(k - 1) - 1) / s) + 1: the number of windows along an axis.

    A symbolic ``n`` works when the floor is exact symbolically: every
    non-constant coefficient of the numerator divisible by ``s`` (always so
    for stride 1), which makes floor((a*H + c)/s) = (a/s)*H + floor(c/s)."""
    span = n + 2 * p - d * (k - 1) - 1
    if not isinstance(span, Sym):
        if span < 0:
            raise ShapeError(f"`{op}`: the {axis} axis ({dim_str(n)}, padded by {p} on each side) is smaller "
                             f"than the window ({k} taps, dilation {d})")
        return span // s + 1
    const = span.terms.get((), Fraction(0))
    rest = span - int(const) if const.denominator == 1 else None
    q = rest / s if rest is not None else None
    if not isinstance(q, Sym) or any(c.denominator != 1 for c in q.terms.values()):
        raise ShapeError(f"`{op}` cannot size the symbolic {axis} axis {dim_str(n)} with stride {s}: "
                         f"({dim_str(span)}) / {s} is not a whole number for every {dim_str(n)}; "
                         "give that axis a fixed size")
    return q + (int(const) // s + 1)


def pad_image(x: np.ndarray, padding: tuple[int, int], value=0.0) -> np.ndarray:
    """``x`` with ``padding`` rows/columns of ``value`` on both sides of H and W."""
    ph, pw = padding
    if not ph and not pw:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def windows(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """The read-only view ``[N, C, kh, kw, Ho, Wo]`` of the windows of the
    (already padded) image ``xp``: element [n, c, i, j, y, x] is
    ``xp[n, c, y*sh + i*dh, x*sw + j*dw]``."""
    n, c = xp.shape[:2]
    s_n, s_c, s_h, s_w = xp.strides
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out
    return as_strided(xp, (n, c, kh, kw, ho, wo), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw),
                      writeable=False)


def offset_slices(kernel, stride, dilation, out):
    """((i, j), index) for every kernel offset: ``xp[index]`` is the [N, C, Ho, Wo]
    slice of the padded image that offset (i, j) of every window reads."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out
    for i in range(kh):
        for j in range(kw):
            yield (i, j), (slice(None), slice(None), slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
                           slice(j * dw, j * dw + (wo - 1) * sw + 1, sw))


def fold(cols, size, kernel, stride, padding, dilation, dtype) -> np.ndarray:
    """col2im, the transpose of ``windows``: sum ``cols(i, j)`` (a [N, C, Ho, Wo]
    array per kernel offset, or one array used for every offset) into an image
    of spatial ``size`` at the positions those windows read; padding is cut off."""
    first = cols(0, 0) if callable(cols) else cols
    n, c, ho, wo = first.shape
    (h, w), (ph, pw) = size, padding
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
    for (i, j), idx in offset_slices(kernel, stride, dilation, (ho, wo)):
        out[idx] += cols(i, j) if callable(cols) else cols
    return out[:, :, ph:ph + h, pw:pw + w]


def window_counts(size, kernel, stride, padding, dtype) -> np.ndarray:
    """[Ho, Wo]: how many real (unpadded) elements each pooling window covers."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, padding
    rows = np.array([min(y * sh - ph + kh, h) - max(y * sh - ph, 0)
                     for y in range((h + 2 * ph - kh) // sh + 1)])
    cols = np.array([min(x * sw - pw + kw, w) - max(x * sw - pw, 0)
                     for x in range((w + 2 * pw - kw) // sw + 1)])
    return np.multiply.outer(rows, cols).astype(dtype)

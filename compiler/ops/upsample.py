"""Upsampling (registered by ``nn.py``'s import): ``upsample_nearest`` (a
primitive: each element repeated into a block) and ``upsample`` (a composite:
nearest or bilinear resizing of the two spatial axes).
"""
from __future__ import annotations

import numpy as np

from ..types import ShapeError
from .nn import RANKS, check_image
from .registry import Arg, Attr, Composite, Op, Sample, register
from .windows import ntuple


@register
class UpsampleNearest(Op):
    """``upsample_nearest(x[N, C, *S], scale)`` → ``[N, C, *(S * scale)]`` for 1, 2 or 3
    spatial axes: each element repeated into a block (integer ``scale``, an int or
    one per axis); the gradient sums each block."""

    name, family = "upsample_nearest", "nn"
    attrs = {"scale": Attr("ints", doc="int or one per spatial axis")}
    samples = [Sample((Arg((2, 3, 2, 3)),), {"scale": 2}), Sample((Arg((1, 2, 3, 2)),), {"scale": (2, 3)}),
               Sample((Arg((1, 1, 2, 2)),), {"scale": 1}, note="identity"),
               Sample((Arg((2, 2, 3)),), {"scale": 3}, note="1-D"),
               Sample((Arg((1, 2, 2, 1, 3)),), {"scale": (1, 2, 2)}, note="3-D")]

    def _scale(self, rank: int, scale) -> tuple[int, ...]:
        if rank - 2 not in RANKS:
            raise ShapeError(f"`{self.name}` needs x of rank 3, 4 or 5 ([N, C, *spatial]), got rank {rank}")
        return ntuple(self.name, "scale", scale, rank - 2, 1)

    def shape(self, x, scale):
        s = self._scale(x.rank, scale)
        check_image(self.name, "x", x, len(s))
        return x.with_shape((*x.shape[:2], *(n * k for n, k in zip(x.shape[2:], s))))

    @staticmethod
    def _blocks(shape, s) -> tuple:
        """[N, C, n0, s0, n1, s1, ...]: every spatial axis followed by its repeat."""
        return (*shape[:2], *(v for n, k in zip(shape[2:], s) for v in (n, k)))

    def kernel(self, x, scale):
        s = self._scale(x.ndim, scale)
        spread = x.reshape(*x.shape[:2], *(v for n in x.shape[2:] for v in (n, 1)))
        return np.broadcast_to(spread, self._blocks(x.shape, s)).reshape(
            *x.shape[:2], *(n * k for n, k in zip(x.shape[2:], s)))

    def grad(self, b, inputs, outputs, cts, scale):
        shape = b.type(inputs[0]).shape
        s = self._scale(len(shape), scale)
        return [b.sum(b.reshape(cts[0], shape=self._blocks(shape, s)), axes=tuple(range(3, 3 + 2 * len(s), 2)))]

    def onnx(self, e, ins, outs, scale):
        s = self._scale(e.in_types[0].rank, scale)
        # asymmetric + floor: output element y reads input floor(y / s), an exact repeat for integer scales
        e.node("Resize", [ins[0], "", e.const(np.array([1, 1, *s], dtype=np.float32))], outs, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def linear_weights(n: int, m: int) -> np.ndarray:
    """``[m, n]``: the bilinear resampling of an axis of ``n`` to ``m`` samples, as
    PyTorch's ``align_corners=False`` (ONNX Resize ``pytorch_half_pixel``): output
    i reads input position (i + 0.5) n / m − 0.5, clamped at the edges."""
    pos = np.maximum((np.arange(m) + 0.5) * n / m - 0.5, 0.0) if m > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    w = np.zeros((m, n))
    np.add.at(w, (np.arange(m), lo), 1.0 - frac)
    np.add.at(w, (np.arange(m), hi), frac)
    return w


def nearest_index(n: int, m: int) -> np.ndarray:
    """``[m]``: the input element output i of a nearest resampling reads, ⌊i n / m⌋."""
    return (np.arange(m) * n) // m


@register
class Upsample(Composite):
    """``upsample(x[N, C, H, W], scale=None, size=None, mode="nearest")``: resize the
    two spatial axes by an integer ``scale`` (an int or ``[sh, sw]``) or to
    ``size = [H', W']``.  ``"nearest"`` with a scale is ``upsample_nearest`` (any
    image size, and 1 or 3 spatial axes too); with a size it picks row ⌊i H / H'⌋.  ``"bilinear"`` interpolates as
    PyTorch's ``align_corners = false``: a product with constant ``[H', H]`` and
    ``[W, W']`` matrices (so H and W must be fixed), whose gradient is the
    transposed products."""

    name, family = "upsample", "nn"
    attrs = {"scale": Attr("ints", None, doc="int or [sh, sw]"), "size": Attr("shape", None, doc="[H', W']"),
             "mode": Attr("str", "nearest", choices=("nearest", "bilinear"))}
    samples = [Sample((Arg((2, 3, 2, 3)),), {"scale": 2}),
               Sample((Arg((1, 2, 3, 4)),), {"size": (5, 7)}, note="nearest to a size"),
               Sample((Arg((2, 2, 3, 4)),), {"scale": 2, "mode": "bilinear"}),
               Sample((Arg((1, 2, 4, 5)),), {"size": (6, 3), "mode": "bilinear"}, note="up and down")]

    def expand(self, b, x, scale, size, mode):
        t = b.type(x)
        if (scale is None) == (size is None):
            raise ShapeError("`upsample` takes exactly one of `scale` and `size`")
        if mode == "nearest" and scale is not None:  # any spatial rank
            return b.upsample_nearest(x, scale=scale)
        if t.rank != 4:
            raise ShapeError(f"`upsample` with a size or mode = \"bilinear\" needs x of rank 4 ([N, C, H, W]), "
                             f"got {t}")
        h, w = t.shape[2:]
        if not isinstance(h, int) or not isinstance(w, int):
            raise ShapeError(f"`upsample` with mode = \"{mode}\"{' to a size' if size else ''} needs a fixed "
                             f"H and W, got {t}; use a scale with mode = \"nearest\" for any size")
        if size is None:
            sh, sw = ntuple(self.name, "scale", scale, 2, 1)
            size = (h * sh, w * sw)
        if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
            raise ShapeError(f"`size` of `upsample` must be 2 positive integers, got {list(size)}")
        ho, wo = size
        if mode == "nearest":
            rows = b.gather(x, b.const(nearest_index(h, ho)), axis=2)
            return b.gather(rows, b.const(nearest_index(w, wo)), axis=3)
        rows = b.matmul(b.const(linear_weights(h, ho), t.dtype), x)          # [N, C, H', W]
        return b.matmul(rows, b.const(linear_weights(w, wo).T, t.dtype))     # [N, C, H', W']

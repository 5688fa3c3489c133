"""Tensor types: a dtype and a shape of dims (ints or symbolic).

Broadcasting follows NumPy; a symbolic dim broadcasts only against 1 or an
equal dim (dlc never guesses that a symbol is 1).  Type errors are raised as
:class:`ShapeError` with a plain message; the builder attaches the source
span and layer path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dims import Dim, Shape, dim_str, shape_str

DTYPES = {
    "f16": np.float16,
    "f32": np.float32,
    "f64": np.float64,
    "i32": np.int32,
    "i64": np.int64,
    "bool": np.bool_,
}
FLOATS = ("f16", "f32", "f64")
INTS = ("i32", "i64")


class ShapeError(Exception):
    """A type rule failed; the message names the offending dims."""


class AttrError(ShapeError):
    """A shape rule found an attribute of the wrong form (``padding = [0, 1, 0, 1]``):
    a wrong argument (E0102), not a shape mismatch (E0104)."""


def np_dtype(dtype: str) -> np.dtype:
    return np.dtype(DTYPES[dtype])


def dtype_name(dt) -> str:
    dt = np.dtype(dt)
    for name, t in DTYPES.items():
        if np.dtype(t) == dt:
            return name
    raise ShapeError(f"unsupported dtype {dt}")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{shape_str(self.shape)}"


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting over dims; raises ShapeError naming both dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(-rank, 0):
        dims = [s[i] for s in shapes if len(s) >= -i]
        result: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if result == 1:
                result = d
            elif d != result:
                raise ShapeError(
                    f"cannot broadcast {' and '.join(shape_str(s) for s in shapes)}: "
                    f"dims {dim_str(result)} and {dim_str(d)} differ"
                )
        out.append(result)
    return tuple(out)


def same_dtype(op: str, *types: TensorType) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(
            f"`{op}` needs operands of one dtype, got {', '.join(str(t) for t in types)}; "
            "use cast(x, f32) to convert"
        )
    return dtypes.pop()



def check_addend(op: str, out: "TensorType", c: "TensorType", what: str) -> None:
    """``c``, which a fused op adds onto its result ``out`` (``what`` names it in the error),
    must have ``out``'s dtype and broadcast to it without enlarging it."""
    same_dtype(op, out, c)
    if c.rank > out.rank or broadcast_shapes(out.shape, c.shape) != out.shape:
        raise ShapeError(f"`{op}`: {c} does not broadcast to {what} {out}")

def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


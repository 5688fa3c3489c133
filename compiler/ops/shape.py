"""Shape ops: reshape, flatten, transpose, concat, split, stack, and the
helpers the whole family shares.

``squeeze``, ``unsqueeze`` and ``broadcast_to`` live in ``axis_ops.py``; indexing
ops (slice, pad, gather, embedding) in ``indexing.py``; the
constant makers (fill, zeros, ones, zeros_like, one_hot) in ``constructors.py``;
all are registered by the import at the bottom of this module.

Kernels that only rearrange (reshape, transpose, split, squeeze, unsqueeze,
broadcast_to) return NumPy *views* of their input: kernels never write into
their inputs, so sharing memory is safe and saves a copy per op.  A memory
planner that reuses buffers (``out=``) must treat these outputs as aliases of
their input; ``broadcast_to``'s view is read-only.

Symbolic dims: shape attrs may hold ``Sym``s; kernels receive them resolved to
ints, ONNX lowerings pass them through ``e.shape_tensor``.
"""
from __future__ import annotations

import functools

from fractions import Fraction

import numpy as np

from ..dims import Sym, dim_str, shape_str
from ..types import ShapeError, TensorType, norm_axis, same_dtype
from .registry import Arg, Attr, Composite, Op, Sample, register

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


# -- helpers shared with indexing.py -------------------------------------------
def prod_dims(dims) -> "int | Sym":
    """Product of dims (Python ints / Syms; never overflows)."""
    p = 1
    for d in dims:
        p = d * p
    return p


def is_dim(d) -> bool:
    return isinstance(d, Sym) or (isinstance(d, (int, np.integer)) and not isinstance(d, bool))


def check_shape(op: str, shape, allow_infer: bool = False) -> tuple:
    """Validate a shape attr: non-negative ints or Syms (and -1 when ``allow_infer``)."""
    out = []
    for d in shape:
        if not is_dim(d) or (not isinstance(d, Sym) and d < (-1 if allow_infer else 0)):
            raise ShapeError(f"`{op}` got the invalid dim {d!r} in {list(shape)}")
        out.append(d if isinstance(d, Sym) else int(d))
    return tuple(out)


def norm_axes(op: str, axes, rank: int) -> tuple[int, ...]:
    """Normalise an int or a sequence of ints to sorted distinct axes in [0, rank)."""
    seq = (axes,) if isinstance(axes, (int, np.integer)) else axes
    if not isinstance(seq, (tuple, list)) or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                                      for a in seq):
        raise ShapeError(f"`{op}` needs axes as a list of integers, got {axes!r}")
    out = sorted(norm_axis(int(a), rank) for a in seq)
    if len(set(out)) != len(out):
        raise ShapeError(f"`{op}` got a repeated axis in {list(seq)}")
    return tuple(out)


def i64(e, values) -> str:
    """A 1-D int64 ONNX tensor of ``values``: a constant, or computed when a Sym is among them."""
    values = tuple(values)
    if any(isinstance(v, Sym) for v in values):
        return e.shape_tensor(values)
    return e.const(np.asarray(values, dtype=np.int64).reshape(len(values)))


def div_exact(total, known):
    """``total / known`` as a dim, or None when it is not a whole dim.

    Division by an int may leave a rational coefficient (``D/4``), which dims
    allow; division by a Sym must be an exact monomial division."""
    if known == 0:
        return None
    if not isinstance(known, Sym):
        if isinstance(total, Sym):
            return total / known
        return total // known if total % known == 0 else None
    if total == known:
        return 1
    if len(known.terms) != 1 or not isinstance(total, Sym):
        return None
    ((mono, coeff),) = known.terms.items()
    result = 0
    for m, c in total.terms.items():
        powers = dict(m)
        for name, p in mono:
            if powers.get(name, 0) < p:
                return None
            powers[name] -= p
        term = Fraction(c) / coeff
        for name, p in powers.items():
            for _ in range(p):
                term = Sym.var(name) * term
        result = term + result
    if isinstance(result, Fraction):
        return int(result) if result.denominator == 1 else None
    return None if isinstance(result, Sym) and result.is_fractional_constant() else result


def _copy_or_dim(out_shape, in_shape, infer: int | None):
    """The ONNX Reshape target for ``out_shape`` and its ``allowzero``: literal ints, ``-1``
    at the inferred position, ``0`` (copy) where a symbolic dim equals the input's at the
    same index, and the remaining Syms (computed by ``e.shape_tensor``).

    A symbolic dim may be 0 at run time (an empty batch, T = 0), and Reshape reads a 0 in
    its target as "copy the input's dim" unless ``allowzero=1`` (which turns copying off),
    and cannot infer a ``-1`` beside a 0.  So copies are used only where every symbolic dim
    is one, a single symbolic dim becomes ``-1`` only beside nonzero literal ints, and any
    other target is computed in full with ``allowzero=1`` (a -1 is then only the spec's)."""
    allowzero = any(d == 0 for i, d in enumerate(out_shape) if i != infer)
    target = [-1 if i == infer else d for i, d in enumerate(out_shape)]
    syms = [i for i, d in enumerate(target) if isinstance(d, Sym)]
    if not syms:
        return target, allowzero
    if infer is None and len(syms) == 1 and not allowzero:
        target[syms[0]] = -1  # one unknown dim beside nonzero ints: let Reshape infer it
        return target, False
    if not allowzero and all(i < len(in_shape) and in_shape[i] == target[i] for i in syms):
        return [0 if i in syms else d for i, d in enumerate(target)], False
    return target, True


@register
class Reshape(Op):
    """``reshape(x, shape)``: same elements, new shape; one dim may be -1 (inferred)."""

    name, family = "reshape", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"shape": Attr("shape")}
    samples = [Sample((Arg((2, 3, 4)),), {"shape": (6, 4)}),
               Sample((Arg((2, 3, 4)),), {"shape": (4, -1, 2)}, note="-1 inferred"),
               Sample((Arg((6,)),), {"shape": (1, 6, 1)}, note="size-1 dims"),
               Sample((Arg((1,)),), {"shape": ()}, note="to scalar"),
               Sample((Arg(()),), {"shape": (-1,)}, note="from scalar")]

    def shape(self, x, shape):
        shape = check_shape("reshape", shape, allow_infer=True)
        holes = [i for i, d in enumerate(shape) if d == -1]
        if len(holes) > 1:
            raise ShapeError(f"reshape target {shape_str(shape)} has more than one -1")
        if holes and 0 in shape:
            raise ShapeError(f"reshape target {shape_str(shape)} has a 0 dim, so the -1 cannot be inferred")
        # cancel dims common to both sides first, so (T - 1) on both needs no polynomial division
        rest_in, rest_out = list(x.shape), []
        for d in shape:
            if d in rest_in and d != 0:  # (a 0 is no common factor: [2, 0] -> [0, 5] is fine)
                rest_in.remove(d)
            elif d != -1:
                rest_out.append(d)
        total, known = prod_dims(rest_in), prod_dims(rest_out)
        inferred = div_exact(total, known) if holes else None
        if holes and inferred is None or not holes and total != known:
            n_in, n_out = prod_dims(x.shape), prod_dims(d for d in shape if d != -1)
            why = (f"{dim_str(n_in)} is not a multiple of {dim_str(n_out)}; give the shape explicitly" if holes
                   else f"{dim_str(n_out)} elements")
            raise ShapeError(f"cannot reshape {shape_str(x.shape)} ({dim_str(n_in)} elements) into "
                             f"{shape_str(shape)}: {why}")
        if holes:
            shape = shape[:holes[0]] + (inferred,) + shape[holes[0] + 1:]
        return x.with_shape(shape)

    def kernel(self, x, shape):
        return np.reshape(x, shape)

    def grad(self, b, inputs, outputs, cts, shape):
        return [b.reshape(cts[0], shape=b.type(inputs[0]).shape)]

    def onnx(self, e, ins, outs, shape):
        infer = next((i for i, d in enumerate(shape) if d == -1), None)
        target, allowzero = _copy_or_dim(e.out_types[0].shape, e.in_types[0].shape, infer)
        e.node("Reshape", [ins[0], i64(e, target)], outs, **({"allowzero": 1} if allowzero else {}))


@register
class Flatten(Composite):
    """``flatten(x, axis=1)``: keep the dims before ``axis``, merge the rest into one."""

    name, family = "flatten", "shape"
    free = True  # dlc summary: 0 FLOPs
    attrs = {"axis": Attr("int", 1)}
    samples = [Sample((Arg((2, 3, 4)),)), Sample((Arg((2, 3, 4)),), {"axis": -1}),
               Sample((Arg((2, 3)),), {"axis": 0}), Sample((Arg((2, 3)),), {"axis": 2}, note="trailing 1")]

    def expand(self, b, x, axis):
        shape = b.type(x).shape
        if not 0 <= axis <= len(shape):
            axis = norm_axis(axis, len(shape))
        return b.reshape(x, shape=shape[:axis] + (prod_dims(shape[axis:]),))


def _perm(perm, rank: int) -> tuple[int, ...]:
    if perm is None:
        return tuple(reversed(range(rank)))
    if not isinstance(perm, (tuple, list)) or len(perm) != rank:
        raise ShapeError(f"`transpose` needs a permutation of {rank} axes, got {perm!r}")
    out = tuple(norm_axes("transpose", (a,), rank)[0] for a in perm)
    if sorted(out) != list(range(rank)):
        raise ShapeError(f"{list(perm)} is not a permutation of the axes 0..{rank - 1}")
    return out


@register
class Transpose(Op):
    """``transpose(x, perm=None)``: permute axes; None reverses them."""

    name, family = "transpose", "shape"
    free, moves_values = True, True  # dlc summary: 0 FLOPs; index bounds pass through
    attrs = {"perm": Attr("any", None, doc="permutation of the axes; None reverses them")}
    samples = [Sample((Arg((2, 3)),)), Sample((Arg((2, 3, 4)),), {"perm": (1, 0, 2)}),
               Sample((Arg((2, 3, 4)),), {"perm": (-1, 0, 1)}), Sample((Arg((5,)),))]

    def shape(self, x, perm):
        return x.with_shape(tuple(x.shape[a] for a in _perm(perm, x.rank)))

    def kernel(self, x, perm):
        # the shape rule validated perm; np.transpose reads None and negative axes alike (and
        # checks again), without _perm's Python-level checks: a view in 0.4 µs, not 7 µs
        return np.transpose(x, perm)

    def grad(self, b, inputs, outputs, cts, perm):
        p = _perm(perm, b.type(inputs[0]).rank)
        return [b.transpose(cts[0], perm=tuple(int(i) for i in np.argsort(p)))]

    def onnx(self, e, ins, outs, perm):
        e.node("Transpose", ins, outs, perm=list(_perm(perm, e.in_types[0].rank)))


@register
class Concat(Op):
    """``concat(*xs, axis=0)``: join along ``axis``; the other dims must match."""

    name, family = "concat", "shape"
    free = True  # dlc summary: 0 FLOPs
    inputs = ("*xs",)
    attrs = {"axis": Attr("int", 0)}
    samples = [Sample((Arg((2, 3)), Arg((4, 3)))), Sample((Arg((2, 1)), Arg((2, 3)), Arg((2, 2))), {"axis": -1}),
               Sample((Arg((3,)),), note="one input"), Sample((Arg((2, 0)), Arg((2, 3))), {"axis": 1}, note="empty")]

    def shape(self, *xs, axis):
        if not xs:
            raise ShapeError("`concat` needs at least one tensor")
        dtype = same_dtype("concat", *xs)
        first = xs[0]
        if first.rank == 0:
            raise ShapeError("`concat` cannot join scalars; use stack")
        ax = norm_axis(axis, first.rank)
        for t in xs[1:]:
            if t.rank != first.rank or t.shape[:ax] + t.shape[ax + 1:] != first.shape[:ax] + first.shape[ax + 1:]:
                raise ShapeError(f"`concat` along axis {axis}: {shape_str(first.shape)} and {shape_str(t.shape)} "
                                 "differ in another dim")
        size = 0
        for t in xs:
            size = t.shape[ax] + size
        return TensorType(dtype, first.shape[:ax] + (size,) + first.shape[ax + 1:])

    def kernel(self, *xs, axis):
        return np.concatenate(xs, axis=axis)

    def grad(self, b, inputs, outputs, cts, axis):
        ax = norm_axis(axis, b.type(inputs[0]).rank)
        sizes = tuple(b.type(v).shape[ax] for v in inputs)
        return list(b.split(cts[0], parts=sizes, axis=ax))

    def onnx(self, e, ins, outs, axis):
        e.node("Concat", ins, outs, axis=norm_axis(axis, e.in_types[0].rank))


def _split_sizes(d, parts, axis) -> tuple:
    """The sizes ``split`` cuts dim ``d`` into (validated)."""
    if isinstance(parts, (int, np.integer)) and not isinstance(parts, bool):
        if parts < 1:
            raise ShapeError(f"`split` needs a positive number of parts, got {parts}")
        size = div_exact(d, int(parts))
        if size is None:
            raise ShapeError(f"`split` cannot cut dim {dim_str(d)} (axis {axis}) into {parts} equal parts")
        return (size,) * int(parts)
    if not isinstance(parts, (tuple, list)) or not parts:
        raise ShapeError(f"`split` needs a number of parts or a list of sizes, got {parts!r}")
    sizes = check_shape("split", parts)
    if sum(sizes, 0) != d:
        raise ShapeError(f"`split` sizes {list(sizes)} add up to {dim_str(sum(sizes, 0))}, "
                         f"but dim {axis} is {dim_str(d)}")
    return sizes


@functools.lru_cache(maxsize=256)
def _split_index(ndim: int, dim: int, parts, axis: int) -> tuple:
    """The basic-slicing index of each piece of a ``split`` of a rank-``ndim`` array whose
    split axis has ``dim`` entries."""
    ax = norm_axis(axis, ndim)
    if isinstance(parts, int):
        if dim % parts:
            raise ValueError(f"split: dim {dim} is not divisible into {parts} equal parts")
        sizes = (dim // parts,) * parts
    else:
        sizes = parts
    lead = (slice(None),) * ax
    index, start = [], 0
    for size in sizes:
        index.append(lead + (slice(start, start + int(size)),))
        start += int(size)
    return tuple(index)


@register
class Split(Op):
    """``split(x, parts, axis=0)``: ``parts`` equal pieces, or pieces of the listed sizes."""

    name, family = "split", "shape"
    free = True  # dlc summary: 0 FLOPs
    outputs = None
    attrs = {"parts": Attr("any", doc="number of equal parts, or a list of sizes"), "axis": Attr("int", 0)}
    samples = [Sample((Arg((4, 3)),), {"parts": 2}), Sample((Arg((2, 6)),), {"parts": 3, "axis": -1}),
               Sample((Arg((5, 2)),), {"parts": (1, 0, 4)}, note="sizes with an empty piece"),
               Sample((Arg((3, 2)),), {"parts": 1}, note="one piece")]

    def shape(self, x, parts, axis):
        if x.rank == 0:
            raise ShapeError("`split` cannot split a scalar")
        ax = norm_axis(axis, x.rank)
        return tuple(x.with_shape(x.shape[:ax] + (s,) + x.shape[ax + 1:])
                     for s in _split_sizes(x.shape[ax], parts, axis))

    def kernel(self, x, parts, axis):
        # basic slices, views like np.split's at a fraction of its cost; the index tuples are
        # worked out once per (rank, dim, parts, axis): a scan body splits every step
        key = int(parts) if isinstance(parts, (int, np.integer)) else tuple(int(p) for p in parts)
        index = _split_index(x.ndim, x.shape[norm_axis(axis, x.ndim)], key, axis)
        pieces = [x[i] for i in index]
        # one piece is returned bare: the interpreter wraps single-output results itself
        return pieces[0] if len(pieces) == 1 else tuple(pieces)

    def grad(self, b, inputs, outputs, cts, parts, axis):
        filled = [ct if ct is not None else b.zeros(shape=b.type(v).shape, dtype=b.type(v).dtype)
                  for v, ct in zip(outputs, cts)]
        return [b.concat(*filled, axis=axis)]

    def onnx(self, e, ins, outs, parts, axis):
        ax = norm_axis(axis, e.in_types[0].rank)
        if isinstance(parts, (int, np.integer)):
            e.node("Split", ins, outs, axis=ax, num_outputs=int(parts))
        else:
            e.node("Split", [ins[0], i64(e, parts)], outs, axis=ax)


@register
class Stack(Op):
    """``stack(*xs, axis=0)``: join equal-shaped tensors along a new axis."""

    name, family = "stack", "shape"
    free = True  # dlc summary: 0 FLOPs
    inputs = ("*xs",)
    attrs = {"axis": Attr("int", 0)}
    samples = [Sample((Arg((2, 3)), Arg((2, 3)))), Sample((Arg((2, 3)), Arg((2, 3)), Arg((2, 3))), {"axis": -1}),
               Sample((Arg(()), Arg(())), note="scalars"), Sample((Arg((4,)),), {"axis": 1})]

    def shape(self, *xs, axis):
        if not xs:
            raise ShapeError("`stack` needs at least one tensor")
        dtype = same_dtype("stack", *xs)
        for t in xs[1:]:
            if t.shape != xs[0].shape:
                raise ShapeError(f"`stack` needs equal shapes, got {shape_str(xs[0].shape)} and {shape_str(t.shape)}")
        ax = norm_axis(axis, xs[0].rank + 1)
        return TensorType(dtype, xs[0].shape[:ax] + (len(xs),) + xs[0].shape[ax:])

    def kernel(self, *xs, axis):
        return np.stack(xs, axis=axis)

    def grad(self, b, inputs, outputs, cts, axis):
        ax = norm_axis(axis, b.type(inputs[0]).rank + 1)
        pieces = b.split(cts[0], parts=len(inputs), axis=ax)
        return [b.squeeze(p, axes=(ax,)) for p in pieces]

    def onnx(self, e, ins, outs, axis):
        ax = norm_axis(axis, e.in_types[0].rank + 1)
        axes = i64(e, (ax,))
        e.node("Concat", [e.node("Unsqueeze", [x, axes], 1)[0] for x in ins], outs, axis=ax)


from . import axis_ops, constructors, indexing, positional  # noqa: E402,F401  (register the rest of the family)

"""``scan``: the cell is lowered once into a body graph; its params live in the main
graph and enter the body as captured inputs, so every step shares them.  ``steps N``
and ``lengths L`` scan a step index the cell does not see; a cell that draws random
numbers gets a fresh key each step (``_per_step_randomness``).
"""
from __future__ import annotations

import numpy as np

from dlc.grammar import ast as A

from ..builder import Builder
from ..dims import Sym, shape_str
from ..graph import RNG_INPUT, Graph, Value
from ..ops.random import P as HASH_PRIME
from ..types import TensorType, norm_axis
from .expr import evaluate
from .frame import Frame, LayerRef, describe, is_tensor
from .layers import call_layer


def scan(frame: Frame, e: A.Scan):
    """``scan cell over xs axis k init (c0, ...) lengths L [reverse]`` (or ``steps N``
    instead of ``over xs``) → (the stacked per-step outputs..., the final carries...)."""
    cell = frame.lookup(e.callee.id, e.callee.loc)
    if not isinstance(cell, LayerRef):
        raise frame.error("E0103", f"`scan` needs a layer, `{e.callee.id}` is {describe(cell)}", e.callee.loc)
    inits = [evaluate(i, frame) for i in e.init]
    kwargs = {k.name: evaluate(k.value, frame) for k in e.kwargs}
    axis = evaluate(e.axis, frame) if e.axis is not None else 1
    if e.steps is not None:
        seqs, seq_types, axes = [], [], [axis]
        length = _step_count(frame, e)
        if not isinstance(axis, int) or axis < 0:
            raise frame.error("E0104", f"`steps` needs a non-negative axis, got {axis!r}", e.loc)
    else:
        over = evaluate(e.over, frame)
        seqs = list(over) if isinstance(over, tuple) else [over]
        seq_types, axes, length = _sequences(frame, e, seqs, axis)
    for v, src in list(zip(inits, e.init)):
        if not is_tensor(v):
            raise frame.error("E0103", f"`scan` needs tensors, got {describe(v)}", src.loc)
    lengths = _lengths(frame, e, inits) if e.lengths is not None else None
    _check_cell_arity(frame, cell, e, len(seqs), len(inits), kwargs)
    scope = frame.call_scope()
    body = Graph(cell.defn.name)
    bb = Builder(body, scope=scope, mode=frame.ctx.mode)
    carry_vals = [_body_input(body, f"carry_in{i}", frame.builder.type(c)) for i, c in enumerate(inits)]
    seq_vals = [_body_input(body, f"seq{i}", t.with_shape(t.shape[:a] + t.shape[a + 1:]))
                for i, (t, a) in enumerate(zip(seq_types, axes))]
    # `steps` and `lengths` scan a step index the cell does not see: [1, ..., T] with T at the axis
    step_seq = step_val = None
    if e.steps is not None or lengths is not None:
        index_shape = (1,) * axes[0] + (length,)
        with frame.builder.at(loc=e.loc, context=frame.context or None):
            step_seq = frame.builder.reshape(frame.builder.arange(start=length), shape=index_shape)
        step_val = _body_input(body, "step", TensorType("i64", (1,) * axes[0]))
    captured: dict = {}  # a value of the scan's graph → the body input standing for it

    def to_body(v: Value) -> Value:
        if v not in captured:
            captured[v] = _body_input(body, f"cap{len(captured)}", frame.builder.type(v))
        return captured[v]

    # params live in the main graph: each reaches the body through every enclosing capture
    kwargs = {k: to_body(v) if is_tensor(v) else v for k, v in kwargs.items()}
    body.salt_counter = frame.builder.graph.salt_counter  # random ops in the cell get salts of their own
    out = call_layer(frame, cell, seq_vals + carry_vals, kwargs, e.loc, scope=scope, builder=bb,
                     capture=lambda v: to_body(frame.capture(v)))
    frame.builder.graph.salt_counter = body.salt_counter
    ys, carries = _split_results(frame, cell, e, list(out) if isinstance(out, tuple) else [out], len(inits))
    for i, (c, init) in enumerate(zip(carries, inits)):
        if bb.type(c) != frame.builder.type(init):
            raise frame.error("E0104", f"carry {i} of `{cell.defn.name}` starts as {frame.builder.type(init)} "
                              f"but the cell returns {bb.type(c)}", e.init[i].loc)
    if lengths is not None:  # past its length an example keeps its carries, and its outputs are zeros
        ys, carries = _mask_by_length(frame, e, bb, to_body(lengths), step_val, ys, carries, carry_vals)
    ys = [bb.identity(y) if any(y == c for c in carries) or ys[:j].count(y) else y for j, y in enumerate(ys)]
    # a counter's stacked residuals must have the scanned axis: give it rank max(axis, 1)
    counter_shape = (1,) * max(axes[0], 1)
    counter = _per_step_randomness(frame, body, bb, to_body, counter_shape)
    n_cell = len(carries)
    if counter is not None:  # one more carry: the step count, mixed into the random key
        carry_vals, carries = carry_vals + [counter[0]], carries + [counter[1]]
        inits = inits + [frame.builder.const(np.zeros(counter_shape, np.int64))]
    body.set_outputs({**{f"carry{i}": c for i, c in enumerate(carries)}, **{f"y{j}": y for j, y in enumerate(ys)}})
    extra = [step_val] if step_val is not None else []
    body.set_inputs([v.node for v in carry_vals + seq_vals + extra + list(captured.values())])
    outer = inits + seqs + ([step_seq] if step_seq is not None else []) + list(captured)
    with frame.builder.at(loc=e.loc, scope=scope, context=frame.context or None):
        results = frame.builder.apply("scan", *outer, body=body, n_carry=len(carries),
                                      n_seq=len(seqs) + len(extra), axis=axes[0], reverse=e.reverse)
    results = results[:len(ys) + n_cell]  # the stacked outputs and the cell's own final carries (not the counter)
    return results if len(results) > 1 else results[0]  # no carries, one output: just the stacked outputs


def _sequences(frame: Frame, e: A.Scan, seqs: list, axis):
    """(types, normalised axes, common length) of the scanned sequences."""
    for v in seqs:
        if not is_tensor(v):
            raise frame.error("E0103", f"`scan` needs tensors, got {describe(v)}", e.over.loc)
    seq_types = [frame.builder.type(s) for s in seqs]
    try:
        axes = [norm_axis(axis, t.rank) for t in seq_types]
    except Exception:
        raise frame.error("E0104", f"axis {axis} is out of range for {seq_types[0]}", e.loc) from None
    if len(set(axes)) > 1:
        raise frame.error("E0104", f"axis {axis} means different axes for sequences of different ranks "
                          f"({', '.join(str(t) for t in seq_types)})", e.loc, hint="give a non-negative axis")
    lengths = {t.shape[a] for t, a in zip(seq_types, axes)}
    if len(lengths) > 1:
        raise frame.error("E0104", "scanned sequences differ in length: "
                          + ", ".join(shape_str(t.shape) for t in seq_types), e.over.loc)
    return seq_types, axes, lengths.pop()


def _step_count(frame: Frame, e: A.Scan):
    """The N of ``steps N``: a positive integer or a dim."""
    n = evaluate(e.steps, frame)
    if isinstance(n, bool) or not isinstance(n, (int, Sym)) or (isinstance(n, int) and n < 1):
        raise frame.error("E0103", f"`steps` needs a positive integer or a dim, got {describe(n)}", e.steps.loc)
    return n


def _lengths(frame: Frame, e: A.Scan, inits: list) -> Value:
    """The ``lengths`` tensor: one integer per example, the batch axis 0 of every carry."""
    lengths = evaluate(e.lengths, frame)
    t = frame.builder.type(lengths) if is_tensor(lengths) else None
    if t is None or t.dtype not in ("i32", "i64") or t.rank != 1:
        raise frame.error("E0103", f"`lengths` needs a 1-D integer tensor (one length per example), "
                          f"got {t if t is not None else describe(lengths)}", e.lengths.loc)
    for i, c in enumerate(inits):
        ct = frame.builder.type(c)
        if ct.rank < 1 or ct.shape[0] != t.shape[0]:
            raise frame.error("E0104", f"`lengths` {t} gives one length per example, but carry {i} is {ct}: "
                              "every carry needs the batch as its first axis", e.lengths.loc)
    return lengths


def _check_cell_arity(frame: Frame, cell: LayerRef, e: A.Scan, n_seq: int, n_carry: int, kwargs: dict) -> None:
    """The cell takes the sequence slices, then one argument per ``init`` value."""
    formals = cell.defn.formals
    given = n_seq + n_carry
    where = f"{n_seq} sequence slice{'s' if n_seq != 1 else ''} and {n_carry} carried value" \
            f"{'s' if n_carry != 1 else ''} from `init`"
    if given > len(formals):
        raise frame.error("E0102", f"`{cell.defn.name}` takes {len(formals)} argument(s), but the scan "
                          f"passes {given}: {where}", e.loc,
                          hint="a cell takes the sequence slices first, then one argument per `init` value")
    missing = [f.name for f in formals[given:] if f.default is None and f.name not in kwargs]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        carried = [f.name for f in formals[n_seq:] if f.default is None and f.name not in kwargs]
        raise frame.error("E0102", f"`{cell.defn.name}` needs {names}, but the scan passes only {where}", e.loc,
                          hint=f"the arguments after the {n_seq} sequence slice{'s' if n_seq != 1 else ''} are "
                               f"carried state, one `init` value each: `init ({', '.join(c + '0' for c in carried)})`")


def _split_results(frame: Frame, cell: LayerRef, e: A.Scan, results: list, k: int):
    """(per-step outputs, new carries): k values are the carries (the first also the
    output); more are the outputs followed by the k carries."""
    if len(results) < k or not results:
        raise frame.error("E0102", f"`{cell.defn.name}` returns {len(results)} values for {k} carried "
                          f"value{'s' if k != 1 else ''}: return the new carries (the first is also the "
                          "per-step output), or the per-step outputs followed by the new carries", e.loc)
    if len(results) == k:
        return [results[0]], results
    return results[:len(results) - k], results[len(results) - k:]


def _mask_by_length(frame, e, bb: Builder, lengths: Value, step: Value, ys: list, carries: list, olds: list):
    """Carries frozen and outputs zeroed at the steps past each example's length."""
    t = bb.reshape(step, shape=())
    live = bb.gt(bb.cast(lengths, dtype="i64"), t)  # [B]; Greater has CUDA kernels for int64 (Less: not listed)

    def spread(v):  # live, broadcast over v's trailing axes
        rank = bb.type(v).rank
        return bb.unsqueeze(live, axes=tuple(range(1, rank))) if rank > 1 else live

    carries = [bb.where(spread(c), c, old) for c, old in zip(carries, olds)]
    out = []
    for y in ys:
        yt = bb.type(y)
        if yt.rank < 1 or yt.shape[0] != bb.type(lengths).shape[0]:
            raise frame.error("E0104", f"`lengths` masks the batch axis 0, but a per-step output of "
                              f"`{e.callee.id}` is {yt}", e.lengths.loc)
        out.append(bb.where(spread(y), y, bb.zeros_like(y)))
    return out, carries


def _per_step_randomness(frame: Frame, body: Graph, bb: Builder, to_body, shape: tuple):
    """If the cell draws random numbers, give every step its own key.

    Random ops in the body read a ``__rng`` input; it is replaced by
    ``(outer key mod P) * P + t`` with ``t`` a step counter carried through the scan,
    so each step draws fresh numbers, reproducibly (the backward scan re-runs
    the body on the same carried ``t`` and sees the same masks).  Returns the
    counter's (body input, next value), or None for a deterministic cell."""
    rng = [n for n in body.nodes() if body[n].op == "input" and body[n].attrs["name"] == RNG_INPUT]
    if not rng:
        return None
    (node,) = rng
    t = _body_input(body, "step_count", TensorType("i64", shape))
    # (key mod P) * P + t with P the hash's prime: distinct for every (key, step), below 2**62
    key = bb.add(bb.mul(bb.mod(to_body(frame.builder.rng_key()), HASH_PRIME), HASH_PRIME), bb.sum(t))
    for user in body.consumers(node):
        for i, v in enumerate(body[user].inputs):
            if v.node == node:
                body.set_input(user, i, key)
    body.remove_nodes([node])
    return t, bb.add(t, 1)


def _body_input(body: Graph, name: str, t: TensorType) -> Value:
    n = body.add_node("input", (), {"name": name}, (t,))
    body.add_input(n)
    return Value(n)

"""Batch sums pushed below the terms they add up: ``sum(a + r·b) = sum(a) + r·sum(b)``.

A rewrite for data-parallel stages (compiler/training/stages.py): a sum over
the batch that waits for a factor computed from an earlier batch sum costs a
round of its own; moved below the ``add`` and out of the ``mul``, the sum of
the other term crosses the workers early and shares a round.  Only sums over
the *batch* move (``batch``: the names of the batch dim).  Each (value, target
shape) is rewritten once (a memo), so shared sub-expressions stay shared and
the rewrite is linear in the graph.
"""
from __future__ import annotations

from ..builder import Builder
from ..dims import Sym
from ..graph import Graph, Value


def _mentions_batch(t, batch: frozenset[str]) -> bool:
    return any(isinstance(d, Sym) and {name for mono in d.terms for name, _ in mono} & batch for d in t.shape)


def distribute_sums(graph: Graph, batch: frozenset[str]) -> Graph:
    """A copy of ``graph`` where each ``sum_to`` over the batch is pushed through ``neg``,
    ``add``/``sub`` of same-shaped terms and ``mul`` by a factor constant along the summed
    axes: ``sum(a + r·b) = sum(a) + r·sum(b)``.  The old nodes stay for their other uses.

    Autodiff's batch-norm gradient sums ``dy·scale + r·(x - mean)`` where ``r`` needs an
    earlier batch sum; split, ``sum(x - mean)`` crosses the workers during the forward pass
    and both sums of each batch norm's gradient share one round instead of two."""
    g = graph.copy()
    b = Builder(g, role="backward", scope="sync")
    memo: dict[tuple, Value] = {}
    order = g.topo_order()
    todo = [n for n in order if g.op(n) == "sum_to" and _mentions_batch(g.type_of(g.in_values(n)[0]), batch)
            and not _mentions_batch(g[n].types[0], batch)]
    position = {n: i for i, n in enumerate(order)}
    for n in todo:
        x, target = g.in_values(n)[0], tuple(g[n].attrs["shape"])
        # the terms this sum may move to, deepest first: each push then finds its terms' sums in
        # the memo, so a long chain does not recurse once per link (Python's recursion limit)
        for term in sorted(_terms_below(g, x), key=lambda v: position[v.node]):
            _sum_to(g, b, term, target, batch, memo)
        pushed = memo.get((x, target)) or _push(g, b, x, target, batch, memo)
        if pushed is not None:
            g.replace_uses(Value(n), pushed)
    g.prune({v.node for v in g.outputs.values()} | {n for n, _ in g.state.values()})
    return g


def _push(g: Graph, b, x: Value, target: tuple, batch, memo) -> Value | None:
    """``sum_to(x, target)`` rebuilt with the sum moved below ``x``'s op, or None if it does not move."""
    rec, t = g[x.node], g.type_of(x)
    args = rec.inputs
    if rec.op == "neg":
        return b.neg(_sum_to(g, b, args[0], target, batch, memo))
    if rec.op in ("add", "sub") and all(g.type_of(a) == t for a in args):
        left, right = (_sum_to(g, b, a, target, batch, memo) for a in args)
        return b.add(left, right) if rec.op == "add" else b.sub(left, right)
    if rec.op == "mul":
        for full, factor in (args, args[::-1]):
            q = _constant_along_sum(g, b, factor, t.shape, target, batch)
            if q is not None and g.type_of(full) == t:
                return b.mul(_sum_to(g, b, full, target, batch, memo), q)
    return None


def _terms_below(g: Graph, x: Value) -> set[Value]:
    """The values a sum of ``x`` can be pushed to (through neg / add / sub / mul), ``x`` excluded:
    a superset of what :func:`_push` visits; the sums of the unused ones are pruned."""
    t, seen, stack = g.type_of(x), set(), [x]
    while stack:
        v = stack.pop()
        rec = g[v.node]
        if rec.op in ("neg", "add", "sub", "mul"):
            for a in rec.inputs:
                if a not in seen and g.type_of(a) == t:
                    seen.add(a)
                    stack.append(a)
    seen.discard(x)
    return seen


def _sum_to(g, b, x: Value, target: tuple, batch, memo) -> Value:
    """``sum_to(x, target)``, pushed down where it moves; one node per (x, target), so terms
    shared by several sums (``x + a·x`` repeated) are rebuilt once, not once per path."""
    key = (x, target)
    if key not in memo:
        memo[key] = _push(g, b, x, target, batch, memo) or b.sum_to(x, shape=target)
    return memo[key]


def _constant_along_sum(g: Graph, b, q: Value, shape: tuple, target: tuple, batch) -> Value | None:
    """``q`` (seen through a ``broadcast_to``) shaped to multiply ``sum_to(·, target)`` of a
    ``shape`` tensor, when it is constant along every summed axis; else None."""
    if g.op(q.node) == "broadcast_to":
        q = g.in_values(q.node)[0]
    qs = g.type_of(q).shape
    if _mentions_batch(g.type_of(q), batch) or len(qs) > len(shape):
        return None
    lead = len(shape) - len(target)
    aligned = (1,) * (len(shape) - len(qs)) + tuple(qs)
    for i, d in enumerate(aligned):
        summed = i < lead or (target[i - lead] == 1 and shape[i] != 1)
        if d != 1 and (summed or d != shape[i]):
            return None
    kept = aligned[lead:]  # the summed leading axes are 1: drop them
    return q if tuple(qs) == kept else b.reshape(q, shape=kept)

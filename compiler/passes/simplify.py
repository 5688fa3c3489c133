"""Algebraic simplification of what lowering, backprop and the optimizers emit.

Rules (each replaces a node by a value that is already there, or by one
smaller node), applied in one topological sweep so a rule sees its inputs
simplified already:

- neutral elements: ``x * 1``, ``1 * x``, ``x + 0``, ``0 + x``, ``x - 0``,
  ``x / 1``, ``x ** 1`` → ``x`` (the constant being all ones / zeros), when
  broadcasting against the constant does not change ``x``'s type;
- ops that are the identity at the types they have: ``identity``, ``cast`` to
  the same dtype, ``reshape`` / ``broadcast_to`` / ``sum_to`` to the same
  shape, ``transpose`` by the identity permutation;
- chains of pure reshapes (``reshape``, ``squeeze``, ``unsqueeze``; they keep
  the row-major element order) that end at the type they started from and
  only add or remove axes of size 1 on the way, such as ``squeeze(unsqueeze(x))``,
  and ``neg(neg(x))`` → ``x``.  (Such steps are views of any input.  A reshape
  that regroups elements copies a strided input — a transposed view — into C
  order, which later reductions add up in another order, so a chain through one
  stays: dropping it would change the rounding of a ``sum`` downstream.)
- ``transpose(transpose(x, p), q)`` → one transpose (or ``x``).

Every rule is exact (``x + 0`` may turn ``-0.0`` into ``0.0``, nothing else).
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph, Value
from ..ops.registry import get_op
from ..ops.shape import _perm
from .rewrite import Uses, const_value, topo_order

_NEUTRAL = {  # op → (the neutral constant, the argument positions it may take)
    "mul": (1, (0, 1)), "add": (0, (0, 1)), "sub": (0, (1,)), "div": (1, (1,)), "pow": (1, (1,)),
}
_SAME_TYPE_NOOPS = ("identity", "cast", "reshape", "broadcast_to", "sum_to", "squeeze", "unsqueeze")
_RESHAPES = ("reshape", "squeeze", "unsqueeze")
_MAX_CHAIN = 8


def simplify(graph: Graph) -> int:
    """Apply the rules above everywhere; returns how many nodes were replaced."""
    uses = Uses(graph)
    replaced: list[int] = []
    for n in topo_order(graph):
        value = _rewrite(graph, n)
        if value is not None:
            uses.replace(n, [value])  # n is unused now; removed at the end, at once
            replaced.append(n)
    graph.remove_nodes(replaced)
    return len(replaced)


def _non_unit(shape) -> tuple:
    """``shape`` without its axes of static size 1."""
    return tuple(d for d in shape if d != 1)


def _rewrite(graph: Graph, n: int) -> Value | None:
    """The value that may replace node ``n``, or None."""
    rec = graph[n]
    op, t = rec.op, rec.types[0] if len(rec.types) == 1 else None
    if t is None:
        return None
    if op in _NEUTRAL:
        neutral, positions = _NEUTRAL[op]
        for pos in positions:
            c = const_value(graph, rec.inputs[pos])
            other = rec.inputs[1 - pos]
            if c is not None and graph.type_of(other) == t and c.size and np.all(c == neutral):
                return other
        return None
    if op in _SAME_TYPE_NOOPS and graph.type_of(rec.inputs[0]) == t:
        return rec.inputs[0]
    if op in _RESHAPES:
        src = rec.inputs[0]
        for _ in range(_MAX_CHAIN):  # bounded, so the sweep stays linear
            if graph.op(src.node) not in _RESHAPES or _non_unit(graph.type_of(src).shape) != _non_unit(t.shape):
                break  # (a step that regroups elements may copy a strided input into C order)
            src = graph[src.node].inputs[0]
            if graph.type_of(src) == t:
                return src
        return None
    if op == "neg" and graph.op(rec.inputs[0].node) == "neg":
        return graph[rec.inputs[0].node].inputs[0]
    if op == "transpose":
        x_t = graph.type_of(rec.inputs[0])
        q = _perm(rec.attrs["perm"], t.rank)
        if q == tuple(range(t.rank)):
            return rec.inputs[0]
        inner = graph[rec.inputs[0].node]
        if inner.op != "transpose":
            return None
        p = _perm(inner.attrs["perm"], x_t.rank)
        composed = tuple(p[i] for i in q)  # out[i] = y[q[i]] = x[p[q[i]]]
        src = inner.inputs[0]
        if composed == tuple(range(t.rank)):
            return src
        types = (get_op("transpose").shape(graph.type_of(src), perm=composed),)
        m = graph.add_node("transpose", (src,), {"perm": composed}, types, loc=rec.loc, scope=rec.scope,
                           role=rec.role, grad_of=rec.grad_of)
        return Value(m)
    return None

"""Common-subexpression elimination: one node per distinct computation.

Two nodes compute the same values when they apply the same op with equal
attrs (floats compared by their bits: ``-0.0`` is not ``0.0``) to the same input
values (after earlier merges), with the same types.
Random ops are pure functions of (key input, ``salt`` attr, shape), so two of
them merge only when their salts are equal too — which is exactly when they
draw the same numbers (a dropout mask and its recomputation in the
gradient).  ``count`` reads only its input's shape, so it keys by the input's
type: the counts of two values of type ``f32[B]`` are one node.  Constants
merge by dtype, shape and bytes.  Inputs, parameters and state never merge
(each is fed by name).  Scan bodies key by identity (a body is a graph
object; equal copies are not detected).  One topological sweep with a hash
table: O(nodes · log nodes).
"""
from __future__ import annotations

from ..graph import Graph
from .rewrite import Uses, hashable, topo_order

MAX_CONST_BYTES = 1 << 16  # larger constants are not hashed (they are rare and rarely repeated)


def cse(graph: Graph) -> int:
    """Merge duplicate nodes into the first of them (topological order); returns how many went."""
    uses = Uses(graph)
    seen: dict[tuple, int] = {}
    merged = []
    for n in topo_order(graph):
        key = _key(graph, n)
        if key is None:
            continue
        first = seen.setdefault(key, n)
        if first != n:
            uses.replace(n, graph.out_values(first))
            merged.append(n)
    graph.remove_nodes(merged)
    return len(merged)


def _key(graph: Graph, n: int):
    rec = graph[n]
    if rec.op in ("input", "param", "state"):
        return None
    if rec.op == "const":
        value = rec.attrs["value"]
        return None if value.nbytes > MAX_CONST_BYTES else ("const", hashable(value))
    attrs = hashable(rec.attrs)
    if attrs is None:
        return None
    if rec.op == "count":
        args = tuple(graph.type_of(v) for v in rec.inputs)
    else:
        args = tuple((v.node, v.index) for v in rec.inputs)
    return (rec.op, attrs, args, rec.types)

"""Taking a ``scan`` node apart and rebuilding it: shared by the hoisting passes
(``hoist_scan_invariants`` and ``hoist_scan_accumulators``)."""
from __future__ import annotations

from ..builder import Builder
from ..graph import Graph, Value
from ..types import norm_axis


class Scan:
    """A scan node taken apart: body, counts, the outer values of each input group."""

    def __init__(self, graph: Graph, n: int):
        rec = graph[n]
        self.n, self.rec = n, rec
        a = rec.attrs
        self.body: Graph = a["body"]
        self.k, self.m, self.axis, self.reverse, self.res = (a["n_carry"], a["n_seq"], a["axis"], a["reverse"],
                                                           a["residuals"])
        ins = rec.inputs
        self.carries, self.seqs, self.captured = list(ins[:self.k]), list(ins[self.k:self.k + self.m]), \
            list(ins[self.k + self.m:])
        self.ax = norm_axis(self.axis, graph.type_of(self.seqs[0]).rank)
        self.n_y = len(self.body.outputs) - self.k
        self.split = self.n_y - self.res

    def out_index(self, j: int) -> int:
        """The node output holding per-step output ``j`` (body order) stacked."""
        return j if j < self.split else j + self.k


def rebuild(graph: Graph, s: Scan, body: Graph, carries, seqs, captured, n_new_tail: int,
             moved: dict[int, int]) -> int:
    """Replace scan ``s`` by a node over ``body`` and the given inputs, whose
    last ``n_new_tail`` per-step outputs are appended after its final carries;
    ``moved`` sends old output indices to new ones (the caller redirects the
    others, then removes the old node)."""
    b = Builder(graph)
    rec = s.rec
    with b.at(scope=rec.scope, loc=rec.loc, role=rec.role, grad_of=rec.grad_of):
        out = b.apply("scan", *carries, *seqs, *captured, body=body, n_carry=len(carries), n_seq=len(seqs),
                      axis=s.ax, reverse=s.reverse, residuals=s.res + n_new_tail)
    new = out[0].node
    for old, idx in moved.items():
        graph.replace_uses(Value(s.n, old), Value(new, idx))
    return new


def drop_unread(body: Graph, inputs: list[int], keep: set[int]) -> list[bool]:
    """Remove body input nodes nothing reads (except those in ``keep``); returns which stay."""
    stay = []
    outs = {v.node for v in body.outputs.values()}
    for n in inputs:
        used = n in keep or bool(body.consumers(n)) or n in outs
        if not used:
            body.remove_nodes([n])
        stay.append(used)
    return stay


def binary_nodes(body: Graph, op: str):
    """The body's ``op`` nodes of two inputs: (node, record, first input, second input)."""
    for node in body.nodes():
        rec = body[node]
        if rec.op == op:
            a, b = rec.inputs
            yield node, rec, a, b

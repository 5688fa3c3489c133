"""A weight gradient over a batch as one GEMM instead of a batch of GEMMs and a sum.

A layer applied to a sequence (``x: [B, T, K] @ W: [K, N]``) gets, from its
matmul rule and backprop's un-broadcasting, ``dW = sum_to(x^T @ dy, [K, N])``:
B matrix products of ``[K, T] @ [T, N]`` and a reduction over B.  The same
numbers are one product of the flattened operands, ``reshape(x, [-1, K])^T @
reshape(dy, [-1, N])``, a single large GEMM (what fast libraries do).  The
rule fires when both operands share their batch dims exactly (no operand
broadcasts) and nothing else reads the batched product.  The sum runs in a
different order, so results agree within float32 rounding rather than
bitwise.  Primitive ops only, so both backends profit; O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.registry import get_op
from ..ops.shape import _perm
from .rewrite import Uses


def merge_batch_matmul(graph: Graph) -> int:
    """Rewrite every ``sum_to(matmul(transpose(a), b), [K, N])`` over shared batch dims; returns how many."""
    uses = Uses(graph)
    merged: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "sum_to" or len(rec.attrs["shape"]) != 2:
            continue
        prod = graph[rec.inputs[0].node]
        if prod.op != "matmul" or uses.external(prod.id) or graph.consumers(prod.id) != [n]:
            continue
        tr = graph[prod.inputs[0].node]
        if tr.op != "transpose":
            continue
        a, b = tr.inputs[0], prod.inputs[1]
        ta, tb = graph.type_of(a), graph.type_of(b)
        rank = ta.rank
        if rank < 3 or tb.rank != rank or ta.shape[:-2] != tb.shape[:-2] or ta.dtype != tb.dtype:
            continue
        if _perm(tr.attrs["perm"], rank) != tuple(range(rank - 2)) + (rank - 1, rank - 2):
            continue
        if rec.types[0].shape != (ta.shape[-1], tb.shape[-1]):
            continue

        def add(op, inputs, **attrs):
            types = get_op(op).shape(*[graph.type_of(v) for v in inputs], **attrs)
            return Value(graph.add_node(op, inputs, attrs, (types,), loc=rec.loc, scope=rec.scope, role=rec.role,
                                        grad_of=rec.grad_of))

        flat_a = add("reshape", (a,), shape=(-1, ta.shape[-1]))
        flat_b = add("reshape", (b,), shape=(-1, tb.shape[-1]))
        out = add("matmul", (add("transpose", (flat_a,), perm=(1, 0)), flat_b))
        uses.replace(n, [out])
        merged.append(n)
    graph.remove_nodes(merged)
    return len(merged)

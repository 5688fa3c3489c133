"""Transposes folded into the matmuls that read them (NumPy backend).

Backprop writes ``dW = x^T @ dy`` and ``dx = dy @ W^T`` as a ``transpose``
node feeding a ``matmul``.  A matmul whose operand (rank >= 2) is a transpose
of the last two axes becomes one ``matmul_t`` reading the transpose's input,
with ``ta`` / ``tb`` set: NumPy's matmul takes the swapped view directly, so a
kernel call goes (and the transpose itself, once nothing else reads it — the
pipeline's dead-code pass removes it).  onnxruntime does this fusion itself,
so ONNX exports keep the primitive ``Transpose`` + ``MatMul``.  One sweep:
O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.registry import get_op
from ..ops.shape import _perm
from .rewrite import Uses


def fold_transposes(graph: Graph) -> int:
    """Rewrite every ``matmul`` of a swapped-axes transpose as ``matmul_t``; returns how many."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "matmul":
            continue
        args, flags = list(rec.inputs), [False, False]
        if any(graph.type_of(v).rank < 2 for v in args):
            continue
        for i, v in enumerate(args):
            src = graph[v.node]
            if src.op == "transpose" and _swaps_last_two(src.attrs["perm"], graph.type_of(v).rank):
                args[i], flags[i] = src.inputs[0], True
        if not any(flags):
            continue
        attrs = {"ta": flags[0], "tb": flags[1]}
        types = (get_op("matmul_t").shape(*[graph.type_of(v) for v in args], **attrs),)
        m = graph.add_node("matmul_t", args, attrs, types, loc=rec.loc, scope=rec.scope, role=rec.role,
                           grad_of=rec.grad_of)
        uses.replace(n, [Value(m)])
        folded.append(n)
    graph.remove_nodes(folded)
    return len(folded)


def _swaps_last_two(perm, rank: int) -> bool:
    return rank >= 2 and _perm(perm, rank) == tuple(range(rank - 2)) + (rank - 1, rank - 2)

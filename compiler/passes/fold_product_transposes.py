"""Transposes of batched products written by the products themselves (NumPy backend).

Attention splits heads with a transposed view, ``[B, T, H, D] -> [B, H, T, D]``,
and merges them back after its batched products with the inverse transpose and a
reshape to ``[B, T, H·D]``; backprop does the same for the gradients of ``q``,
``k`` and ``v``.  A batched ``matmul`` writes a C-order ``[B, H, T, D]``, so the
transposed view is strided and the reshape copies it (~40 µs each in the
Transformer block's NumPy step).  Here a ``transpose`` whose input is a
batched ``matmul`` / ``matmul_t`` (both operands of rank >= 3) read by that
transpose alone becomes one ``matmul_permuted`` node: the product is written
straight into the permuted layout (each matrix's BLAS call with the output's row
stride as its leading dimension), and the reshape after it is a view.

``perm`` must keep the product's last axis last, so each output matrix has unit
column stride for BLAS.  (A ``perm`` that moves it — ``[B, H, D, T] -> [B, T, H,
D]``, the gradient of ``k`` as backprop writes it — could be the swapped operands'
product ``Y^T X^T`` written in place; at tiny_bert's sizes OpenBLAS rounds that
orientation differently, which breaks ``-O2``'s bit-for-bit agreement with
``-O0``, so it is left alone.)  The values are the two ops' (a test holds every
spec's training steps at ``-O2`` to ``-O0``'s bits, tiny_bert's attention among them).  One sweep: O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.registry import get_op
from ..ops.shape import _perm
from .rewrite import Uses

PRODUCTS = ("matmul", "matmul_t")


def fold_product_transposes(graph: Graph) -> int:
    """Rewrite each such ``transpose(product)`` as ``matmul_permuted``; returns how many."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "transpose":
            continue
        (src,) = rec.inputs
        prod = graph[src.node]
        if prod.op not in PRODUCTS or not uses.read_only_by(src, n):
            continue
        a, b = prod.inputs
        if graph.type_of(a).rank < 3 or graph.type_of(b).rank < 3:
            continue  # rows times one matrix: matmul collapses the rows into one GEMM instead
        rank = graph.type_of(src).rank
        perm = list(_perm(rec.attrs["perm"], rank))
        if perm[-1] != rank - 1 or perm == list(range(rank)):
            continue  # (the last axis moved: the swapped operands' product would round otherwise)
        ta, tb = prod.attrs.get("ta", False), prod.attrs.get("tb", False)
        attrs = {"ta": ta, "tb": tb, "perm": tuple(perm)}
        types = (get_op("matmul_permuted").shape(graph.type_of(a), graph.type_of(b), **attrs),)
        if types != rec.types:
            continue
        m = graph.add_node("matmul_permuted", [a, b], attrs, types, loc=rec.loc, scope=rec.scope,
                           role=rec.role, grad_of=rec.grad_of)
        uses.replace(n, [Value(m)])
        folded.extend((n, src.node))
    graph.remove_nodes(folded)
    return len(folded) // 2

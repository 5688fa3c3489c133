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
``-O0``, so it is left alone.)  And every reader of the transpose must be a reshape
that merges its last two axes (the heads merge): at ``-O0`` that reshape copies the
strided view into C order, the layout ``matmul_permuted`` writes.  A reader of the
strided view itself (a ``sum``; an elementwise op, whose result keeps its input's
layout) would see another memory order than at ``-O0``, and NumPy reduces in memory
order: another rounding.  The values are the two ops' (a test holds every
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
        if not _merged_by_copying_reshapes(graph, uses, n, perm):
            continue  # a reader would see another memory layout than -O0's (see the module docstring)
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


def _merged_by_copying_reshapes(graph: Graph, uses: Uses, n: int, perm: list[int]) -> bool:
    """Is transpose node ``n`` read only by reshapes that merge its last two axes, so -O0 reads
    it through a C-order copy just as -O2 reads ``matmul_permuted``'s C-order result?

    The transposed view merges without a copy only when the axes it moved ``perm[-2]``
    past all have size 1; then the axes of size > 1 must be in order for that view to be
    C-order too (``perm`` with those axes left out is increasing)."""
    if uses.external_indices(n):
        return False
    t = graph[n].types[0]
    p = perm[-2]
    if p == t.rank - 2:  # only leading axes move: the merge is a view of -O0's strided layout
        return False
    rest = [a for a in perm if not p < a < t.rank - 1]
    if rest != sorted(rest):
        return False
    merged = t.shape[:-2] + (t.shape[-2] * t.shape[-1],)
    return all(graph.op(c) == "reshape" and tuple(graph[c].types[0].shape) == merged for c in graph.consumers(n))

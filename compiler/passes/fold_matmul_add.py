"""An ``add`` of a matrix product folded into the GEMM (NumPy backend): ``matmul_add``.

``add(c, matmul(a, b))``, where the product is read by that add alone, becomes
one ``matmul_add(a, b, c)``: with MKL the GEMM starts from a copy of ``c`` and
accumulates onto it (``beta=1``), so the product is never written and then
read back by a separate add (compiler/ops/gemm.py).  A recurrent cell's
``x_t @ Wx + h @ Wh`` (the input projection hoisted out of the scan, its slice
added to the step's GEMM) and a bias added before a scan or a normalization
are the cases.

Left alone: an add whose result feeds an elementwise op or a concat — fusion
(fuse_elementwise.py) then does the add in the GEMM's own buffer as part of
that chain, which costs the same memory traffic and one kernel call less than
a copy of ``c``; a ``c`` that would enlarge the product (broadcasting the
product itself); a ``b`` that is not a matrix or an ``a`` of rank 1.  onnxruntime
fuses MatMul + Add on its own, so ONNX exports keep the primitives.  One sweep:
O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.fused import FUSIBLE
from ..ops.registry import get_op
from ..types import FLOATS, ShapeError
from .rewrite import Uses


def fold_matmul_add(graph: Graph) -> int:
    """Rewrite every qualifying ``add(c, matmul(a, b))`` as ``matmul_add``; returns how many."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "add" or any(graph[c].op in FUSIBLE for c in graph.consumers(n)):
            continue
        for i in (0, 1):
            product, c = rec.inputs[i], rec.inputs[1 - i]
            if not _only_use(graph, uses, product, n) or c == product:
                continue
            a, b = graph[product.node].inputs
            try:
                t = get_op("matmul_add").shape(graph.type_of(a), graph.type_of(b), graph.type_of(c))
            except ShapeError:
                continue
            if t != rec.types[0] or t.dtype not in FLOATS:
                continue
            m = graph.add_node("matmul_add", [a, b, c], {}, (t,), loc=rec.loc, scope=rec.scope, role=rec.role,
                               grad_of=rec.grad_of)
            uses.replace(n, [Value(m)])
            folded.append(n)
            break
    graph.remove_nodes(folded)
    return len(folded)


def _only_use(graph: Graph, uses: Uses, v: Value, reader: int) -> bool:
    """``v`` is a ``matmul``'s output that node ``reader`` alone reads (once), and no output names."""
    src = graph[v.node]
    return (src.op == "matmul" and graph.consumers(v.node) == [reader]
            and sum(u == v for u in graph[reader].inputs) == 1 and not uses.external_indices(v.node))

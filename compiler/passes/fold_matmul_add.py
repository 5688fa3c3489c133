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

from ..graph import Graph
from ..ops.fused import FUSIBLE
from .rewrite import fold_adds


def fold_matmul_add(graph: Graph) -> int:
    """Rewrite every qualifying ``add(c, matmul(a, b))`` as ``matmul_add``; returns how many."""
    return fold_adds(graph, {"matmul": "matmul_add"}.get,
                     skip=lambda n: any(graph[c].op in FUSIBLE for c in graph.consumers(n)))

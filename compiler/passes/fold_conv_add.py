"""An ``add`` of a convolution folded into the conv (NumPy backend): ``conv{k}d_add``.

``add(conv{k}d(x, w), c)``, where the conv's output is read by that add alone, becomes
one ``conv{k}d_add(x, w, c)``: the conv adds ``c`` (a spec's bias ``[O, 1, 1]``) to
each chunk of its output while the chunk is in cache, instead of a separate kernel
reading and writing the whole output again (LeNet's first conv: a [64, 6, 28, 28]
pass).  Per element it is the same one addition, so the values are bit-identical
(compiler/ops/conv_kernels.py ``conv_np``).

Left alone: a ``c`` that would enlarge the conv's output (broadcasting the output
itself) or of another dtype.  onnxruntime fuses Conv + Add on its own, so ONNX exports
keep the primitives.  One sweep: O(nodes).
"""
from __future__ import annotations

from ..graph import Graph
from .rewrite import fold_adds

CONVS = {f"conv{k}d" for k in (1, 2, 3)}


def fold_conv_add(graph: Graph) -> int:
    """Rewrite every qualifying ``add(conv(x, w), c)`` as ``conv_add``; returns how many."""
    return fold_adds(graph, lambda op: op + "_add" if op in CONVS else None)

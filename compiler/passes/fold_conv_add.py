"""An ``add`` of a convolution folded into the conv (NumPy backend): ``conv{k}d_add``.

``add(conv{k}d(x, w), c)``, where the conv's output is read by that add alone, becomes
one ``conv{k}d_add(x, w, c)``: the conv adds ``c`` (a spec's bias ``[O, 1, 1]``) to
each chunk of its output while the chunk is in cache, instead of a separate kernel
reading and writing the whole output again (LeNet's first conv: a [64, 6, 28, 28]
pass).  Per element it is the same one addition, so the values are bit-identical
(compiler/ops/nn.py ``conv_np``).

Left alone: a ``c`` that would enlarge the conv's output (broadcasting the output
itself) or of another dtype.  onnxruntime fuses Conv + Add on its own, so ONNX exports
keep the primitives.  One sweep: O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.registry import get_op
from ..types import FLOATS, ShapeError
from .rewrite import Uses

CONVS = {f"conv{k}d" for k in (1, 2, 3)}


def fold_conv_add(graph: Graph) -> int:
    """Rewrite every qualifying ``add(conv(x, w), c)`` as ``conv_add``; returns how many."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "add":
            continue
        for i in (0, 1):
            conv, c = rec.inputs[i], rec.inputs[1 - i]
            if not _only_use(graph, uses, conv, n) or c == conv:
                continue
            src = graph[conv.node]
            name = src.op + "_add"
            try:
                t = get_op(name).shape(*(graph.type_of(v) for v in (*src.inputs, c)), **src.attrs)
            except ShapeError:
                continue
            if t != rec.types[0] or t.dtype not in FLOATS:
                continue
            m = graph.add_node(name, [*src.inputs, c], src.attrs, (t,), loc=rec.loc, scope=rec.scope,
                               role=rec.role, grad_of=rec.grad_of)
            uses.replace(n, [Value(m)])
            folded.append(n)
            break
    graph.remove_nodes(folded)
    return len(folded)


def _only_use(graph: Graph, uses: Uses, v: Value, reader: int) -> bool:
    """``v`` is a conv's output that node ``reader`` alone reads (once), and no output names."""
    return (graph[v.node].op in CONVS and graph.consumers(v.node) == [reader]
            and sum(u == v for u in graph[reader].inputs) == 1 and not uses.external_indices(v.node))

"""A layer norm's row statistics computed once for its forward and backward (NumPy backend).

``layer_norm_grad(dy, x, gamma)`` recomputes x̂ = (x - mean) / σ and 1/σ from ``x``:
a row sum, a centring, a row dot and a scaling, 4 of its ~12 passes over the rows
(~95 µs of the ~330 µs of each of the Transformer block's two, at [1024, 128]).  In a
training step the forward ``layer_norm(x, gamma, beta)`` computed the same two values a
moment before.  Here a ``layer_norm_grad`` and a ``layer_norm`` of the same ``x``,
``gamma``, ``axis`` and ``eps`` become

- ``xhat, inv = layer_norm_stats(x)`` (once per layer norm),
- ``add(mul(xhat, gamma), beta)`` for the forward output (fused afterwards into one
  kernel call, the layer norm kernel's own in-place multiply and add),
- ``layer_norm_grad_stats(dy, xhat, inv, gamma)`` for the gradient.

The kernels are the two ops' own functions in the same order (compiler/ops/norm_grad.py),
so the values are bit for bit those of the ops replaced; x̂ is kept from the forward to
the backward pass (one activation more of the peak).  Only float32 / float64 ``x``:
float16 statistics are float32, which the forward's affine part would round otherwise.
One sweep: O(nodes + edges).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops.registry import get_op
from .rewrite import Uses

_DTYPES = ("f32", "f64")


def share_layer_norm_stats(graph: Graph) -> int:
    """Rewrite each ``layer_norm_grad`` whose ``layer_norm`` is in the graph; returns how many."""
    uses = Uses(graph)
    stats: dict[int, Value] = {}  # layer_norm node → its layer_norm_stats node's xhat
    removed: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "layer_norm_grad":
            continue
        dy, x, gamma = rec.inputs
        if graph.type_of(x).dtype not in _DTYPES:
            continue
        forward = next((c for c in graph.consumers(x.node) if graph[c].op == "layer_norm"
                        and graph[c].inputs[:2] == (x, gamma) and graph[c].attrs == rec.attrs), None)
        if forward is None:
            continue
        if forward not in stats:
            stats[forward] = _split_forward(graph, uses, forward)
            removed.append(forward)
        xhat = stats[forward]
        inv = Value(xhat.node, 1)
        g = graph.add_node("layer_norm_grad_stats", [dy, xhat, inv, gamma], {"axis": rec.attrs["axis"]},
                           rec.types, loc=rec.loc, scope=rec.scope, role=rec.role, grad_of=rec.grad_of)
        uses.replace(n, graph.out_values(g))
        removed.append(n)
    graph.remove_nodes(removed)
    return len(removed) - len(stats)


def _split_forward(graph: Graph, uses: Uses, n: int) -> Value:
    """Replace ``layer_norm`` node ``n`` by its statistics and affine part; returns x̂."""
    rec = graph[n]
    x, gamma, beta = rec.inputs
    types = get_op("layer_norm_stats").shape(graph.type_of(x), **rec.attrs)
    s = graph.add_node("layer_norm_stats", [x], dict(rec.attrs), types, loc=rec.loc, scope=rec.scope,
                       role=rec.role, grad_of=rec.grad_of)
    xhat = Value(s, 0)
    kw = {"loc": rec.loc, "scope": rec.scope, "role": rec.role, "grad_of": rec.grad_of}
    scaled = graph.add_node("mul", [xhat, gamma], {}, (get_op("mul").shape(types[0], graph.type_of(gamma)),), **kw)
    y = graph.add_node("add", [Value(scaled), beta], {}, rec.types, **kw)
    uses.replace(n, [Value(y)])
    return xhat

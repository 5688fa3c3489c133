"""Export-time fusions: groups of dlc nodes lowered as fewer, larger ONNX ops.

Each op lowers itself on its own (docs/architecture.md, "ONNX lowering
contract"); a few patterns spanning several dlc nodes have a much better
ONNX form that no single op's lowering can see.  :func:`find_fusions` maps
the last node of each such group to a fusion: ``fusion.inputs`` are the
enclosing-graph Values it reads (the export's liveness follows them, so a
group's inner nodes are not exported unless something else reads them) and
``fusion.lower(e, names, outs)`` emits the ONNX nodes writing that node's
outputs.

- :class:`~.onnx_lstm.LstmMatch` — a scan whose body is an LSTM cell → ``LSTM``;
  :class:`~.onnx_gru.GruMatch` — a GRU cell → ``GRU``.
- :class:`Linear` — ``x @ W + b`` with ``x`` of rank ≥ 3 and a matrix ``W``:
  ``Reshape`` to rows, one ``Gemm`` with the bias in its epilogue, ``Reshape``
  back.  onnxruntime makes the same ``Gemm`` itself only when every shape is
  static (it did for torch's export of the benchmark Transformer, not for
  dlc's symbolic ``B, T``); otherwise the bias is a separate pass over the
  ``[B, T, N]`` product.

The gradient of such a ``W`` needs no fusion: ``matmul``'s gradient rule
already writes it as one 2-D product of the flattened rows
(compiler/ops/arith.py), on every backend.

An inner node that is read elsewhere too (or is a graph output) blocks the
fusion, so nothing is ever computed twice.  The fused forms add the same
products in another order, so they agree with the per-op lowering to float32
rounding (tests/test_onnx_fuse.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Value
from .onnx_gru import match_gru
from .onnx_lstm import match_lstm

_GEMM_DTYPES = ("f32", "f64", "f16")


def find_fusions(graph: Graph) -> dict[int, object]:
    """Node id → fusion for every group of ``graph`` with a fused ONNX form."""
    out: dict[int, object] = {}
    for n in graph.nodes():
        op = graph.op(n)
        match = ((match_lstm(graph, n) or match_gru(graph, n)) if op == "scan" else _linear(graph, n) if op == "add"
                 else None)
        if match is not None:
            out[n] = match
    return out


def _private(graph: Graph, v: Value, reader: int) -> bool:
    """``v`` is read by ``reader`` alone (so fusing it into ``reader`` computes nothing twice)."""
    return graph.consumers(v.node) == [reader] and v not in set(graph.outputs.values()) and \
        len(graph[v.node].types) == 1


@dataclass(frozen=True)
class Linear:
    x: Value  # [..., K], rank >= 3
    w: Value  # [K, N]
    bias: Value  # [N]
    k: int

    @property
    def inputs(self) -> list[Value]:
        return [self.x, self.w, self.bias]

    def lower(self, e, names: dict, outs: list[str]) -> None:
        (rows,) = e.node("Reshape", [names[self.x], e.const(np.array([-1, self.k], np.int64))], [e.tmp("rows")])
        (y,) = e.node("Gemm", [rows, names[self.w], names[self.bias]], [e.tmp("gemm")])
        # allowzero: the dims are sizes (T may be 0 at run time), never "copy the input's"
        e.node("Reshape", [y, e.shape_tensor(e.out_types[0].shape)], outs, allowzero=1)


def _linear(graph: Graph, n: int) -> Linear | None:
    rec = graph[n]
    out_t = rec.types[0]
    if out_t.dtype not in _GEMM_DTYPES:
        return None
    for mm_side in (0, 1):
        mv, bv = rec.inputs[mm_side], rec.inputs[1 - mm_side]
        if graph.op(mv.node) != "matmul" or not _private(graph, mv, n):
            continue
        x, w = graph[mv.node].inputs
        xt, wt, bt = graph.type_of(x), graph.type_of(w), graph.type_of(bv)
        if xt.rank < 3 or wt.rank != 2 or bt.rank != 1 or not isinstance(xt.shape[-1], int):
            continue
        if bt.shape[0] != wt.shape[1] or out_t.shape != graph.type_of(mv).shape or bt.dtype != out_t.dtype:
            continue
        return Linear(x, w, bv, xt.shape[-1])
    return None

"""What the ONNX ``LSTM`` and ``GRU`` lowerings share (compiler/onnx_lstm.py,
compiler/onnx_gru.py): the scan node a cell match starts from, the input
projection ``x @ Wx [+ b]`` computed before the loop, and the time-major
layout onnxruntime's CPU RNN kernels take."""
from __future__ import annotations

import numpy as np

from .graph import Graph, Value


def rnn_scan_body(graph: Graph, n: int, n_carry: int, n_seq: int) -> Graph | None:
    """The body of scan node ``n`` when it can be an ONNX RNN op: ``n_carry``
    carries, ``n_seq`` sequences, no residuals (a training step's forward scan
    keeps them for BPTT; the RNN ops do not return them), every type f32."""
    rec = graph[n]
    a = rec.attrs
    if rec.op != "scan" or a["n_carry"] != n_carry or a["n_seq"] != n_seq or a["residuals"]:
        return None
    if any(t.dtype != "f32" for t in rec.types):
        return None
    return a["body"]


def rnn_cell(graph: Graph, n: int, n_carry: int, n_seq: int, match_cell):
    """(scan node record, body, ``match_cell(body)``) when scan node ``n`` has an RNN op's form
    (:func:`rnn_scan_body`) and its body is the cell ``match_cell`` recognises; else None."""
    body = rnn_scan_body(graph, n, n_carry, n_seq)
    cell = None if body is None else match_cell(body)
    return None if cell is None else (graph[n], body, cell)


def time_axis(attrs: dict) -> int | None:
    """The scan's time axis over a rank-3 sequence (what :func:`match_projection` admits) when the
    ONNX RNN ops can read it (0: time-major, 1: batch-major), else None."""
    axis = attrs["axis"] % 3
    return axis if axis in (0, 1) else None


def match_projection(graph: Graph, seq: Value, width: int):
    """(x, Wx, bias or None) when ``seq`` is ``x @ Wx + bias`` (either operand order) or ``x @ Wx``,
    with ``Wx: [I, width]`` and ``x`` of rank 3."""
    rec = graph[seq.node]
    bias = None
    if rec.op == "add" and not seq.index:
        for mm_side, b_side in ((0, 1), (1, 0)):
            mv, bv = rec.inputs[mm_side], rec.inputs[b_side]
            bt = graph.type_of(bv)
            if graph[mv.node].op == "matmul" and bt.rank == 1 and bt.shape[0] == width:
                seq, bias = mv, bv
                break
        else:
            return None
        rec = graph[seq.node]
    if rec.op != "matmul" or seq.index:
        return None
    x, wx = rec.inputs
    wt = graph.type_of(wx)
    if wt.rank != 2 or wt.shape[1] != width or not isinstance(wt.shape[0], int) or graph.type_of(x).rank != 3:
        return None
    return x, wx, bias


def time_major(e, x: str, time_axis: int) -> str:
    """``x`` as ``[T, B, I]`` (onnxruntime's CPU RNN kernels support ``layout = 0`` only)."""
    return e.node("Transpose", [x], [e.tmp("x_tbi")], perm=[1, 0, 2])[0] if time_axis == 1 else x


def emit_stacked(e, y: str, outs: list[str], time_axis: int) -> None:
    """The stacked outputs ``outs`` (each the per-step ``h``) from an RNN op's ``Y: [T, 1, B, H]``."""
    if not outs:
        return
    one = e.const(np.array([1], np.int64))
    (ys,) = e.node("Squeeze", [y, one], [e.tmp("Y_tbh")])
    if time_axis == 1:
        ys = e.node("Transpose", [ys], [e.tmp("Y_bth")], perm=[1, 0, 2])[0]
    for out in outs:
        e.node("Identity", [ys], [out])

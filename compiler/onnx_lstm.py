"""A scan whose body is exactly an LSTM cell exports as the ONNX ``LSTM`` op
(compiler/onnx_gru.py does the same for GRU cells; compiler/onnx_rnn.py holds what both share).

onnxruntime's ``LSTM`` kernel runs the whole recurrence in one node; a
``Scan`` runs the cell's dozen nodes once per step (the benchmark LSTM's
inference: 2.1 ms as a Scan against 1.6 ms for torch's export, which uses
``LSTM``).  :func:`match_lstm` recognises the cell by its dataflow, not by
names, so it is sound for any spec that writes the standard cell:

    carries (h, c); one sequence input xp = X @ Wx [+ b] computed outside the
    loop (the form ``hoist_scan_invariants`` gives); in the body
    i, f, g, o = split(xp_t + h @ Wh, 4, axis = -1)   (any chunk order)
    c2 = sigmoid(f) * c + sigmoid(i) * tanh(g);  h2 = sigmoid(o) * tanh(c2)
    carries out (h2, c2); stacked outputs, if any, only h2.

Which chunk is which gate is read from where its activation is used (the one
that multiplies the old ``c`` is the forget gate, and so on), so gate order is
never assumed.  Anything else — another node in the body, a stacked ``c``,
residuals (a training step's forward scan keeps the gate values for BPTT,
which ``LSTM`` does not return), a sequence input not of the form above,
non-f32 types, a symbolic hidden size — keeps the generic ``Scan``.

The lowering permutes the columns of ``Wx``/``Wh``/``b`` into ONNX's gate
order (i, o, f, c) with a ``Gather`` and transposes them to ONNX's
``[1, 4H, in]`` layout; for an inference export's initializers onnxruntime
folds that at session creation.  ``layout = 0`` (time-major) is used because
onnxruntime's CPU kernel supports no other, so a batch-major sequence is
transposed in and the stacked ``h`` out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Value
from .onnx_rnn import emit_stacked, match_projection, rnn_cell, time_axis, time_major


@dataclass(frozen=True)
class LstmMatch:
    """What an LSTM-cell scan computes, in terms of its enclosing graph's Values."""

    x: Value  # the sequence before projection: [B, T, I] (axis 1) or [T, B, I] (axis 0)
    wx: Value  # [I, 4H]
    bias: Value | None  # [4H]
    wh: Value  # [H, 4H]
    h0: Value
    c0: Value
    gates: tuple[int, int, int, int]  # the split chunk of each ONNX gate: i, o, f, c (= g)
    hidden: int
    time_axis: int
    reverse: bool
    h_index: int  # which carry is h (0 or 1)
    stacked: int  # how many stacked outputs (each is h2)
    offsets: tuple = (None,) * 4  # per split chunk: a constant [H] the body adds before the activation

    @property
    def inputs(self) -> list[Value]:
        """The enclosing-graph values the lowering reads (for liveness)."""
        return [v for v in (self.x, self.wx, self.bias, self.wh, self.h0, self.c0) if v is not None]

    def lower(self, e, names: dict, outs: list[str]) -> None:
        lower_lstm(e, self, names, outs)


def match_lstm(graph: Graph, n: int) -> LstmMatch | None:
    """The LSTM that scan node ``n`` of ``graph`` computes, or None (see the module docstring)."""
    found = rnn_cell(graph, n, n_carry=2, n_seq=1, match_cell=_match_cell)
    if found is None:
        return None
    rec, body, cell = found
    a = rec.attrs
    h_index, gates, wh_input, hidden, offsets = cell
    outer = list(rec.inputs)
    k = 2
    seq = outer[k]
    proj = match_projection(graph, seq, 4 * hidden)
    if proj is None:
        return None
    x, wx, bias = proj
    axis = time_axis(a)
    if axis is None:
        return None
    captured = body.inputs[k + 1:]
    wh = outer[k + 1 + captured.index(wh_input)]
    c_index = 1 - h_index
    return LstmMatch(x=x, wx=wx, bias=bias, wh=wh, h0=outer[h_index], c0=outer[c_index], gates=gates,
                     hidden=hidden, time_axis=axis, reverse=bool(a["reverse"]), h_index=h_index,
                     stacked=len(body.outputs) - k, offsets=offsets)


def _match_cell(body: Graph):
    """(h carry index, chunk per ONNX gate, the captured input Wh is, H, per-chunk constant offsets)
    of an LSTM cell body, or None.  Every body node must take part in the cell."""
    ins = list(body.inputs)
    if len(ins) < 4:
        return None
    carry_in, seq_in, captured = ins[:2], ins[2], ins[3:]
    ops = {m: body[m] for m in body.nodes() if body.op(m) != "input"}
    seen: set[int] = set()

    def only(op: str, m: int) -> bool:
        return m in ops and ops[m].op == op and not seen.add(m)

    outs = list(body.outputs.values())
    if any(v.index for v in outs):
        return None
    # h2 = sigmoid(o) * tanh(c2) is the carry the matmul reads; c2 the other carry
    mms = [m for m, r in ops.items() if r.op == "matmul"]
    if len(mms) != 1 or not only("matmul", mms[0]):
        return None
    h_val, w_val = ops[mms[0]].inputs
    if h_val.node not in carry_in or w_val.node not in captured:
        return None
    h_index = carry_in.index(h_val.node)
    c_in = carry_in[1 - h_index]
    h2, c2 = outs[h_index].node, outs[1 - h_index].node
    if any(v.node != h2 for v in outs[2:]) or not only("mul", h2) or not only("add", c2):
        return None
    pre = None
    chunks: dict[int, tuple[str, int, int | None]] = {}  # chunk -> (activation, its node, offset const node)

    def gate(v: Value, want: str):
        """The split chunk whose activation ``want`` gives ``v`` (recording it), or None."""
        nonlocal pre
        if not only(want, v.node):
            return None
        (u,) = ops[v.node].inputs
        offset = None
        if u.node in ops and ops[u.node].op == "add":  # chunk + constant: folds into the bias
            a, b = ops[u.node].inputs
            a, b = (a, b) if b.node in ops and ops[b.node].op == "const" else (b, a)
            if not (b.node in ops and ops[b.node].op == "const") or not only("add", u.node):
                return None
            value = np.asarray(ops[b.node].attrs["value"])
            if value.shape not in ((), (1,), (hidden_of(a),)):
                return None
            seen.add(b.node)
            offset, u = b.node, a
        if u.node not in ops or ops[u.node].op != "split" or u.index in chunks:
            return None
        if pre is None:
            pre = u.node
        elif pre != u.node:
            return None
        chunks[u.index] = (want, v.node, offset)
        return u.index

    def hidden_of(v: Value):
        return body.type_of(v).shape[-1]

    def pair(m: int, other: int):
        """(the operand of mul ``m`` that is not node ``other``) when ``other`` is one operand."""
        a, b = ops[m].inputs
        if a.node == other and b.node != other:
            return b
        if b.node == other and a.node != other:
            return a
        return None

    left, right = ops[h2].inputs
    cell_tanh, o_val = (left, right) if left.node in ops and ops[left.node].op == "tanh" and \
        ops[left.node].inputs[0].node == c2 else (right, left)
    if not only("tanh", cell_tanh.node) or ops[cell_tanh.node].inputs[0] != Value(c2):
        return None
    o = gate(o_val, "sigmoid")
    terms = [v.node for v in ops[c2].inputs]
    if o is None or any(t not in ops or ops[t].op != "mul" for t in terms):
        return None
    f = i = g = None
    for t in terms:
        if not only("mul", t):
            return None
        keep = pair(t, c_in)
        if keep is not None and f is None:
            f = gate(keep, "sigmoid")
            continue
        a, b = ops[t].inputs
        for act, sig in ((a, b), (b, a)):
            if act.node in ops and ops[act.node].op == "tanh" and act.node not in seen:
                g = gate(act, "tanh")
                i = gate(sig, "sigmoid")
                break
    if None in (f, i, g) or len({o, f, i, g}) != 4:
        return None
    sp = ops[pre]
    if sp.attrs.get("parts") != 4 or sp.attrs.get("axis") not in (-1, 1) or sp.types[0].rank != 2:
        return None
    (pv,) = sp.inputs
    if pv.node not in ops or ops[pv.node].op != "add" or set(ops[pv.node].inputs) != {Value(mms[0]),
                                                                                      Value(seq_in)}:
        return None
    if set(ops) != seen | {pre, pv.node}:
        return None
    hidden = sp.types[0].shape[1]
    if not isinstance(hidden, int) or body.type_of(w_val).shape != (hidden, 4 * hidden):
        return None  # a narrower Wh ([H, 1]) broadcasts in the body; LSTM's R is [4H, H]
    offsets = tuple(None if chunks[j][2] is None else
                    np.broadcast_to(np.asarray(ops[chunks[j][2]].attrs["value"], np.float32), (hidden,))
                    for j in range(4))
    return h_index, (i, o, f, g), w_val.node, hidden, offsets


def lower_lstm(e, match: LstmMatch, names: dict, outs: list[str]) -> None:
    """Emit ``LSTM`` (and its layout plumbing) writing the scan's outputs ``outs``:
    the stacked h's first, then the final carries (dlc's scan output order)."""
    H = match.hidden
    perm = np.concatenate([np.arange(j * H, (j + 1) * H) for j in match.gates]).astype(np.int64)
    perm_c = e.const(perm)
    zero = e.const(np.array([0], np.int64))

    def onnx_weight(v: Value, hint: str) -> str:  # [in, 4H] in dlc's chunk order -> [1, 4H, in] in iofc
        (cols,) = e.node("Gather", [names[v], perm_c], [e.tmp(hint + "_cols")], axis=1)
        (rows,) = e.node("Transpose", [cols], [e.tmp(hint + "_t")], perm=[1, 0])
        return e.node("Unsqueeze", [rows, zero], [e.tmp(hint)])[0]

    w = onnx_weight(match.wx, "W")
    r = onnx_weight(match.wh, "R")
    b = ""
    zeros = np.zeros(H, np.float32)
    # the body's constant gate offsets (`sigmoid(f + 1.0)`) are the recurrent bias Rb
    rb = np.concatenate([zeros if match.offsets[j] is None else match.offsets[j] for j in match.gates])
    if match.bias is not None:
        (wb,) = e.node("Gather", [names[match.bias], perm_c], [e.tmp("Wb")], axis=0)
        (both,) = e.node("Concat", [wb, e.const(rb)], [e.tmp("WbRb")], axis=0)
        b = e.node("Unsqueeze", [both, zero], [e.tmp("B")])[0]
    elif any(o is not None for o in match.offsets):
        b = e.const(np.concatenate([np.zeros(4 * H, np.float32), rb])[None])
    x = time_major(e, names[match.x], match.time_axis)
    (h0,) = e.node("Unsqueeze", [names[match.h0], zero], [e.tmp("h0")])
    (c0,) = e.node("Unsqueeze", [names[match.c0], zero], [e.tmp("c0")])
    y = e.tmp("Y") if match.stacked else ""
    y_h, y_c = e.tmp("Y_h"), e.tmp("Y_c")
    e.node("LSTM", [x, w, r, b, "", h0, c0], [y, y_h, y_c], hidden_size=H,
           direction="reverse" if match.reverse else "forward")
    k = match.stacked
    finals = {match.h_index: y_h, 1 - match.h_index: y_c}
    for j in range(2):
        e.node("Squeeze", [finals[j], zero], [outs[k + j]])
    emit_stacked(e, y, outs[:k], match.time_axis)

"""A scan whose body is exactly a GRU cell exports as the ONNX ``GRU`` op.

The companion of compiler/onnx_lstm.py (same reasons, same conventions).  The
cell, recognised by dataflow, is the one ONNX's ``GRU`` computes with
``linear_before_reset = 0`` (the reset gate applied to ``h`` before its
matrix, as specs/gru.dl writes it):

    one carry h; three sequence inputs xz, xr, xn that are the chunks of
    split(x @ Wx [+ b], 3, axis = -1) computed outside the loop (the form
    ``hoist_scan_invariants`` gives), in any order; in the body
    hz, hr = split(h @ Wh, 2, axis = -1)              (either order)
    z = sigmoid(xz + hz);  r = sigmoid(xr + hr);  n = tanh(xn + (r * h) @ Wn)
    h2 = (1.0 - z) * n + z * h;  stacked outputs, if any, only h2.

Operands of ``+`` and ``*`` may come in either order.  Anything else keeps the
generic ``Scan`` (``lengths`` masking, the other mixing convention ``z * n +
(1 - z) * h``, residuals, non-f32 types, a symbolic hidden size).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Value
from .onnx_rnn import emit_stacked, match_projection, rnn_cell, time_axis, time_major


@dataclass(frozen=True)
class GruMatch:
    """What a GRU-cell scan computes, in terms of its enclosing graph's Values."""

    x: Value  # [B, T, I] (axis 1) or [T, B, I] (axis 0)
    wx: Value  # [I, 3H]
    bias: Value | None  # [3H]
    wh: Value  # [H, 2H]: the z and r columns
    wn: Value  # [H, H]
    h0: Value
    x_chunks: tuple[int, int, int]  # the chunk of x @ Wx of z, r, n
    h_chunks: tuple[int, int]  # the chunk of h @ Wh of z, r
    hidden: int
    time_axis: int
    reverse: bool
    stacked: int

    @property
    def inputs(self) -> list[Value]:
        return [v for v in (self.x, self.wx, self.bias, self.wh, self.wn, self.h0) if v is not None]

    def lower(self, e, names: dict, outs: list[str]) -> None:
        H = self.hidden
        zero = e.const(np.array([0], np.int64))

        def cols(chunks) -> str:
            return e.const(np.concatenate([np.arange(j * H, (j + 1) * H) for j in chunks]).astype(np.int64))

        def rows(v: str, hint: str) -> str:  # [in, k] -> [k, in]
            return e.node("Transpose", [v], [e.tmp(hint)], perm=[1, 0])[0]

        (wx,) = e.node("Gather", [names[self.wx], cols(self.x_chunks)], [e.tmp("W_cols")], axis=1)
        (w,) = e.node("Unsqueeze", [rows(wx, "W_t"), zero], [e.tmp("W")])
        (wh,) = e.node("Gather", [names[self.wh], cols(self.h_chunks)], [e.tmp("R_cols")], axis=1)
        (r_all,) = e.node("Concat", [rows(wh, "Rzr"), rows(names[self.wn], "Rh")], [e.tmp("R_t")], axis=0)
        (r,) = e.node("Unsqueeze", [r_all, zero], [e.tmp("R")])
        b = ""
        if self.bias is not None:
            (wb,) = e.node("Gather", [names[self.bias], cols(self.x_chunks)], [e.tmp("Wb")], axis=0)
            (both,) = e.node("Concat", [wb, e.const(np.zeros(3 * H, np.float32))], [e.tmp("WbRb")], axis=0)
            b = e.node("Unsqueeze", [both, zero], [e.tmp("B")])[0]
        x = time_major(e, names[self.x], self.time_axis)
        (h0,) = e.node("Unsqueeze", [names[self.h0], zero], [e.tmp("h0")])
        y = e.tmp("Y") if self.stacked else ""
        y_h = e.tmp("Y_h")
        e.node("GRU", [x, w, r, b, "", h0], [y, y_h], hidden_size=H, linear_before_reset=0,
               direction="reverse" if self.reverse else "forward")
        e.node("Squeeze", [y_h, zero], [outs[self.stacked]])
        emit_stacked(e, y, outs[:self.stacked], self.time_axis)


def match_gru(graph: Graph, n: int) -> GruMatch | None:
    """The GRU that scan node ``n`` of ``graph`` computes, or None (see the module docstring)."""
    found = rnn_cell(graph, n, n_carry=1, n_seq=3, match_cell=_match_cell)
    if found is None:
        return None
    rec, body, cell = found
    a = rec.attrs
    seq_of, h_chunks, wh_in, wn_in, hidden = cell  # seq_of: body seq index of z, r, n
    outer = list(rec.inputs)
    seqs = [outer[1 + j] for j in seq_of]
    split = seqs[0].node
    sp = graph[split]
    if any(v.node != split for v in seqs) or sp.op != "split" or sp.attrs.get("parts") != 3:
        return None
    (proj_v,) = sp.inputs
    if sp.attrs.get("axis") not in (-1, graph.type_of(proj_v).rank - 1):
        return None
    proj = match_projection(graph, proj_v, 3 * hidden)
    if proj is None:
        return None
    x, wx, bias = proj
    axis = time_axis(a)
    if axis is None:
        return None
    captured = list(body.inputs[4:])
    wh, wn = (outer[4 + captured.index(v)] for v in (wh_in, wn_in))
    return GruMatch(x=x, wx=wx, bias=bias, wh=wh, wn=wn, h0=outer[0], x_chunks=tuple(v.index for v in seqs),
                    h_chunks=h_chunks, hidden=hidden, time_axis=axis, reverse=bool(a["reverse"]),
                    stacked=len(body.outputs) - 1)


def _match_cell(body: Graph):
    """((body seq index of z, r, n), (h @ Wh chunk of z, r), Wh input, Wn input, H), or None.
    Every body node must take part in the cell."""
    ins = list(body.inputs)
    if len(ins) < 6:
        return None
    h_in, seq_in, captured = ins[0], ins[1:4], ins[4:]
    ops = {m: body[m] for m in body.nodes() if body.op(m) != "input"}
    seen: set[int] = set()

    def node(v: Value, op: str):
        """The record of ``v``'s node when it is an unseen ``op`` node (marking it seen)."""
        if v.node in ops and ops[v.node].op == op and v.node not in seen:
            seen.add(v.node)
            return ops[v.node]
        return None

    def split_pair(rec, want_op: str):
        """The two operands of ``rec``, the one whose node is ``want_op`` first, or None."""
        a, b = rec.inputs
        if b.node in ops and ops[b.node].op == want_op and not (a.node in ops and ops[a.node].op == want_op):
            return b, a
        return (a, b) if a.node in ops and ops[a.node].op == want_op else None

    outs = list(body.outputs.values())
    h2 = outs[0]
    if any(v != h2 for v in outs[1:]) or h2.index:
        return None
    mix = node(h2, "add")
    if mix is None:
        return None
    # (1 - z) * n and z * h: the term with a `sub` operand is the first
    terms = [ops.get(v.node) for v in mix.inputs]
    if any(t is None or t.op != "mul" for t in terms):
        return None
    keep_terms = [t for t in terms if any(u.node in ops and ops[u.node].op == "sub" for u in t.inputs)]
    if len(keep_terms) != 1:
        return None
    new_term = keep_terms[0]
    old_term = terms[1] if terms[0] is new_term else terms[0]
    seen.update({new_term.id, old_term.id})
    pair = split_pair(new_term, "sub")
    if pair is None:
        return None
    one_minus, n_val = pair
    sub = node(one_minus, "sub")
    one = ops.get(sub.inputs[0].node) if sub is not None else None
    if one is None or one.op != "const" or np.asarray(one.attrs["value"]).size != 1 or \
            float(np.asarray(one.attrs["value"]).reshape(())) != 1.0:
        return None
    seen.add(one.id)
    z_val = sub.inputs[1]
    if set(v.node for v in old_term.inputs) != {z_val.node, h_in} or z_val.node == h_in:
        return None
    if any(v.index for v in old_term.inputs):
        return None

    def gate(v: Value, act: str):
        """(seq index, the other operand) of ``act(seq + other)``."""
        if node(v, act) is None:
            return None
        pre = node(ops[v.node].inputs[0], "add")
        if pre is None:
            return None
        a, b = pre.inputs
        for s, other in ((a, b), (b, a)):
            if s.node in seq_in:
                return seq_in.index(s.node), other
        return None

    z = gate(z_val, "sigmoid")
    n_gate = gate(n_val, "tanh")
    if z is None or n_gate is None:
        return None
    # n's other operand: (r * h) @ Wn
    mm_n = node(n_gate[1], "matmul")
    if mm_n is None or mm_n.inputs[1].node not in captured:
        return None
    rh = node(mm_n.inputs[0], "mul")
    if rh is None or h_in not in {v.node for v in rh.inputs}:
        return None
    r_val = rh.inputs[0] if rh.inputs[1].node == h_in else rh.inputs[1]
    r = gate(r_val, "sigmoid")
    if r is None or len({z[0], r[0], n_gate[0]}) != 3:
        return None
    hz, hr = z[1], r[1]
    if hz.node != hr.node or hz.index == hr.index:
        return None
    hsplit = node(hz, "split")
    if hsplit is None or hsplit.attrs.get("parts") != 2 or hsplit.attrs.get("axis") not in (-1, 1):
        return None
    mm_h = node(hsplit.inputs[0], "matmul")
    if mm_h is None or mm_h.inputs[0].node != h_in or mm_h.inputs[1].node not in captured:
        return None
    if set(ops) != seen:
        return None
    hidden = hsplit.types[0].shape[-1]
    if not isinstance(hidden, int) or hsplit.types[0].rank != 2:
        return None
    if body.type_of(mm_h.inputs[1]).shape != (hidden, 2 * hidden) or \
            body.type_of(mm_n.inputs[1]).shape != (hidden, hidden):
        return None  # a narrower Wn ([H, 1]) broadcasts in the body; GRU's R is [3H, H]
    return (z[0], r[0], n_gate[0]), (hz.index, hr.index), mm_h.inputs[1].node, mm_n.inputs[1].node, hidden

"""Control flow: ``scan``, one node with a body subgraph, whatever the length.

Node inputs are ``(c_1..c_k, xs_1..xs_m, v_1..v_p)``: k initial carries, m
sequences (scanned along ``axis``) and p captured values (parameters and
other outer values the body reads).  The body :class:`Graph` has one input
node per (carry, sequence slice, captured value), in that order, and outputs
``carry0..carry{k-1}`` (the next carries) followed by per-step outputs
``y0, y1, …``.  The node's outputs are the stacked per-step outputs (the
sequence dim inserted at ``axis``, in time order even when ``reverse``),
then the k final carries.

Gradient (back-propagation through time): a residual scan recomputes the
forward sweep and stacks the carries each step started from; a second,
reversed scan runs the body's own VJP (built symbolically, once, into its
body) over those residuals, carrying the carries' cotangents and
accumulating the captured values' gradients.  Both are ordinary ``scan``
nodes, so the graph size does not depend on the sequence length, and both
run in the interpreter and export to ONNX ``Scan``.
"""
from __future__ import annotations

import numpy as np

from ..builder import Builder
from ..graph import Graph, Value
from ..types import FLOATS, ShapeError, TensorType, norm_axis
from .registry import Attr, Op, register


@register
class Scan(Op):
    name, family = "scan", "control"
    inputs = ("*args",)
    outputs = None
    attrs = {"body": Attr("any"), "n_carry": Attr("int"), "n_seq": Attr("int", 1),
             "axis": Attr("int", 0), "reverse": Attr("bool", False)}
    samples = []
    tested_by = "tests/test_scan.py"  # a body graph cannot be a generic sample

    # -- types -------------------------------------------------------------------
    def shape(self, *types, body, n_carry, n_seq, axis, reverse):
        k, m = n_carry, n_seq
        if len(types) < k + m or len(body.inputs) != len(types):
            raise ShapeError(f"scan body takes {len(body.inputs)} inputs, the node has {len(types)}")
        seqs = types[k:k + m]
        length = None
        for s in seqs:
            ax = norm_axis(axis, s.rank)
            if length is not None and s.shape[ax] != length:
                raise ShapeError(f"scanned sequences differ in length: {length} and {s.shape[ax]}")
            length = s.shape[ax]
        for i, (t, n) in enumerate(zip(types, body.inputs)):
            want = body[n].types[0]
            if i < k or i >= k + m:
                ok = t == want
            else:
                ax = norm_axis(axis, t.rank)
                ok = t.dtype == want.dtype and t.shape[:ax] + t.shape[ax + 1:] == want.shape
            if not ok:
                raise ShapeError(f"scan input {i} is {t}, the body expects {want}")
        outs = list(body.outputs.values())
        for i in range(k):
            if body.type_of(outs[i]) != types[i]:
                raise ShapeError(f"the cell returns {body.type_of(outs[i])} for a carry of type {types[i]}")
        stacked = []
        for v in outs[k:]:
            t = body.type_of(v)
            ax = min(norm_axis(axis, seqs[0].rank), t.rank)
            stacked.append(t.with_shape(t.shape[:ax] + (length,) + t.shape[ax:]))
        return tuple(stacked) + tuple(types[:k])

    # -- NumPy -------------------------------------------------------------------
    takes_context = True  # the interpreter passes its dims and precision (the body runs in a nested plan)

    def kernel(self, *arrays, body, n_carry, n_seq, axis, reverse, _dims=None, _compute_dtype=None):
        from dlc.runtime.interpreter import Plan  # runtime depends on compiler, not the reverse, except here

        # the body runs at the caller's precision (float64 under gradcheck), planned once per precision
        key = f"_plan_{np.dtype(_compute_dtype).name if _compute_dtype is not None else 'declared'}"
        plan = body.__dict__.get(key)
        if plan is None:
            plan = body.__dict__[key] = Plan(body, compute_dtype=_compute_dtype)
        k, m = n_carry, n_seq
        names = [body[n].attrs["name"] for n in body.inputs]
        seqs = arrays[k:k + m]
        ax = norm_axis(axis, seqs[0].ndim)
        length = seqs[0].shape[ax]
        if length == 0:
            raise ValueError("scan over an empty sequence")
        feeds = dict(zip(names[k + m:], arrays[k + m:]))
        carries = list(arrays[:k])
        out_names = list(body.outputs)
        stacked: list[list] = [[None] * length for _ in out_names[k:]]
        for t in (range(length - 1, -1, -1) if reverse else range(length)):
            feeds.update(zip(names[:k], carries))
            feeds.update((nm, np.take(s, t, axis=ax)) for nm, s in zip(names[k:k + m], seqs))
            out = plan.run(feeds, dims=_dims)  # outer dims reach attrs like zeros([B, n]) in the cell
            carries = [out[nm] for nm in out_names[:k]]
            for j, nm in enumerate(out_names[k:]):
                stacked[j][t] = out[nm]
        ys = [np.stack(col, axis=min(ax, col[0].ndim)) for col in stacked]
        return tuple(ys) + tuple(carries)

    # -- gradient (BPTT) ----------------------------------------------------------
    def grad(self, b: Builder, inputs, outputs, cts, body, n_carry, n_seq, axis, reverse):
        k, m = n_carry, n_seq
        n_y = len(body.outputs) - k
        ct_ys, ct_final = cts[:n_y], cts[n_y:]
        carries, seqs, captured = inputs[:k], inputs[k:k + m], inputs[k + m:]
        # 1. residuals: the carry each step starts from, stacked in time order
        res_body = body.copy()
        for i, n in enumerate(body.inputs[:k]):
            name = f"res{i}"
            while name in res_body.outputs:  # differentiating a residual scan again (second order)
                name = "_" + name
            res_body.set_output(name, Value(n))
        res = b.apply("scan", *inputs, body=res_body, n_carry=k, n_seq=m, axis=axis, reverse=reverse)
        residuals = list(res[n_y:n_y + k])
        # 2. the backward body: forward body + its VJP, built once
        used_y = [j for j in range(n_y) if ct_ys[j] is not None]
        float_cap = [i for i, v in enumerate(captured) if b.type(v).dtype in FLOATS]
        back = _backward_body(body, k, m, used_y, float_cap)
        zeros = [ct if ct is not None else b.zeros(shape=b.type(c).shape, dtype=b.type(c).dtype)
                 for c, ct in zip(carries, ct_final)]
        acc = [b.zeros(shape=b.type(captured[i]).shape, dtype=b.type(captured[i]).dtype) for i in float_cap]
        out = b.apply("scan", *zeros, *acc, *residuals, *seqs, *[ct_ys[j] for j in used_y], *captured,
                      body=back, n_carry=k + len(float_cap), n_seq=k + m + len(used_y), axis=axis,
                      reverse=not reverse)
        d_seqs = list(out[:m])
        d_init = list(out[m:m + k])
        d_cap = [None] * len(captured)
        for i, v in zip(float_cap, out[m + k:]):
            d_cap[i] = v
        return d_init + d_seqs + d_cap

    # -- ONNX ----------------------------------------------------------------------
    def onnx(self, e, ins, outs, body, n_carry, n_seq, axis, reverse):
        k, m = n_carry, n_seq
        graph_proto = e.subgraph(body, n_formal=k + m, outer=ins[k + m:])
        ranks = [t.rank for t in e.in_types[k:k + m]]
        ax = [norm_axis(axis, r) for r in ranks]
        n_y = len(outs) - k
        out_ax = [min(ax[0], t.rank - 1) for t in e.out_types[:n_y]]
        # ONNX Scan lists final carries first, then stacked outputs; dlc the reverse
        e.node("Scan", list(ins[:k + m]), list(outs[n_y:]) + list(outs[:n_y]), body=graph_proto,
               num_scan_inputs=m, scan_input_axes=ax, scan_input_directions=[int(reverse)] * m,
               scan_output_axes=out_ax, scan_output_directions=[int(reverse)] * n_y)


def _backward_body(body: Graph, k: int, m: int, used_y: list[int], float_cap: list[int]) -> Graph:
    """The body of the reversed scan.

    Inputs: carry cotangents (k), captured-gradient accumulators, then the
    per-step slices (residual carries (k), sequence slices (m), used output
    cotangents), then the captured values.  Outputs: the cotangents of the
    step's input carries and the updated accumulators (the next carries), then
    the cotangents of the sequence slices (stacked by the scan).
    """
    g = Graph(body.name + ".grad")
    b = Builder(g, role="backward")

    def add_input(name: str, t: TensorType) -> Value:
        n = g.add_node("input", (), {"name": name}, (t,), role="backward")
        g.add_input(n)
        return Value(n)

    in_types = [body[n].types[0] for n in body.inputs]
    outs = list(body.outputs.values())
    ct_carry = [add_input(f"dcarry{i}", in_types[i]) for i in range(k)]
    cap_types = in_types[k + m:]
    acc = [add_input(f"dcap{i}", cap_types[i]) for i in float_cap]
    res = [add_input(f"res{i}", in_types[i]) for i in range(k)]
    xs = [add_input(f"x{i}", in_types[k + i]) for i in range(m)]
    ct_y = [add_input(f"dy{j}", body.type_of(outs[k + j])) for j in used_y]
    cap = [add_input(f"cap{i}", t) for i, t in enumerate(cap_types)]
    mapping = dict(zip(body.inputs, res + xs + cap))
    fwd = _inline(body, g, mapping)
    seeds: dict[Value, Value] = {}

    def seed(v: Value, ct: Value) -> None:
        seeds[v] = b.add(seeds[v], ct) if v in seeds else ct

    for i in range(k):
        seed(fwd[outs[i]], ct_carry[i])
    for j, ct in zip(used_y, ct_y):
        seed(fwd[outs[k + j]], ct)
    targets = res + xs + [cap[i] for i in float_cap]
    from ..passes.backprop import vjp

    grads = vjp(g, seeds, targets, b)

    def or_zeros(v: Value, t: TensorType) -> Value:
        g_ = grads[v]
        return g_ if g_ is not None else b.zeros(shape=t.shape, dtype=t.dtype)

    for i in range(k):
        g.set_output(f"carry{i}", or_zeros(res[i], in_types[i]))
    for j, (a, i) in enumerate(zip(acc, float_cap)):
        g.set_output(f"carry{k + j}", b.add(a, or_zeros(cap[i], cap_types[i])))
    for i in range(m):
        g.set_output(f"y{i}", or_zeros(xs[i], in_types[k + i]))
    return g


def _inline(src: Graph, dst: Graph, mapping: dict[int, Value]) -> dict[Value, Value]:
    """Copy ``src``'s non-input nodes into ``dst``; ``mapping`` sends src input
    nodes to dst Values.  Returns src Value → dst Value."""
    vmap: dict[Value, Value] = {Value(n): v for n, v in mapping.items()}
    for n in src.topo_order():
        if n in mapping:
            continue
        d = src[n]
        if d.op in ("input", "param", "state"):
            raise ShapeError(f"scan body has an unbound {d.op} `{d.attrs.get('name')}`")
        new = dst.add_node(d.op, [vmap[v] for v in d.inputs], d.attrs, d.types, loc=d.loc,
                           scope=d.scope, role=d.role, grad_of=d.grad_of)
        for i in range(len(d.types)):
            vmap[Value(n, i)] = Value(new, i)
    return vmap

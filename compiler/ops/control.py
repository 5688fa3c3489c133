"""Control flow: ``scan``, one node with a body subgraph, whatever the length.

Node inputs are ``(c_1..c_k, xs_1..xs_m, v_1..v_p)``: k initial carries, m
sequences (scanned along ``axis``) and p captured values (parameters and
other outer values the body reads).  The body :class:`Graph` has one input
node per (carry, sequence slice, captured value), in that order, and outputs
``carry0..carry{k-1}`` (the next carries) followed by per-step outputs.  The
node's outputs are the stacked per-step outputs (the sequence dim inserted at
``axis``, in time order even when ``reverse``), then the k final carries —
except that the last ``residuals`` per-step outputs are stacked *after* the
final carries: those are the values the gradient reads, appended to an
existing node without moving the outputs other nodes already refer to.

Gradient (back-propagation through time), the way fast RNN libraries do it:
the forward scan itself stacks what the cell's VJP reads per step (the
carries each step started from, gate activations, ...), asked for through
:meth:`Graph.extend_outputs` on the forward node, so a training step sweeps
forward once; a second, reversed scan runs only the VJP over those residuals,
carrying the carries' cotangents and accumulating the captured values'
gradients.  Step-invariant forward values the VJP reads stay in its body (a
pass hoists them, see ``passes/hoist_scan_invariants.py``).  Both are
ordinary ``scan`` nodes, so the graph size does not depend on the sequence
length, and both run in the interpreter and export to ONNX ``Scan``.

The kernel runs the body through the :class:`~.context.KernelContext` its
executor supplies; the op layer never imports the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..builder import Builder
from ..graph import Graph, Value
from ..types import FLOATS, ShapeError, TensorType, norm_axis
from .context import KernelContext
from .registry import Attr, Op, register


@register
class Scan(Op):
    name, family = "scan", "control"
    inputs = ("*args",)
    outputs = None
    attrs = {"body": Attr("any"), "n_carry": Attr("int"), "n_seq": Attr("int", 1),
             "axis": Attr("int", 0), "reverse": Attr("bool", False), "residuals": Attr("int", 0)}
    samples = []
    tested_by = "tests/test_scan.py"  # a body graph cannot be a generic sample

    def flops(self, in_types, out_types, body, n_carry, axis, **attrs):
        """The body's FLOPs times the number of steps."""
        from ..summary import graph_flops

        seq = in_types[n_carry]
        return seq.shape[axis % seq.rank] * graph_flops(body)

    # -- types -------------------------------------------------------------------
    def shape(self, *types, body, n_carry, n_seq, axis, reverse, residuals):
        k, m = n_carry, n_seq
        if len(types) < k + m or len(body.inputs) != len(types):
            raise ShapeError(f"scan body takes {len(body.inputs)} inputs, the node has {len(types)}")
        if m < 1:
            raise ShapeError("a scan needs at least one sequence")
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
        if not 0 <= residuals <= len(stacked):
            raise ShapeError(f"{residuals} residuals, but the body has {len(stacked)} per-step outputs")
        split = len(stacked) - residuals
        return tuple(stacked[:split]) + tuple(types[:k]) + tuple(stacked[split:])

    # -- NumPy -------------------------------------------------------------------
    takes_context = True  # the executor runs the body (ops/context.py)

    def kernel(self, *arrays, body, n_carry, n_seq, axis, reverse, residuals, context: KernelContext):
        k, m = n_carry, n_seq
        seqs = arrays[k:k + m]
        ax = norm_axis(axis, seqs[0].ndim)
        length = seqs[0].shape[ax]
        if length == 0:
            raise ValueError("scan over an empty sequence")
        # s[lead + (t, ...)] is step t's slice, a view — an array even when it is 0-d (a scan over
        # a 1-D sequence: the hidden step index of `lengths`/`steps` with `axis 0`), never a scalar
        lead = (slice(None),) * ax
        order = range(length - 1, -1, -1) if reverse else range(length)
        # a captured value is read at every step: a strided view (a hoisted transpose) is
        # copied once here rather than walked strided by every step's GEMM
        captured = [a if not isinstance(a, np.ndarray) or a.flags.c_contiguous else np.ascontiguousarray(a)
                    for a in arrays[k + m:]]
        args = list(arrays[:k]) + [s[lead + (order[0], ...)] for s in seqs] + captured
        names = [body[n].attrs["name"] for n in body.inputs]
        # shapes are the same at every step: dims are bound and the body checked once
        step = context.bind_body(body, dict(zip(names, args)))
        stacks: list[np.ndarray] = []
        for t in order:
            for i, s in enumerate(seqs):
                args[k + i] = s[lead + (t, ...)]
            out = step(args)
            args[:k] = out[:k]
            if not stacks:  # time-major buffers, filled a step at a time (no list of steps to stack)
                stacks = [np.empty((length,) + np.shape(y), np.asarray(y).dtype) for y in out[k:]]
            for buf, y in zip(stacks, out[k:]):
                buf[t] = y
        # seen through a view with the steps at `axis`: no strided scatter, and a reversed scan
        # reading it back gets contiguous slices
        ys = [np.moveaxis(buf, 0, min(ax, buf.ndim - 1)) for buf in stacks]
        split = len(ys) - residuals
        return tuple(ys[:split]) + tuple(args[:k]) + tuple(ys[split:])

    # -- gradient (BPTT) ----------------------------------------------------------
    def grad(self, b: Builder, inputs, outputs, cts, body, n_carry, n_seq, axis, reverse, residuals):
        k, m = n_carry, n_seq
        n_y = len(body.outputs) - k
        split = n_y - residuals
        ct_ys = list(cts[:split]) + list(cts[split + k:])  # per-step outputs in body order
        ct_final = cts[split:split + k]
        carries, seqs, captured = inputs[:k], inputs[k:k + m], inputs[k + m:]
        ax = norm_axis(axis, b.type(seqs[0]).rank)
        used_y = [j for j in range(n_y) if ct_ys[j] is not None]
        float_cap = [i for i, v in enumerate(captured) if b.type(v).dtype in FLOATS]
        back = _backward_body(body, k, m, used_y, float_cap, ax)
        # the forward node stacks what the VJP reads: no second forward sweep
        stacked = [_steps_at_axis(b, v, body.type_of(u), ax)
                   for v, u in zip(emit_residuals(b.graph, outputs[0].node, back.residuals), back.residuals)]
        zeros = [ct if ct is not None else b.zeros(shape=b.type(c).shape, dtype=b.type(c).dtype)
                 for c, ct in zip(carries, ct_final)]
        acc = [b.zeros(shape=b.type(captured[i]).shape, dtype=b.type(captured[i]).dtype) for i in float_cap]
        per_step = stacked + [seqs[i] for i in back.seqs] + \
            [_steps_at_axis(b, ct_ys[j], body.type_of(list(body.outputs.values())[k + j]), ax) for j in used_y]
        out = b.apply("scan", *zeros, *acc, *per_step, *[captured[i] for i in back.captured],
                      body=back.graph, n_carry=k + len(float_cap), n_seq=len(per_step), axis=ax,
                      reverse=not reverse)
        d_seqs = list(out[:m])
        d_init = list(out[m:m + k])
        d_cap = [None] * len(captured)
        for i, v in zip(float_cap, out[m + k:]):
            d_cap[i] = v
        return d_init + d_seqs + d_cap

    # -- ONNX ----------------------------------------------------------------------
    def onnx(self, e, ins, outs, body, n_carry, n_seq, axis, reverse, residuals):
        k, m = n_carry, n_seq
        graph_proto = e.subgraph(body, n_formal=k + m, outer=ins[k + m:])
        ranks = [t.rank for t in e.in_types[k:k + m]]
        ax = [norm_axis(axis, r) for r in ranks]
        seqs = _read_sequences(graph_proto, k, m)  # onnxruntime slices (and transposes) every scan input
        formal = list(graph_proto.input)
        del graph_proto.input[k:]
        graph_proto.input.extend(formal[k + j] for j in seqs)
        ins, ax, m = list(ins[:k]) + [ins[k + j] for j in seqs], [ax[j] for j in seqs], len(seqs)
        n_y = len(outs) - k
        split = n_y - residuals
        scan_outs = list(outs[:split]) + list(outs[split + k:])
        scan_types = list(e.out_types[:split]) + list(e.out_types[split + k:])
        out_ax = [min(ax[0], t.rank - 1) for t in scan_types]
        # ONNX Scan lists final carries first, then every stacked output in body order
        e.node("Scan", list(ins[:k + m]), list(outs[split:split + k]) + scan_outs, body=graph_proto,
               num_scan_inputs=m, scan_input_axes=ax, scan_input_directions=[int(reverse)] * m,
               scan_output_axes=out_ax, scan_output_directions=[int(reverse)] * n_y)


def _steps_at_axis(b: Builder, stacked: Value, t: TensorType, ax: int) -> Value:
    """A per-step value of type ``t`` stacked by a scan over ``axis`` ``ax``, as a sequence
    a scan over the same axis reads.  A value of rank < ``ax`` is stacked with its steps
    last (``[*t.shape, T]``): unit axes up to ``ax`` put them there, and the reading body
    squeezes them off (:func:`_backward_body`, ``step_input``)."""
    if t.rank >= ax:
        return stacked
    return b.unsqueeze(stacked, axes=tuple(range(t.rank, ax)))


def _read_sequences(graph_proto, k: int, m: int) -> list[int]:
    """The sequence inputs (0..m-1) the body reads; at least one, which sets the trip count.
    A BPTT scan is handed every forward sequence, though after hoisting its body reads few."""
    read = _names_read(graph_proto)
    seqs = [j for j in range(m) if graph_proto.input[k + j].name in read]
    return seqs or [0]


def _names_read(graph_proto) -> set[str]:
    """Every value name a graph's nodes read, nested subgraphs (which see it by name) included."""
    read = {o.name for o in graph_proto.output}
    for node in graph_proto.node:
        read.update(node.input)
        for a in node.attribute:
            if a.g.node or a.g.output:
                read |= _names_read(a.g)
    return read


def emit_residuals(graph: Graph, node: int, sources: list[Value]) -> list[Value]:
    """The stacked per-step values of body Values ``sources`` from scan ``node``.

    A source the body already emits per step (itself, or through an
    ``identity``) is read from that output; the others become residual
    outputs appended to the node (:meth:`Graph.extend_outputs`, on a copy of
    its body, so other graphs sharing the body are untouched)."""
    rec = graph[node]
    attrs = rec.attrs
    body, k = attrs["body"], attrs["n_carry"]
    per_step = list(body.outputs.values())[k:]
    split = len(per_step) - attrs["residuals"]
    index: dict[Value, int] = {}
    for j, v in enumerate(per_step):
        position = j if j < split else j + k
        index.setdefault(v, position)
        if body[v.node].op == "identity":
            index.setdefault(body[v.node].inputs[0], position)
    missing = [u for u in dict.fromkeys(sources) if u not in index]
    if missing:
        new_body = body.copy()
        nb = Builder(new_body, role=body[missing[0].node].role)
        carried = set(list(body.outputs.values())[:k])
        # an ONNX body names its inputs and outputs alike: a backward body has inputs `res{i}`
        taken = set(new_body.outputs) | {body[n].attrs["name"] for n in body.inputs}
        for j, u in enumerate(missing):
            name = next(f"res{i}" for i in range(len(taken) + 1) if f"res{i}" not in taken)
            taken.add(name)
            index[u] = len(rec.types) + j
            # an output already naming this value is a carry: give the residual its own node
            new_body.set_output(name, nb.identity(u) if u in carried else u)
        new_attrs = {**attrs, "body": new_body, "residuals": attrs["residuals"] + len(missing)}
        types = Scan().shape(*[graph.type_of(v) for v in rec.inputs], **new_attrs)
        graph.extend_outputs(node, new_attrs, types)
    return [Value(node, index[u]) for u in sources]


@dataclass
class _Backward:
    graph: Graph  # the reversed scan's body
    residuals: list[Value]  # forward-body values it reads per step (stacked by the forward scan)
    seqs: list[int]  # forward sequences it reads per step (after the residuals)
    captured: list[int]  # forward captured values it reads


def _backward_body(body: Graph, k: int, m: int, used_y: list[int], float_cap: list[int], ax: int) -> _Backward:
    """The body of the reversed scan: the cell's VJP, reading stacked residuals.

    Inputs: carry cotangents (k) and captured-gradient accumulators (the
    carries), then per-step slices — residuals, forward sequence slices the
    VJP reads, used output cotangents — then the captured values it reads.
    Outputs: the cotangents of the step's input carries and the updated
    accumulators (the next carries), then the cotangents of the m sequence
    slices (stacked by the scan).

    Built as forward body + symbolic VJP; then every step-dependent forward
    value the VJP reads becomes a residual input (the forward scan stacks it),
    and the forward nodes nothing reads any more are dropped.  Forward values
    that do not change from step to step are left in the body.
    """
    g = Graph(body.name + ".grad")
    b = Builder(g, role="backward")

    def add_input(name: str, t: TensorType) -> Value:
        n = g.add_node("input", (), {"name": name}, (t,), role="backward")
        g.add_input(n)
        return Value(n)

    def step_input(name: str, t: TensorType) -> tuple[Value, Value]:
        """(input, its value of type ``t``) for a per-step slice of a stacked value: one of
        rank < ``ax`` arrives with unit axes up to the scanned axis (:func:`_steps_at_axis`)."""
        if t.rank >= ax:
            v = add_input(name, t)
            return v, v
        v = add_input(name, t.with_shape(t.shape + (1,) * (ax - t.rank)))
        return v, b.squeeze(v, axes=tuple(range(t.rank, ax)))

    in_types = [body[n].types[0] for n in body.inputs]
    outs = list(body.outputs.values())
    ct_carry = [add_input(f"dcarry{i}", in_types[i]) for i in range(k)]
    cap_types = in_types[k + m:]
    acc = [add_input(f"dcap{i}", cap_types[i]) for i in float_cap]
    res_in, res = zip(*[step_input(f"res{i}", in_types[i]) for i in range(k)]) if k else ((), ())
    res_in, res = list(res_in), list(res)  # the carry each step started from
    xs = [add_input(f"x{i}", in_types[k + i]) for i in range(m)]
    ct_y_in, ct_y = zip(*[step_input(f"dy{j}", body.type_of(outs[k + j])) for j in used_y]) if used_y else ((), ())
    cap = [add_input(f"cap{i}", t) for i, t in enumerate(cap_types)]
    mapping = dict(zip(body.inputs, res + xs + cap))
    fwd = _inline(body, g, mapping)
    forward_nodes = {v.node for v in fwd.values()} - {v.node for v in mapping.values()}
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

    # step-dependent forward values the VJP reads become residual inputs
    variant = g.descendants(v.node for v in res + xs) & forward_nodes
    source_of = {gv: bv for bv, gv in fwd.items()}
    stash: dict[Value, Value] = {}

    def stashed(v: Value) -> Value:
        if v.node not in variant or g.type_of(v).rank < ax:  # a stack must have the scanned axis
            return v
        if v not in stash:
            stash[v] = add_input(f"r{len(stash)}", g.type_of(v))
        return stash[v]

    for n in [n for n in g.nodes() if n not in forward_nodes and g[n].op != "input"]:
        for i, v in enumerate(g[n].inputs):
            if stashed(v) != v:
                g.set_input(n, i, stash[v])
    for name, v in list(g.outputs.items()):
        g.set_output(name, stashed(v))
    g.prune({v.node for v in g.outputs.values()})

    def read(v: Value) -> bool:
        return bool(g.consumers(v.node)) or v in g.outputs.values()

    used_res = [i for i in range(k) if read(res_in[i])]
    used_xs = [i for i in range(m) if read(xs[i])]
    if not (stash or used_res or used_xs or used_y):
        used_xs = [0]  # a scan needs a sequence to count its steps
    used_cap = [i for i in range(len(cap)) if read(cap[i])]
    g.remove_nodes([v.node for i, v in enumerate(res_in) if i not in used_res]
                   + [v.node for i, v in enumerate(xs) if i not in used_xs]
                   + [v.node for i, v in enumerate(cap) if i not in used_cap])
    g.set_inputs([v.node for v in ct_carry + acc + list(stash.values())] + [res_in[i].node for i in used_res]
                 + [xs[i].node for i in used_xs] + [v.node for v in ct_y_in] + [cap[i].node for i in used_cap])
    residuals = [source_of[v] for v in stash] + [Value(body.inputs[i]) for i in used_res]
    return _Backward(g, residuals, used_xs, used_cap)


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

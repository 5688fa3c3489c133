"""Hoist loop-invariant work out of ``scan`` bodies: big GEMMs instead of T small ones.

Rewrites applied to every scan of a graph, in this order (inference graphs
and training steps alike; results equal the graph as lowered within float
rounding):

1. **Unread per-step outputs** stop being stacked (BPTT's cotangent of a
   sequence that is a model input; a cell output whose stack nobody uses).
2. **Input projections before the loop.**  A body ``matmul(x_t, W)``, ``x_t``
   a slice of a scanned sequence and ``W`` a captured matrix, becomes one
   ``matmul(xs, W)`` over all steps ([B, T, I] @ [I, H]); the scan reads the
   projected sequence, and drops ``xs`` and ``W`` when nothing else reads them.
3. **Elementwise maps of slices** (``p_t + b`` with ``b`` captured, a ``split``
   of a slice along a feature axis, ``y_t * (1 - y_t)`` of BPTT's residuals)
   run once over the whole sequence, layer by layer; ``(p_t + q_t) + b`` is
   first reassociated to ``(p_t + b) + q_t`` (the cell's bias joins the
   projection).
4. **Step-invariant nodes** (reading only captured values: ``transpose(Wh)``
   in BPTT's body) are computed once, outside, and captured.
5. **Weight gradients after the loop.**  A carry that only accumulates,
   ``acc' = acc + g_t`` (BPTT's reversed scan sums a captured value's
   gradient so), leaves the loop when ``g_t`` is ``matmul(transpose(u_t),
   w_t)`` (→ one GEMM over the stacked ``u`` and ``w``, steps and batch
   merged into the contraction), ``sum_to(w_t)`` (→ one ``sum_to`` of the
   stacked ``w``) or ``w_t`` itself (→ a sum over the scanned axis): the scan
   stacks ``w_t`` (and ``u_t`` unless it is a scanned sequence already, which
   the body stops reading when nothing else there reads it).

What is left in the body of BPTT's reversed scan is the part of the cell's
VJP that depends on the carried cotangents.  A rewritten scan is rebuilt as
a new node and every use of the old node's outputs moves to it.
"""
from __future__ import annotations

from ..builder import Builder
from ..graph import Graph, Value
from ..types import norm_axis
from .hoist_scan_accumulators import hoist_accumulators
from .scan_rewrite import Scan, binary_nodes, drop_unread, rebuild


def hoist_scan_invariants(graph: Graph, backend: str = "numpy") -> int:
    """Rewrite every ``scan`` of ``graph`` in place (see the module docstring);
    returns how many scans changed.  ``backend``: whose scans will run the graph (the
    layout of their stacked outputs decides the weight-gradient GEMMs' row order)."""
    changed = 0
    for n in [n for n in graph.topo_order() if graph.op(n) == "scan"]:
        if not _read_outputs(graph, n):
            continue  # dead (a map whose result nobody uses): dce removes it; rebuilt, it would have no outputs
        first = n
        n = _drop_unread_outputs(graph, n)
        n = _hoist_projections(graph, n)
        n = _hoist_maps(graph, n)
        n = _hoist_invariant_nodes(graph, n)
        n = hoist_accumulators(graph, n, step_major_stacks=backend == "numpy")
        changed += n != first
    return changed

# -- per-step outputs nobody reads ---------------------------------------------------------------
def _drop_unread_outputs(graph: Graph, n: int) -> int:
    """Stop stacking per-step outputs the graph never reads (BPTT's cotangent of a
    sequence that is an input, a cell output only its last carry is used of)."""
    s = Scan(graph, n)
    read = _read_outputs(graph, n)
    dead = [j for j in range(s.n_y) if Value(n, s.out_index(j)) not in read]
    if not dead:
        return n
    outs = list(s.body.outputs.items())
    new_body = s.body.copy()
    new_body.set_outputs(dict(o for i, o in enumerate(outs) if i < s.k or i - s.k not in dead))
    new_body.prune({v.node for v in new_body.outputs.values()})
    live = [j for j in range(s.n_y) if j not in dead]
    split = sum(1 for j in live if j < s.split)
    moved = {s.out_index(j): (i if i < split else i + s.k) for i, j in enumerate(live)}
    moved.update({s.split + c: split + c for c in range(s.k)})
    s.res = sum(1 for j in live if j >= s.split)  # residuals kept
    new = rebuild(graph, s, new_body, s.carries, s.seqs, s.captured, 0, moved)
    graph.remove_nodes([n])
    return new


def _read_outputs(graph: Graph, n: int) -> set[Value]:
    """The outputs of node ``n`` that another node, a graph output or a next state reads."""
    read = {v for u in graph.consumers(n) for v in graph[u].inputs if v.node == n}
    read |= {v for v in graph.outputs.values() if v.node == n}
    read |= {v for _, v in graph.state.values() if v is not None and v.node == n}
    return read


# -- step-invariant nodes ---------------------------------------------------------------------------
def _hoist_invariant_nodes(graph: Graph, n: int) -> int:
    """Compute outside the loop what reads only captured values (``transpose(Wh)``
    in BPTT's body); the scan captures the result instead."""
    s = Scan(graph, n)
    body = s.body
    cap_nodes = list(body.inputs[s.k + s.m:])
    outer = dict(zip(cap_nodes, s.captured))
    invariant: set[int] = set()
    for node in body.topo_order():
        rec = body[node]
        if node in outer or rec.op in ("const", "fill") or (
                rec.op not in ("input", "param", "state") and rec.inputs and not _is_random(rec.op)
                and all(v.node in invariant for v in rec.inputs)):
            invariant.add(node)
    computed = {node for node in invariant if node not in outer and body[node].op not in ("const", "fill")}
    readers = [u for u in body.nodes() if u not in invariant]
    frontier = list(dict.fromkeys(v for u in readers for v in body[u].inputs if v.node in computed))
    frontier += [v for v in body.outputs.values() if v.node in computed and v not in frontier]
    if not frontier:
        return n
    new_body = body.copy()
    vmap = {Value(c): v for c, v in outer.items()}
    new_caps = []
    for node in body.topo_order():  # copy the invariant nodes out, in order, with their consts
        rec = body[node]
        if node in computed or (node in invariant and node not in outer and any(
                u in computed for u in body.consumers(node))):
            out = graph.add_node(rec.op, [vmap[v] for v in rec.inputs], rec.attrs, rec.types, loc=rec.loc,
                                 scope=rec.scope or s.rec.scope, role=s.rec.role, grad_of=s.rec.grad_of)
            for i in range(len(rec.types)):
                vmap[Value(node, i)] = Value(out, i)
    for v in frontier:
        p = new_body.add_node("input", (), {"name": f"inv{len(new_caps)}_{v.node}_{v.index}"},
                              (body.type_of(v),), role=body[v.node].role)
        new_body.replace_uses(v, Value(p))
        new_caps.append((p, vmap[v]))
    new_body.prune({v.node for v in new_body.outputs.values()})
    new_caps = [(p, v) for p, v in new_caps if p in new_body]  # (one only dead nodes read went with them)
    stay = drop_unread(new_body, cap_nodes, set())
    new_body.set_inputs(list(body.inputs[:s.k + s.m]) + [c for c, ok in zip(cap_nodes, stay) if ok]
                        + [p for p, _ in new_caps])
    captured = [v for v, ok in zip(s.captured, stay) if ok] + [v for _, v in new_caps]
    new = rebuild(graph, s, new_body, s.carries, s.seqs, captured, 0, {i: i for i in range(len(s.rec.types))})
    graph.remove_nodes([n])
    return new


def _is_random(op: str) -> bool:
    from ..ops.registry import get_op

    return get_op(op).family == "random"


# -- input projections ---------------------------------------------------------------------
def _hoist_projections(graph: Graph, n: int) -> int:
    s = Scan(graph, n)
    body = s.body
    slice_of = {node: i for i, node in enumerate(body.inputs[s.k:s.k + s.m])}
    cap_of = {node: i for i, node in enumerate(body.inputs[s.k + s.m:])}
    found = []
    for node, _, a, w in binary_nodes(body, "matmul"):
        if a.node in slice_of and w.node in cap_of and body.type_of(w).rank == 2 \
                and s.ax < body.type_of(a).rank:  # the steps are rows, not the contracted axis
            found.append((node, slice_of[a.node], cap_of[w.node]))
    if not found:
        return n
    b = Builder(graph)
    new_body = body.copy()
    projected = []
    with b.at(scope=s.rec.scope, loc=s.rec.loc, role=s.rec.role, grad_of=s.rec.grad_of):
        for node, i, j in found:
            projected.append(b.matmul(s.seqs[i], s.captured[j]))
            t = body[node].types[0]
            p = new_body.add_node("input", (), {"name": f"proj{len(projected) - 1}_{node}"}, (t,),
                                  role=body[node].role)
            new_body.replace_uses(Value(node), Value(p))
    new_body.remove_nodes([node for node, _, _ in found])
    proj_inputs = [v for v in new_body.nodes() if new_body.op(v) == "input" and v not in body.inputs]
    seq_nodes, cap_nodes = list(body.inputs[s.k:s.k + s.m]), list(body.inputs[s.k + s.m:])
    seq_stay = drop_unread(new_body, seq_nodes, set())
    cap_stay = drop_unread(new_body, cap_nodes, set())
    new_body.set_inputs(list(body.inputs[:s.k]) + [v for v, ok in zip(seq_nodes, seq_stay) if ok]
                        + proj_inputs + [v for v, ok in zip(cap_nodes, cap_stay) if ok])
    seqs = [v for v, ok in zip(s.seqs, seq_stay) if ok] + projected
    captured = [v for v, ok in zip(s.captured, cap_stay) if ok]
    moved = {i: i for i in range(len(s.rec.types))}  # the outputs do not change
    new = rebuild(graph, s, new_body, s.carries, seqs, captured, 0, moved)
    graph.remove_nodes([n])
    return new


# -- per-step maps of the sequences -----------------------------------------------------------------
_ELEMENTWISE = ("add", "sub", "mul", "div")


def _hoist_maps(graph: Graph, n: int) -> int:
    """Move elementwise work on sequence slices out of the loop: ``p_t + b``
    (b captured or a scalar constant), a ``split`` of a slice along a feature
    axis, and whatever such nodes compute from each other run once over the
    whole sequence; the scan reads the results as sequences.  ``(p_t + q) + b``
    with ``q`` step-dependent is first reassociated to ``(p_t + b) + q`` (the
    LSTM's ``x @ Wx + h @ Wh + b``).  One sweep over the body."""
    n = _reassociate_biases(graph, n)
    s = Scan(graph, n)
    body = s.body
    slices = dict(zip(body.inputs[s.k:s.k + s.m], s.seqs))
    caps = dict(zip(body.inputs[s.k + s.m:], s.captured))
    mapped = {Value(node) for node in slices}  # body values that are one slice of a sequence
    maps = []  # mappable nodes, in order
    for node in body.topo_order():
        rec = body[node]
        if rec.op == "split":
            ok = rec.inputs[0] in mapped
        elif rec.op in _ELEMENTWISE and any(v in mapped for v in rec.inputs):
            ok = all(_map_operand(body, s, v, rec.types[0], mapped, caps) for v in rec.inputs)
        else:
            ok = False
        if ok:
            maps.append(node)
            mapped.update(body.out_values(node))
    computed = set(maps)
    frontier = list(dict.fromkeys(
        [v for u in body.nodes() if u not in computed for v in body[u].inputs if v.node in computed]
        + [v for v in body.outputs.values() if v.node in computed]))
    if not frontier:
        return n
    needed, todo = set(), [v.node for v in frontier]
    while todo:
        node = todo.pop()
        if node in computed and node not in needed:
            needed.add(node)
            todo.extend(v.node for v in body[node].inputs)
    outer = {Value(node): v for node, v in slices.items()}
    b = Builder(graph)
    with b.at(scope=s.rec.scope, loc=s.rec.loc, role=s.rec.role, grad_of=s.rec.grad_of):
        for node in (x for x in maps if x in needed):
            rec = body[node]
            ins = [outer[v] if v in outer else caps[v.node] if v.node in caps else b.const(
                body[v.node].attrs["value"], body.type_of(v).dtype) for v in rec.inputs]
            attrs = dict(rec.attrs)
            if rec.op == "split":
                axis = norm_axis(attrs["axis"], rec.types[0].rank)
                attrs["axis"] = axis + (axis >= s.ax)  # the same feature axis of the stacked sequence
            out = b.apply(rec.op, *ins, **attrs)
            for v, o in zip(body.out_values(node), out if isinstance(out, tuple) else (out,)):
                outer[v] = o
    new_body = body.copy()
    inputs = []
    for v in frontier:
        p = new_body.add_node("input", (), {"name": f"map{v.node}_{v.index}"}, (body.type_of(v),),
                              role=body[v.node].role)
        new_body.replace_uses(v, Value(p))
        inputs.append(p)
    new_body.prune({v.node for v in new_body.outputs.values()})
    # a mapped value only dead nodes of the cell read (the GRU's reset gate when the candidate
    # ignores it) went with them: its input is gone, and the scan does not read it
    frontier, inputs = [v for v, p in zip(frontier, inputs) if p in new_body], [p for p in inputs if p in new_body]
    seq_nodes, cap_nodes = list(body.inputs[s.k:s.k + s.m]), list(body.inputs[s.k + s.m:])
    seq_stay = drop_unread(new_body, seq_nodes, set())
    cap_stay = drop_unread(new_body, cap_nodes, set())
    new_body.set_inputs(list(body.inputs[:s.k]) + [v for v, ok in zip(seq_nodes, seq_stay) if ok]
                        + inputs + [v for v, ok in zip(cap_nodes, cap_stay) if ok])
    seqs = [v for v, ok in zip(s.seqs, seq_stay) if ok] + [outer[v] for v in frontier]
    captured = [v for v, ok in zip(s.captured, cap_stay) if ok]
    new = rebuild(graph, s, new_body, s.carries, seqs, captured, 0, {i: i for i in range(len(s.rec.types))})
    graph.remove_nodes([n])
    return new


def _map_operand(body: Graph, s: Scan, v: Value, out, mapped: set, caps: dict) -> bool:
    """Whether operand ``v`` of an elementwise node with result type ``out`` can
    be read from outside: a slice of the same shape, a captured value that
    broadcasts over trailing axes only, or a scalar constant."""
    t = body.type_of(v)
    if v in mapped:
        return t.shape == out.shape
    if v.node in caps:
        return t.rank <= out.rank - s.ax
    return body.op(v.node) == "const" and t.rank == 0


def _reassociate_biases(graph: Graph, n: int) -> int:
    """``(p_t + q_t) + b`` → ``(p_t + b) + q_t`` in the body, with ``p_t`` a
    sequence slice, ``b`` captured and the inner sum read nowhere else (not by another
    node, nor as a carry or per-step output: the rewrite changes its value)."""
    s = Scan(graph, n)
    body = s.body
    slices = set(body.inputs[s.k:s.k + s.m])
    caps = set(body.inputs[s.k + s.m:])
    outputs = set(body.outputs.values())
    plans = []
    for node, rec, inner, bias in binary_nodes(body, "add"):
        if inner.node in caps:
            inner, bias = bias, inner
        if bias.node not in caps or body.op(inner.node) != "add" or body.consumers(inner.node) != [node] \
                or inner in outputs:
            continue
        p, q = body[inner.node].inputs
        if q.node in slices:
            p, q = q, p
        if p.node in slices and q.node not in slices and body.type_of(p) == rec.types[0] \
                and body.type_of(inner) == rec.types[0]:
            plans.append((node, inner.node, p, q, bias))
    if not plans:
        return n
    new_body = body.copy()
    for node, inner, p, q, bias in plans:
        new_body.set_input(inner, 0, p)
        new_body.set_input(inner, 1, bias)  # inner = p + b
        new_body.set_input(node, 0, Value(inner))
        new_body.set_input(node, 1, q)  # node = (p + b) + q
    new = rebuild(graph, s, new_body, s.carries, s.seqs, s.captured, 0, {i: i for i in range(len(s.rec.types))})
    graph.remove_nodes([n])
    return new

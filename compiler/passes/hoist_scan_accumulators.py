"""Weight gradients after the loop (step 5 of ``hoist_scan_invariants``): a carry
that only accumulates, ``acc' = acc + g_t``, leaves the scan; the scan stacks
the per-step operands and one GEMM, ``sum_to`` or sum after it adds them up."""
from __future__ import annotations

from ..builder import Builder
from ..graph import Graph, Value
from ..types import FLOATS
from .scan_rewrite import Scan, drop_unread, rebuild


# -- accumulated gradients -------------------------------------------------------------------
def hoist_accumulators(graph: Graph, n: int, step_major_stacks: bool = True) -> int | None:
    """Hoist the accumulator carries of scan ``n``; returns the new node (None when nothing of
    the loop is left: every output was such a sum over the sequences).  ``step_major_stacks``:
    the executor stacks per-step outputs step-major whatever the axis (the NumPy scan; an
    ONNX ``Scan`` stacks them at their axis), which the GEMMs' row order follows."""
    s = Scan(graph, n)
    body = s.body
    outs = list(body.outputs.items())
    plans = {}  # carry index → (kind, per-step body Values to stack, add node)
    for c in range(s.k):
        plan = _accumulator(body, s, c, outs[c][1])
        if plan is not None:
            plans[c] = plan
    if not plans:
        return n
    new_body = body.copy()
    seq_inputs = {node: i for i, node in enumerate(body.inputs[s.k:s.k + s.m])}
    per_step = {v: j for j, (_, v) in reversed(list(enumerate(outs[s.k:])))}  # already stacked
    emitted: dict[Value, int] = {}  # per-step body Value → index among the new tail outputs
    for c, (_, values, _) in plans.items():
        for v in values:
            if v.node not in seq_inputs and v not in per_step and v not in emitted:
                emitted[v] = len(emitted)
    keep_outs = [(name, v) for i, (name, v) in enumerate(outs) if i >= s.k or i not in plans]
    tail = {f"acc{i}": (Builder(new_body).identity(v) if v in {o for _, o in outs} else v)
            for v, i in emitted.items()}
    new_body.set_outputs(dict(keep_outs) | tail)
    carry_nodes = list(body.inputs[:s.k])
    new_body.remove_nodes([add for _, _, add in plans.values()] + [carry_nodes[c] for c in plans])
    new_body.set_inputs([v for c, v in enumerate(carry_nodes) if c not in plans] + list(body.inputs[s.k:]))
    new_body.prune({v.node for v in new_body.outputs.values()})  # the per-step increments are dead now
    # a sequence only an increment read (the x_t of x_t^T @ dG_t) is no longer sliced at every
    # step; the first one stays when none is read (a scan takes its length from a sequence)
    seq_nodes = list(body.inputs[s.k:s.k + s.m])
    read = [bool(new_body.consumers(x)) for x in seq_nodes]
    seq_stay = drop_unread(new_body, seq_nodes, set() if any(read) else {seq_nodes[0]})
    new_body.set_inputs([v for c, v in enumerate(carry_nodes) if c not in plans]
                        + [v for v, ok in zip(seq_nodes, seq_stay) if ok] + list(body.inputs[s.k + s.m:]))
    kept = [c for c in range(s.k) if c not in plans]
    moved = {j: j for j in range(s.split)}
    moved.update({s.split + c: s.split + new_c for new_c, c in enumerate(kept)})
    k2 = len(kept)
    moved.update({s.out_index(j): s.split + k2 + (j - s.split) for j in range(s.split, s.n_y)})
    seqs = [v for v, ok in zip(s.seqs, seq_stay) if ok]
    if kept or emitted or s.n_y:
        new = rebuild(graph, s, new_body, [s.carries[c] for c in kept], seqs, s.captured, len(emitted), moved)
    else:  # every output was a sum of the sequences themselves (a running total): no loop is left
        new = None
    # the sums over the steps, once, after the loop
    first_tail = s.split + k2 + s.res
    b = Builder(graph)
    rec = s.rec

    def stacked(v: Value) -> Value:
        if v.node in seq_inputs:
            return s.seqs[seq_inputs[v.node]]
        if v in per_step:
            return Value(new, moved[s.out_index(per_step[v])])
        return Value(new, first_tail + emitted[v])

    with b.at(scope=rec.scope, loc=rec.loc, role=rec.role, grad_of=rec.grad_of):
        for c, (kind, values, _) in plans.items():
            t = graph.type_of(s.carries[c])
            if kind == "gemm":
                u, w = (stacked(v) for v in values)
                steps_first = s.ax != 0 and step_major_stacks and _steps_first_is_cheaper(graph, [u, w])
                flat_u, flat_w = (_rows(b, graph, v, s.ax if steps_first else 0) for v in (u, w))
                total = b.matmul(b.transpose(flat_u, perm=(1, 0)), flat_w)
            elif kind == "sum_to":
                total = b.sum_to(stacked(values[0]), shape=t.shape)
            else:
                total = b.sum(stacked(values[0]), axes=(s.ax,))
            init = s.carries[c]
            if not _is_zero(graph, init):
                total = b.add(init, total)
            graph.replace_uses(Value(s.n, s.split + c), total)
    graph.remove_nodes([n])
    return new


def _rows(b: Builder, graph: Graph, v: Value, ax: int) -> Value:
    """Stacked ``v`` ([.., steps at ``ax``, .., n]) as a matrix of rows [steps·rest, n]: with the
    steps axis moved first when ``ax`` > 0.  sum_t u_t^T w_t = U^T W holds for any row order
    shared by U and W, so the order is free to follow the operands' memory."""
    if ax:
        rank = graph.type_of(v).rank
        v = b.transpose(v, perm=(ax,) + tuple(i for i in range(rank) if i != ax))
    return b.reshape(v, shape=(-1, graph.type_of(v).shape[-1]))


def _steps_first_is_cheaper(graph: Graph, operands: list[Value]) -> bool:
    """Whether to contract over the rows in step-major order (see :func:`_rows`).

    The NumPy scan kernel stacks its per-step outputs in step-major buffers (seen through a
    view with the steps at ``axis``), so flattening a scan's output in step order is free
    and in declared order is a copy; any other value is laid out as declared.  The operands
    share their leading dims, so the bytes a choice copies follow their last dims: pick the
    order that copies the narrower operands (step order on a tie).  An ONNX ``Scan`` stacks
    at the axis, which makes the declared order free (``step_major_stacks`` off)."""
    width = {True: 0, False: 0}  # produced by a scan → summed width of the last dims
    for v in operands:
        d = graph.type_of(v).shape[-1]
        width[graph[v.node].op == "scan"] += d if isinstance(d, int) else 1
    return width[False] <= width[True]


def _accumulator(body: Graph, s: Scan, c: int, out: Value):
    """If carry ``c`` is ``acc + g_t`` with a hoistable ``g_t``: (kind, values, add node)."""
    cin = body.inputs[c]
    t = body[cin].types[0]
    if t.dtype not in FLOATS or body[out.node].op != "add" or out.index != 0:
        return None
    add = out.node
    if body.consumers(cin) != [add] or body.consumers(add) or Value(cin) in body.outputs.values() or \
            sum(v == out for v in body.outputs.values()) != 1:
        return None  # the running value is read at every step (an exclusive prefix sum returns `acc`)
    a, g = body[add].inputs
    if g == Value(cin):
        a, g = g, a
    if a != Value(cin) or g.node == cin or body.type_of(g) != t:
        return None
    if body.consumers(g.node) != [add]:
        return None  # the increment is read elsewhere too: keep the loop as it is
    rec = body[g.node]
    if rec.op == "matmul" and t.rank == 2:
        ut, w = rec.inputs
        if body[ut.node].op == "transpose" and tuple(body[ut.node].attrs["perm"] or (1, 0)) == (1, 0):
            u = body[ut.node].inputs[0]
            if body.type_of(u).rank == 2 and body.type_of(w).rank == 2 and s.ax <= 1 \
                    and body.consumers(ut.node) == [g.node]:
                return "gemm", [u, w], add
    if rec.op == "sum_to":
        w = rec.inputs[0]
        rank = body.type_of(w).rank + 1
        if s.ax < rank - t.rank and s.ax <= body.type_of(w).rank:  # the steps fall among the summed axes
            return "sum_to", [w], add
    if s.ax <= t.rank:
        return "sum", [g], add
    return None


def _is_zero(graph: Graph, v: Value) -> bool:
    rec = graph[v.node]
    return rec.op == "fill" and rec.attrs["value"] == 0.0

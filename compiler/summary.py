"""`dlc summary`: a per-layer table of output shapes, parameters and FLOPs.

Rows are scopes (the binding paths that own nodes), in the order their first
node runs.  FLOPs count one multiply-add as two and every elementwise result
as one; shape-only ops are free.  They are per example: the batch dims (the
symbolic leading dims of the inputs) are set to 1 and any other symbolic dim
(a sequence length ``T``) stays in the formula.
"""
from __future__ import annotations

from .dims import Dim, Sym, size_of
from .graph import SOURCE_OPS, Graph

FREE_OPS = {"reshape", "flatten", "transpose", "squeeze", "unsqueeze", "slice", "concat", "split", "stack",
            "broadcast_to", "gather", "cast", "identity", "fill", "pad", "one_hot", "argmax"}


def _size(shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return n


def node_flops(g: Graph, n: int) -> Dim:
    """FLOPs of one node (symbolic dims kept)."""
    d = g[n]
    op = d.op
    if op in SOURCE_OPS or op in FREE_OPS:
        return 0
    ins = [g.type_of(v) for v in d.inputs]
    out = d.types[0]
    if op == "matmul":
        return 2 * _size(out.shape) * ins[0].shape[-1]
    if op.startswith("conv") and "grad" not in op:
        w = ins[1].shape
        return 2 * _size(out.shape) * _size(w[1:])
    if op == "scan":
        body = d.attrs["body"]
        seq = ins[d.attrs["n_carry"]]
        length = seq.shape[d.attrs["axis"] % seq.rank]
        return length * graph_flops(body)
    return sum((_size(t.shape) for t in d.types), 0)


def graph_flops(g: Graph) -> Dim:
    return sum((node_flops(g, n) for n in g.topo_order()), 0)


def _per_example(value: Dim, batch: set[str]) -> Dim:
    return value.evaluate({b: 1 for b in batch}) if isinstance(value, Sym) else value


def batch_dims(g: Graph) -> set[str]:
    out = set()
    for n in g.inputs:
        shape = g[n].types[0].shape
        if shape and isinstance(shape[0], Sym) and shape[0].single_var():
            out.add(shape[0].single_var())
    return out


def summary_rows(g: Graph) -> list[tuple[str, str, int, Dim]]:
    """(scope, output type, parameter count, FLOPs per example) per scope."""
    batch = batch_dims(g)
    order: list[str] = []
    last_type: dict[str, str] = {}
    flops: dict[str, Dim] = {}
    live = g.ancestors({v.node for v in g.outputs.values()})  # not state updates nobody reads at inference
    for n in g.topo_order():
        d = g[n]
        if d.op in SOURCE_OPS or n not in live:
            continue
        scope = d.scope or "(model)"
        if scope not in flops:
            order.append(scope)
            flops[scope] = 0
        flops[scope] = flops[scope] + node_flops(g, n)
        last_type[scope] = ", ".join(str(t) for t in d.types)
    params: dict[str, int] = {}
    for name, n in g.params.items():
        scope = name.rsplit(".", 1)[0] if "." in name else "(model)"
        params[scope] = params.get(scope, 0) + size_of(g[n].types[0].shape)
        if scope not in flops:
            order.append(scope)
            flops[scope] = 0
            last_type[scope] = "-"
    return [(s, last_type[s], params.get(s, 0), _per_example(flops[s], batch)) for s in order]


def summary_table(g: Graph, params=None) -> str:
    rows = summary_rows(g)
    header = ("layer", "output", "params", "FLOPs/example")
    body = [(s, t, f"{p:,}", f"{f:,}" if isinstance(f, int) else str(f)) for s, t, p, f in rows]
    total_p = sum(r[2] for r in rows)
    total_f = _per_example(graph_flops(g), batch_dims(g))
    footer = ("total", "", f"{total_p:,}", f"{total_f:,}" if isinstance(total_f, int) else str(total_f))
    widths = [max(len(r[i]) for r in [header, footer, *body]) for i in range(4)]

    def fmt(r):
        return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].rjust(widths[3])])

    rule = "-" * len(fmt(header))
    outs = ", ".join(f"{k}: {g.type_of(v)}" for k, v in g.outputs.items())
    return "\n".join([f"model {g.name}", rule, fmt(header), rule, *map(fmt, body), rule, fmt(footer),
                      f"outputs: {outs}"])

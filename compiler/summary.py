"""`dlc summary`: one row per layer call or loose op, in execution order.

A row is either every node of one top-level binding scope (a layer call such as
``h = dense(x, 64)``, nested scopes folded in) or the nodes of one op call
written outside any layer (``max_pool2d(...)``, ``cross_entropy(...)``: the
nodes a composite op expands into share the call's source span).  Rows come in
the order their first node runs.  Each row shows

- ``name``: the binding the row's values go to (every name of ``a, b = f(x)``);
- ``type``: the layer (``dense``) or the op as written (``max_pool2d``, ``@``);
- ``output``: the types of the row's values that something outside it reads;
- ``params`` (trainable) and ``state`` (running statistics) element counts;
- ``FLOPs/example``: one multiply-add counts two, every elementwise result one,
  shape-only ops nothing; per example (the batch dims, symbolic leading dims
  of the inputs, are set to 1) with any other symbolic dim (``T``) kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .dims import Dim, Sym, size_of
from .graph import SOURCE_OPS, Graph, Value

_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "mod": "%", "matmul": "@", "neg": "-"}


def node_flops(g: Graph, n: int) -> Dim:
    """FLOPs of one node, as its op counts them (``Op.flops``; symbolic dims kept)."""
    from .ops.registry import get_op

    d = g[n]
    if d.op in SOURCE_OPS:
        return 0
    return get_op(d.op).flops([g.type_of(v) for v in d.inputs], list(d.types), **d.attrs)


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


@dataclass
class Row:
    name: str
    type: str
    outputs: list[str]
    params: int
    state: int
    flops: Dim


@dataclass
class Summary:
    model: str
    rows: list[Row]
    trainable: int
    trainable_bytes: int
    state: int
    state_bytes: int
    flops: Dim
    outputs: dict[str, str]

    @property
    def total(self) -> int:
        return self.trainable + self.state

    @property
    def total_bytes(self) -> int:
        return self.trainable_bytes + self.state_bytes


def _statements(model_def) -> dict[int, tuple[str, object]]:
    """Source line → (the names it binds, its value expression) for the model body."""
    from dlc.grammar import ast as A

    out = {}
    for s in getattr(model_def, "body", ()):
        if isinstance(s, A.Binding):
            out[s.loc.line] = (", ".join(s.targets), s.value)
        elif isinstance(s, A.OutputDecl):
            out[s.loc.line] = (s.name, s.value)
    return out


def _callee(expr, layers) -> str | None:
    """The first layer called in ``expr`` (depth first, outermost first), as written."""
    from dlc.grammar import ast as A

    stack = [expr]
    while stack:
        e = stack.pop(0)
        if isinstance(e, A.Repeat):
            return f"repeat {e.callee.id}"
        if isinstance(e, A.Scan):
            return "scan"
        if isinstance(e, A.Call):
            name = e.func.id if isinstance(e.func, A.Name) else getattr(e.func, "attr", None)
            if name in layers:
                return name
            stack[:0] = list(e.args) + [k.value for k in e.kwargs]
    return None


_CONSTRUCTORS = {"zeros", "ones", "fill"}
_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*\(")


def _op_as_written(g: Graph, nodes: list[int]) -> str:
    """The op a loose row's source span calls (`cross_entropy`), else the operator (`@`)."""
    loc = g[nodes[0]].loc
    if loc is not None and getattr(loc, "source", None) is not None:
        text = loc.source.line(loc.line)[loc.col - 1:]
        m = _CALL.match(text)
        if m:
            return m.group(1)
    last = g[nodes[-1]].op
    return _OPERATORS.get(last, last)


def _bytes(g: Graph, n: int) -> int:
    from .types import np_dtype

    t = g[n].types[0]
    return int(size_of(t.shape)) * np.dtype(np_dtype(t.dtype)).itemsize


def summarize(g: Graph, model_def=None, layers=()) -> Summary:
    """The rows of ``g`` (an inference graph); ``model_def`` and ``layers`` (the names
    of the spec's layers) name rows by their bindings and layer types."""
    batch = batch_dims(g)
    statements = _statements(model_def)
    live = g.ancestors({v.node for v in g.outputs.values()})  # not state updates nobody reads at inference
    groups: dict[tuple, list[int]] = {}
    for n in g.topo_order():
        d = g[n]
        if d.op in SOURCE_OPS or n not in live:
            continue
        top = d.scope.split(".", 1)[0] if d.scope else ""
        key = (top,) if top else ("", d.loc.line if d.loc else None, d.loc.col if d.loc else None)
        groups.setdefault(key, []).append(n)
    owner = {n: key for key, nodes in groups.items() for n in nodes}
    output_nodes = set(g.outputs.values())

    # parameters and state belong to their layer's row; the model's own (`param E` in the
    # model body) to the row of the first node that reads them
    params: dict[tuple, int] = {}
    state: dict[tuple, int] = {}
    for table, sources in ((params, g.params.items()), (state, ((k, n) for k, (n, _) in g.state.items()))):
        for name, n in sources:
            key = (name.split(".", 1)[0],) if "." in name else next(
                (owner[c] for c in sorted(g.consumers(n)) if c in owner), ("(model)",))
            table[key] = table.get(key, 0) + int(size_of(g[n].types[0].shape))

    rows = []
    for key, nodes in groups.items():
        line = g[nodes[0]].loc.line if g[nodes[0]].loc else None
        if key[0]:
            names, expr = next(((nm, ex) for nm, ex in statements.values()
                                if nm.split(", ")[0] == key[0]), (key[0], None))
            kind = (_callee(expr, layers) if expr is not None else None) or _op_as_written(g, nodes)
        else:
            names = statements.get(line, ("-", None))[0]
            kind = _op_as_written(g, nodes)
        if kind in _CONSTRUCTORS and not params.get(key) and not state.get(key):
            continue  # `zeros(...)` for a scan's initial carry is not a layer
        exposed = [str(t) for n in nodes for i, t in enumerate(g[n].types)
                   if Value(n, i) in output_nodes
                   or any(owner.get(c) != key for c in g.consumers(n) if Value(n, i) in g[c].inputs)]
        last = g[nodes[-1]]
        if len(last.types) == names.count(",") + 1 > len(exposed):  # `hs, h, c = scan ...`: all it returns
            exposed = [str(t) for t in last.types]
        flops = _per_example(sum((node_flops(g, n) for n in nodes), 0), batch)
        rows.append(Row(names, kind, exposed or [str(last.types[0])], params.pop(key, 0), state.pop(key, 0), flops))
    for key in sorted(set(params) | set(state)):  # parameters no live node reads
        rows.append(Row(key[0], "-", ["-"], params.get(key, 0), state.get(key, 0), 0))
    return Summary(
        model=g.name, rows=rows,
        trainable=sum(int(size_of(g[n].types[0].shape)) for n in g.params.values()),
        trainable_bytes=sum(_bytes(g, n) for n in g.params.values()),
        state=sum(int(size_of(g[n].types[0].shape)) for n, _ in g.state.values()),
        state_bytes=sum(_bytes(g, n) for n, _ in g.state.values()),
        flops=_per_example(graph_flops(g), batch),
        outputs={k: str(g.type_of(v)) for k, v in g.outputs.items()})


def _count(n: int) -> str:
    return f"{n:,}" if n else ""


def _flops(f: Dim) -> str:
    return f"{f:,}" if isinstance(f, int) else str(f)


def _bytes_text(n: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def summary_table(s: Summary) -> str:
    header = ("name", "type", "output", "params", "state", "FLOPs/example")
    body = [(r.name, r.type, ", ".join(r.outputs), _count(r.params), _count(r.state), _flops(r.flops))
            for r in s.rows]
    footer = ("total", "", "", f"{s.trainable:,}", f"{s.state:,}", _flops(s.flops))
    widths = [max(len(r[i]) for r in [header, footer, *body]) for i in range(6)]
    right = (False, False, False, True, True, True)

    def fmt(r):
        return "  ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([
        f"model {s.model}", rule, fmt(header), rule, *map(fmt, body), rule, fmt(footer), rule,
        f"trainable: {s.trainable:,} ({_bytes_text(s.trainable_bytes)})   state: {s.state:,} "
        f"({_bytes_text(s.state_bytes)})   total: {s.total:,} ({_bytes_text(s.total_bytes)})",
        "outputs: " + ", ".join(f"{k}: {t}" for k, t in s.outputs.items())])


def summary_json(s: Summary) -> dict:
    """The summary as plain data (symbolic FLOPs as their formula text)."""
    def flops(f):
        return f if isinstance(f, int) else str(f)

    return {"model": s.model,
            "rows": [{"name": r.name, "type": r.type, "outputs": r.outputs, "params": r.params, "state": r.state,
                      "flops_per_example": flops(r.flops)} for r in s.rows],
            "trainable": s.trainable, "trainable_bytes": s.trainable_bytes, "state": s.state,
            "state_bytes": s.state_bytes, "total": s.total, "total_bytes": s.total_bytes,
            "flops_per_example": flops(s.flops), "outputs": s.outputs}


def summary_html(s: Summary) -> str:
    """The summary as an HTML table (for notebooks)."""
    import html

    cells = "".join(f"<th>{h}</th>" for h in ("name", "type", "output", "params", "state", "FLOPs/example"))
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                         (r.name, r.type, ", ".join(r.outputs), _count(r.params), _count(r.state), _flops(r.flops)))
        + "</tr>" for r in s.rows)
    foot = (f"<tr><th>total</th><td></td><td></td><th>{s.trainable:,}</th><th>{s.state:,}</th>"
            f"<th>{html.escape(_flops(s.flops))}</th></tr>")
    return (f"<table><caption>model {html.escape(s.model)}: {s.total:,} values "
            f"({html.escape(_bytes_text(s.total_bytes))})</caption><thead><tr>{cells}</tr></thead>"
            f"<tbody>{rows}{foot}</tbody></table>")

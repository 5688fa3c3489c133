"""Graph pictures: Graphviz DOT text, and SVG/PNG rendered from it.

What the picture shows:

- one box per op (its name, output types), ellipses for inputs, parameters and
  state, small grey plaintext nodes for constants;
- scopes (``h``, ``h.0.attn``) as nested clusters labelled with their path;
- a ``scan``'s body as a cluster beside it, its formal inputs fed from the
  scan (dashed) and its outputs returning to it (dashed);
- backward nodes grouped in a cluster per forward node they differentiate
  (``∂ matmul %12``), inside the forward node's scope;
- port labels: an edge into an op with several inputs is labelled with the
  input's name (``x``, ``W``), an edge out of a multi-output node with ``.i``;
- a legend of the colours (roles) and shapes.

Every label and identifier goes through :func:`quote`, so names with quotes,
backslashes or newlines cannot break the DOT text.  Rendering uses the
``graphviz`` package (extra ``dlc[graphviz]``) and the ``dot`` program.
"""
from __future__ import annotations

from .graph import SOURCE_OPS, Graph

ROLE_COLORS = {"forward": "white", "backward": "lightpink", "optimizer": "lightblue",
               "state": "palegreen"}
_SOURCE_SHAPES = {"input": ("ellipse", "lightyellow"), "param": ("ellipse", "lightgrey"),
                  "state": ("ellipse", "palegreen")}


def quote(text: str) -> str:
    """``text`` as a DOT quoted string (lines joined by DOT's centred line break)."""
    lines = str(text).split("\n")
    escaped = [line.replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + "\\n".join(escaped) + '"'


def _input_names(op: str, count: int) -> list[str]:
    try:
        from .ops.registry import get_op

        names = list(get_op(op).inputs)
    except (KeyError, LookupError, ImportError):
        names = []
    out = []
    for i in range(count):
        if i < len(names) and not names[i].startswith("*"):
            out.append(names[i])
        elif names and names[-1].startswith("*"):
            out.append(f"{names[-1][1:]}{i - len(names) + 1}")
        else:
            out.append(str(i))
    return out


class _Dot:
    def __init__(self, name: str):
        self.lines = [f"digraph {quote(name)} {{", "  compound=true; rankdir=TB; newrank=true;",
                      '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
                      '  edge [fontname="Helvetica", fontsize=8, color="#555555", arrowsize=0.6, labelfontsize=7, '
                      'labelfontcolor="#6666aa", labeldistance=1.6, labelangle=35];']
        self.edges: list[str] = []

    def node(self, ident: str, indent: str, **attrs) -> None:
        self.lines.append(f"{indent}{quote(ident)} [{_attrs(attrs)}];")

    def edge(self, a: str, b: str, **attrs) -> None:
        self.edges.append(f"  {quote(a)} -> {quote(b)}" + (f" [{_attrs(attrs)}]" if attrs else "") + ";")


def _attrs(attrs: dict) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in attrs.items() if v is not None)


def _label(g: Graph, n: int) -> str:
    d = g[n]
    types = "\n".join(str(t) for t in d.types)
    if d.op in ("input", "param", "state"):
        return f"{d.attrs['name']}\n{types}"
    if d.op == "const":
        v = d.attrs["value"]
        return f"{v.item():g}" if v.size == 1 and v.dtype.kind in "fiub" else f"const {types}"
    if d.op == "scan":
        return f"scan (body below)\n{types}"
    return f"{d.op}\n{types}"


def _emit_graph(dot: _Dot, g: Graph, prefix: str, depth: int) -> None:
    """The nodes of ``g`` (ids prefixed, for scan bodies) in scope and gradient clusters, and its edges."""
    tree: dict = {}  # scope path → {"nodes": [...], "children": {...}}

    def bucket(scope: str, grad_of: int | None):
        where = tree
        # a backward node joins the cluster of the forward node it differentiates, outside the
        # forward scopes: the forward pass stays compact above, the backward pass reads below it
        parts = scope.split(".") if scope and grad_of is None else []
        for i in range(len(parts)):
            key = ".".join(parts[:i + 1])
            where = where.setdefault(("scope", key), {})
        if grad_of is not None:
            where = where.setdefault(("grad", grad_of), {})
        return where.setdefault(("nodes",), [])

    for n in g.topo_order():
        d = g[n]
        grad_of = d.grad_of if d.role == "backward" and d.grad_of is not None else None
        bucket(d.scope or "", grad_of).append(n)

    def ident(n: int) -> str:
        return f"{prefix}n{n}"

    def emit(where: dict, indent: str) -> None:
        for key, value in where.items():
            if key == ("nodes",):
                for n in value:
                    _emit_node(dot, g, n, ident(n), indent, prefix, depth)
                continue
            kind, what = key
            if kind == "scope":
                label, style = what, 'rounded,dashed'
                color, fill = "#7777aa", None
            else:
                fwd = g[what] if what in set(g.nodes()) else None
                label = f"∂ {fwd.op} %{what}" + (f" ({fwd.scope})" if fwd.scope else "") if fwd is not None \
                    else f"∂ %{what}"
                style, color, fill = "rounded,filled", "#cc8899", "#fff4f6"
            cluster = f"cluster_{prefix}{kind}_{what}".replace(".", "_")
            dot.lines.append(f"{indent}subgraph {quote(cluster)} {{")
            dot.lines.append(f"{indent}  label={quote(label)}; style={quote(style)}; color={quote(color)}; "
                             f"fontsize=9; fontcolor={quote(color)};" + (f" fillcolor={quote(fill)};" if fill else ""))
            emit(value, indent + "  ")
            dot.lines.append(f"{indent}}}")

    emit(tree, "  ")
    for n in g.topo_order():
        d = g[n]
        body = d.attrs.get("body") if d.op == "scan" else None
        if isinstance(body, Graph) and len(body.inputs) == len(d.inputs):  # carries, sequences, captures
            names = [body[m].attrs.get("name", str(i)) for i, m in enumerate(body.inputs)]
        else:
            names = _input_names(d.op, len(d.inputs)) if len(d.inputs) > 1 else [None] * len(d.inputs)
        for v, port in zip(d.inputs, names):
            src = g[v.node]
            tail = f".{v.index}" if len(src.types) > 1 else None
            dot.edge(ident(v.node), ident(n), headlabel=port, taillabel=tail,
                     color="#bbbbbb" if src.op == "const" else None)


def _emit_node(dot: _Dot, g: Graph, n: int, ident: str, indent: str, prefix: str, depth: int) -> None:
    d = g[n]
    if d.op in _SOURCE_SHAPES:
        shape, fill = _SOURCE_SHAPES[d.op]
        dot.node(ident, indent, label=_label(g, n), shape=shape, style="filled", fillcolor=fill)
    elif d.op == "const":
        dot.node(ident, indent, label=_label(g, n), shape="plaintext", style="", fontcolor="#888888", fontsize="8")
    else:
        dot.node(ident, indent, label=_label(g, n), fillcolor=ROLE_COLORS.get(d.role, "white"),
                 penwidth="2" if d.op == "scan" else None)
    body = d.attrs.get("body") if d.op not in SOURCE_OPS else None
    if isinstance(body, Graph) and depth < 3:
        inner = f"{prefix}s{n}_"
        dot.lines.append(f"{indent}subgraph {quote('cluster_' + inner + 'body')} {{")
        dot.lines.append(f"{indent}  label={quote(f'body of scan %{n} (one step)')}; style=\"rounded,filled\"; "
                         "fillcolor=\"#f3f6ff\"; color=\"#6677bb\"; fontsize=9;")
        _emit_graph(dot, body, inner, depth + 1)
        for name, v in body.outputs.items():  # what one step returns: the next carries, the per-step outputs
            dot.node(f"{inner}out:{name}", indent + "  ", label=f"→ {name}", shape="plaintext", style="",
                     fontcolor="#6677bb")
            dot.edge(f"{inner}n{v.node}", f"{inner}out:{name}", color="#6677bb")
        dot.lines.append(f"{indent}}}")
        for m in body.inputs:
            dot.edge(ident, f"{inner}n{m}", style="dashed", color="#6677bb", arrowhead="none")


def to_dot(g: Graph, legend: bool = True) -> str:
    """The DOT text of ``g`` (see the module docstring)."""
    dot = _Dot(g.name)
    _emit_graph(dot, g, "", 0)
    for name, v in g.outputs.items():
        ident = f"out:{name}"
        dot.node(ident, "  ", label=name, shape="plaintext", style="", fontcolor="#333333")
        dot.edge(f"n{v.node}", ident, taillabel=f".{v.index}" if len(g[v.node].types) > 1 else None)
    if legend:
        dot.lines.append('  subgraph "cluster_legend" {')
        dot.lines.append('    label="legend"; style="rounded"; color="#aaaaaa"; fontsize=9;')
        prev = None
        entries = [(f"legend:{r}", r, "box", c) for r, c in ROLE_COLORS.items()] + \
                  [(f"legend:{op}", op, shape, c) for op, (shape, c) in _SOURCE_SHAPES.items()]
        for ident, text, shape, color in entries:
            dot.node(ident, "    ", label=text, shape=shape, fillcolor=color, fontsize="8")
            if prev is not None:
                dot.edge(prev, ident, style="invis")
            prev = ident
        # one row, not a column beside the graph
        dot.lines.append("    {rank=same; " + " ".join(quote(e[0]) + ";" for e in entries) + "}")
        dot.lines.append("  }")
    return "\n".join(dot.lines + dot.edges + ["}"])


def render(dot_text: str, fmt: str) -> bytes:
    """``dot_text`` rendered by Graphviz as ``fmt`` (``svg`` or ``png``); E0004 names what is missing."""
    from .optional import import_optional

    graphviz = import_optional("graphviz", f"rendering a graph as {fmt}")
    try:
        return graphviz.Source(dot_text).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        from dlc.grammar.errors import DlcError

        raise DlcError("E0004", f"rendering a graph as {fmt} needs the `dot` program of Graphviz, which is not "
                                "on the PATH", hint="install Graphviz (apt-get install graphviz, brew install "
                                                    "graphviz), or use --format dot") from None


__all__ = ["quote", "to_dot", "render"]

"""Deterministic dumps of a graph: text (one line per node), Graphviz dot, JSON.

Text format, one node per line in deterministic topological order::

    %4 = matmul(%0, %2) : f32[B, 64]  @h  [forward]
    %9 = mul(%8, %2) : f32[B, 64]  @h  [backward of %4]

Source nodes print their name (``%2 = param h.W : f32[64, 64]``); nodes
with a body (``scan``) print the body indented below them.
"""
from __future__ import annotations

import json

import numpy as np

from .dims import Sym
from .graph import SOURCE_OPS, Graph, Value

_HIDDEN_ATTRS = ("body", "value", "name", "init")


def _ref(v: Value, g: Graph | None = None) -> str:
    """``%n`` for a node's only value; ``%n.i`` for every value of a multi-output node (``%10.0`` too)."""
    several = g is not None and len(g[v.node].types) > 1
    return f"%{v.node}.{v.index}" if v.index or several else f"%{v.node}"


def _attr_text(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_attr_text(x) for x in v) + "]"
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _types_text(types) -> str:
    return ", ".join(str(t) for t in types)


def node_line(g: Graph, n: int) -> str:
    d = g[n]
    op, attrs = d.op, d.attrs
    if op in ("input", "param", "state"):
        text = f"%{n} = {op} {attrs['name']} : {_types_text(d.types)}"
    elif op == "const":
        value = attrs["value"]
        shown = np.array2string(value, precision=4, threshold=6) if value.size <= 6 else f"<{value.size} values>"
        text = f"%{n} = const {shown} : {_types_text(d.types)}"
    else:
        args = ", ".join(_ref(v, g) for v in d.inputs)
        if op == "fused":  # the chain's ops in order; the value numbering is in --format json
            attrs = {"chain": " ".join(step[0] for step in attrs["program"])}
        extra = ", ".join(f"{k}={_attr_text(v)}" for k, v in attrs.items() if k not in _HIDDEN_ATTRS)
        text = f"%{n} = {op}({args}{', ' if args and extra else ''}{extra}) : {_types_text(d.types)}"
    if d.scope:
        text += f"  @{d.scope}"
    role = d.role
    if d.grad_of is not None:
        role = f"{role} of %{d.grad_of}"
    if role != "forward":
        text += f"  [{role}]"
    return text


def to_text(g: Graph, indent: str = "") -> str:
    lines = []
    for n in g.topo_order():
        lines.append(indent + node_line(g, n))
        body = g[n].attrs.get("body") if g[n].op not in SOURCE_OPS else None
        if isinstance(body, Graph):
            lines.append(indent + "    body {")
            lines.append(to_text(body, indent + "        "))
            outs = ", ".join(f"{k}={_ref(v, body)}" for k, v in body.outputs.items())
            lines.append(indent + f"        return {outs}")
            lines.append(indent + "    }")
    if not indent:
        lines.append("outputs: " + ", ".join(f"{k}={_ref(v, g)}" for k, v in g.outputs.items()))
    return "\n".join(lines)


def to_dot(g: Graph) -> str:
    """The Graphviz picture (clusters, port labels, legend): see ``compiler/dot.py``."""
    from .dot import to_dot as dot

    return dot(g)


def to_json(g: Graph) -> str:
    """networkx node-link data with JSON-safe attributes."""
    nodes = []
    for n in g.topo_order():
        d = g[n]
        attrs = {k: _jsonable(v) for k, v in d.attrs.items() if k != "body"}
        nodes.append({"id": n, "op": d.op, "attrs": attrs, "types": [str(t) for t in d.types],
                      "scope": d.scope, "role": d.role, "grad_of": d.grad_of,
                      "loc": str(d.loc) if d.loc is not None else None})
    links = [{"source": v.node, "target": n, "src_out": v.index, "dst_in": i}
             for n in g.topo_order() for i, v in enumerate(g[n].inputs)]
    data = {"directed": True, "multigraph": True, "graph": {"name": g.name,
            "outputs": {k: [v.node, v.index] for k, v in g.outputs.items()}},
            "nodes": nodes, "links": links}
    return json.dumps(data, indent=1, sort_keys=True)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"<array {v.dtype} {list(v.shape)}>"
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)

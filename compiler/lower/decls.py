"""Block statements that are not bindings: ``param``, ``input``, ``require``.

Parameters are always created in the main graph, named by the frame's scope
path (``h.W``); their initialiser is recorded on the node as
``(name, kwargs)`` and run when a model's parameters are materialised.
"""
from __future__ import annotations

import re

from dlc.grammar import ast as A

from ..dims import Sym
from ..graph import Value
from ..types import TensorType
from .expr import evaluate
from .frame import Frame, describe

MAX_PARAM_ELEMENTS = 2**28


def tensor_shape(frame: Frame, t: A.TensorTypeExpr, what: str) -> tuple:
    shape = []
    for d in t.dims:
        free = _unbound_dim(frame, d)
        if free is not None:
            hint = ("a param's size must be known when the model is built: use a number, or an int argument "
                    "of the layer (`units: int`)" if what.startswith("param") else
                    "a dim is bound where it appears alone in an input's or argument's type (`x: f32[B, H]`)")
            raise frame.error("E0105", f"the dim `{free.id}` in the type of {what} is not bound", free.loc, hint=hint)
        v = evaluate(d, frame)
        if not isinstance(v, (int, Sym)) or isinstance(v, bool):
            raise frame.error("E0103", f"a dim of {what} must be an integer or a symbolic dim, got {describe(v)}",
                              d.loc)
        if isinstance(v, int) and v < 0:
            raise frame.error("E0110", f"a dim of {what} is negative ({v})", d.loc)
        shape.append(v)
    return tuple(shape)


def _unbound_dim(frame: Frame, e) -> A.Name | None:
    """The first capitalised name in dim expression ``e`` that nothing binds."""
    if isinstance(e, A.Name):
        known = any(e.id in table for table in (frame.names, frame.pending, frame.dims, frame.module.consts,
                                                frame.module.layers))
        return e if e.id[:1].isupper() and not known else None
    if isinstance(e, A.BinOp):
        return _unbound_dim(frame, e.left) or _unbound_dim(frame, e.right)
    if isinstance(e, A.UnaryOp):
        return _unbound_dim(frame, e.operand)
    return None


def declare_param(frame: Frame, stmt: A.ParamDecl | A.StateDecl) -> None:
    """A ``param`` (trained) or ``state`` (carried between steps) tensor of fixed
    size, created in the main graph under the frame's scope path."""
    from ..ops.init import init_names

    kind = "state" if isinstance(stmt, A.StateDecl) else "param"
    shape = tensor_shape(frame, stmt.type, f"{kind} `{stmt.name}`")
    free = [d for d in shape if isinstance(d, Sym)]
    if free:
        raise frame.error("E0105", f"{kind} `{stmt.name}` has the symbolic dim {free[0]} in its shape "
                          f"[{', '.join(map(str, shape))}]", stmt.type.loc,
                          hint=f"a {kind}'s size must be fixed; use a fixed size or an int argument")
    count = 1
    for d in shape:
        count *= d
    if count > MAX_PARAM_ELEMENTS:
        raise frame.error("E0003", f"{kind} `{stmt.name}` would hold {count} elements (limit {MAX_PARAM_ELEMENTS})",
                          stmt.type.loc)
    init = _init_spec(frame, stmt, init_names())
    name = frame.path(stmt.name)
    graph = frame.ctx.graph
    if name in graph.params or name in graph.state:
        raise frame.error("E0107", f"a parameter or state named `{name}` already exists", stmt.loc,
                          hint="two layer calls share a scope; bind them to different names")
    t = TensorType(stmt.type.dtype or "f32", shape)
    n = graph.add_node(kind, (), {"name": name, "init": init}, (t,), loc=stmt.loc, scope=frame.scope)
    if kind == "param":
        graph.add_param(name, n)
    else:
        graph.set_state(name, n)  # the next value comes from an `update`
        frame.states[stmt.name] = name
    frame.define(stmt.name, frame.capture(Value(n)), stmt.loc)


def apply_update(frame: Frame, stmt: A.Update) -> None:
    """``update NAME = expr``: record the state's next value (same type, set once)."""
    graph = frame.ctx.graph
    if stmt.name not in frame.states:
        raise frame.error("E0101", f"`update` needs a `state` of this block; `{stmt.name}` is not one", stmt.loc,
                          hint="declare it: `state NAME: [dims] = zeros()`")
    path = frame.states[stmt.name]
    node, previous = graph.state[path]
    if previous is not None:
        raise frame.error("E0107", f"state `{stmt.name}` is updated twice", stmt.loc)
    if frame.builder.graph is not graph:
        raise frame.error("E0103", f"state `{stmt.name}` cannot be updated inside a scan cell", stmt.loc,
                          hint="return the new value from the cell and update the state outside the scan")
    saved = frame.binding
    frame.binding = f"update_{stmt.name}"
    try:
        value = evaluate(stmt.value, frame)
    finally:
        frame.binding = saved
    want = graph[node].types[0]
    if not isinstance(value, Value) or graph.type_of(value) != want:
        got = graph.type_of(value) if isinstance(value, Value) else describe(value)
        raise frame.error("E0104", f"state `{stmt.name}` is {want}, but its update is {got}", stmt.value.loc)
    graph.set_state(path, node, value)


def _init_spec(frame: Frame, stmt: A.ParamDecl | A.StateDecl, names: list[str]) -> tuple[str, dict]:
    e = stmt.init
    if e is None:  # biases start at zero, matrices Glorot-uniform
        return ("zeros", {}) if len(stmt.type.dims) <= 1 else ("glorot_uniform", {})
    if isinstance(e, A.Name):
        func, args, kwargs = e, (), ()
    elif isinstance(e, A.Call) and isinstance(e.func, A.Name):
        func, args, kwargs = e.func, e.args, e.kwargs
    else:
        raise frame.error("E0103", "a param's initialiser is a call such as `he_normal()` or `zeros()`", e.loc,
                          hint="initialisers: " + ", ".join(names))
    if func.id not in names:
        from dlc.grammar.errors import suggest

        raise frame.error("E0101", f"unknown initialiser `{func.id}`", func.loc,
                          hint=suggest(func.id, names) or "initialisers: " + ", ".join(names))
    from ..ops.init import init_params

    values = {}
    positional = list(init_params(func.id))  # in order: `normal(0.02)` is a std
    if len(args) > len(positional):
        takes = f"takes {len(positional)} argument(s): {', '.join(positional)}" if positional else "takes no arguments"
        raise frame.error("E0102", f"`{func.id}` {takes}", e.loc)
    for key, a in list(zip(positional, args)) + [(k.name, k.value) for k in kwargs]:
        if key not in positional:
            from dlc.grammar.errors import suggest

            raise frame.error("E0102", f"`{func.id}` has no argument `{key}`", a.loc,
                              hint=suggest(key, positional) or ("arguments: " + ", ".join(positional)))
        v = evaluate(a, frame)
        if not isinstance(v, (int, float, str)) or isinstance(v, bool):
            raise frame.error("E0103", f"argument `{key}` of `{func.id}` must be a number or a string, got "
                              f"{describe(v)}", a.loc)
        values[key] = v
    return func.id, values


def check_require(frame: Frame, stmt: A.Require) -> None:
    ok = evaluate(stmt.cond, frame)
    if not isinstance(ok, bool):
        raise frame.error("E0103", f"`require` needs a condition known at compile time, got {describe(ok)}",
                          stmt.cond.loc)
    if not ok:
        message = _format(frame, stmt.message) if stmt.message else "requirement failed"
        raise frame.error("E0108", message, stmt.cond.loc)


def _format(frame: Frame, text: str) -> str:
    """Fill ``{name}`` in a require message with compile-time values."""

    def fill(m):
        try:
            v = frame.lookup(m.group(1), None)
        except Exception:
            return m.group(0)
        return str(v) if isinstance(v, (int, float, str, Sym)) else m.group(0)

    return re.sub(r"\{([A-Za-z_][A-Za-z_0-9]*)\}", fill, text)

"""Layer calls and ``repeat`` (``scan`` is in ``scan.py``).

A layer call makes a child frame whose scope is the binding path
(``h``, ``blocks.2``, ``enc.attn``): formals are bound and type-checked
(tensor formals unify their dims with the argument's shape), the body's
params are created under that scope, and the returned value(s) come back.
"""
from __future__ import annotations

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

from .. import budget

from ..builder import Builder
from ..dims import Sym, solve
from ..types import TensorType
from .expr import evaluate
from .frame import Frame, LayerRef, OpRef, describe, is_tensor

MAX_REPEAT = 10_000


def call_layer(frame: Frame, layer: LayerRef, args: list, kwargs: dict, loc, *, scope: str | None = None,
               builder: Builder | None = None, capture=None):
    """Instantiate ``layer`` with evaluated arguments; returns a value or a tuple."""
    defn = layer.defn
    scope = scope or frame.call_scope()
    short = scope.rsplit(".", 1)[-1]
    context = f"{frame.context} → {short} ({defn.name})" if frame.context else f"{short} ({defn.name})"
    child = Frame(frame.ctx, layer.module, scope=scope, context=context, builder=builder or frame.builder,
                  capture=capture or frame.capture, parent=frame)
    if frame.ctx.depth > 150:
        raise frame.error("E0003", f"layers call each other too deeply (at `{defn.name}`)", loc,
                          hint="a layer cannot call itself")
    bind_formals(child, defn.name, defn.formals, args, kwargs, loc, frame)
    try:
        return run_body(child, defn.body, loc, kind="layer")
    except DlcError as e:  # an error inside the body: say which call led there (one note per call level)
        if loc is not None and getattr(loc, "source", None) is not None and e.loc != loc:
            e.notes.append((f"in this call of `{defn.name}`", loc))
        raise


def bind_formals(child: Frame, what: str, formals, args: list, kwargs: dict, loc, caller: Frame) -> None:
    """Match arguments to formals, check scalar types, unify tensor shapes."""
    names = [f.name for f in formals]
    if len(args) > len(formals):
        raise caller.error("E0102", f"`{what}` takes {len(formals)} argument{'s' if len(formals) != 1 else ''}, "
                           f"got {len(args)}", loc, hint=f"`{what}({', '.join(names)})`")
    given = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise caller.error("E0102", f"`{what}` has no argument `{k}`", loc,
                               hint=suggest(k, names) or f"`{what}({', '.join(names)})`")
        if k in given:
            raise caller.error("E0102", f"`{what}` got `{k}` twice", loc)
        given[k] = v
    # scalars first, so tensor types may mention them (`x: f32[B, units]`)
    ordered = sorted(formals, key=lambda f: isinstance(f.type, A.TensorTypeExpr))
    for f in ordered:
        if f.name in given:
            value = given[f.name]
        elif f.default is not None:
            value = evaluate(f.default, child)
        else:
            raise caller.error("E0102", f"`{what}` needs the argument `{f.name}`", loc,
                               hint=f"`{what}({', '.join(names)})`")
        if isinstance(f.type, A.TensorTypeExpr):
            unify(child, caller, what, f, value, loc)
        elif isinstance(f.type, A.ScalarTypeExpr):
            value = check_scalar(caller, what, f, value, loc)
        child.define(f.name, value, f.loc)


_SCALARS = {"int": (int, Sym), "float": (int, float), "bool": (bool,), "str": (str,), "dim": (int, Sym)}


def check_scalar(caller: Frame, what: str, f: A.Formal, value, loc):
    kinds = _SCALARS.get(f.type.name)
    if kinds is None:
        if f.type.name in ("layer", "fn", "op"):
            if isinstance(value, (OpRef, LayerRef)):
                return value
            kinds = ()
        else:
            raise DlcError("E0103", f"unknown type `{f.type.name}`", f.type.loc,
                           hint="scalar types are int, float, bool, str, dim, layer")
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise caller.error("E0103", f"argument `{f.name}` of `{what}` must be {f.type.name}, got {describe(value)}",
                           loc, notes=[(f"`{f.name}` declared", f.loc)])
    return float(value) if f.type.name == "float" else value


def unify(child: Frame, caller: Frame, what: str, f: A.Formal, value, loc) -> None:
    """Check a tensor argument against ``f``'s type, binding the type's dim names in ``child``."""
    if not is_tensor(value):
        raise caller.error("E0103", f"argument `{f.name}` of `{what}` must be a tensor, got {describe(value)}",
                           loc, notes=[(f"`{f.name}` declared", f.loc)])
    actual: TensorType = child.builder.type(value)
    want = f.type
    expected = _pattern_text(want)
    if want.dtype is not None and actual.dtype != want.dtype:
        raise caller.error("E0103", f"argument `{f.name}` of `{what}` must be {expected}, got {actual}", loc,
                           notes=[(f"`{f.name}` declared", f.loc)])
    if len(want.dims) != actual.rank:
        raise caller.error("E0104", f"argument `{f.name}` of `{what}` must have rank {len(want.dims)} "
                           f"({expected}), got {actual}", loc, notes=[(f"`{f.name}` declared", f.loc)])
    for dim_expr, d in zip(want.dims, actual.shape):
        pattern = dim_pattern(child, dim_expr)
        if not solve(pattern, d, child.dims):
            bound = {k: v for k, v in child.dims.items() if str(v) != k}  # `B = B` says nothing
            raise caller.error("E0104", f"argument `{f.name}` of `{what}` must be {expected}, got {actual}", loc,
                               notes=[(f"`{f.name}` declared", f.loc)] + (
                                   [(f"already bound: {', '.join(f'{k} = {v}' for k, v in bound.items())}", None)]
                                   if bound else []))
        if isinstance(dim_expr, A.Name) and dim_expr.id not in child.dims and dim_expr.id[:1].isupper():
            child.dims[dim_expr.id] = d


def dim_pattern(frame: Frame, e):
    """A dim expression with unknown capitalised names as variables (for unification)."""
    if isinstance(e, A.Name) and e.id[:1].isupper() and e.id not in frame.dims and e.id not in frame.names \
            and e.id not in frame.module.consts:
        return Sym.var(e.id)
    if isinstance(e, A.BinOp) and e.op in ("+", "-", "*", "/"):
        left, right = dim_pattern(frame, e.left), dim_pattern(frame, e.right)
        try:
            return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                    "/": lambda: left / right}[e.op]()
        except TypeError:
            raise frame.error("E0104", f"cannot use `{e.op}` in this dim", e.loc) from None
    value = evaluate(e, frame)
    if not isinstance(value, (int, Sym)) or isinstance(value, bool):
        raise frame.error("E0103", f"a dim must be an integer or a symbolic dim, got {describe(value)}", e.loc)
    return value


def _pattern_text(t: A.TensorTypeExpr) -> str:
    from dlc.grammar.printer import expr

    return (t.dtype or "") + "[" + ", ".join(expr(d) for d in t.dims) + "]"


def run_body(frame: Frame, body, loc, *, kind: str):
    """Lower a block: params, requires, bindings (lazily), then the result."""
    from .decls import apply_update, check_require, declare_param

    result = None
    for stmt in body:
        if isinstance(stmt, (A.ParamDecl, A.StateDecl)):
            declare_param(frame, stmt)
        elif isinstance(stmt, A.Binding):
            frame.add_binding(stmt)
        elif isinstance(stmt, (A.InputDecl, A.OutputDecl)) and kind == "layer":
            raise frame.error("E0103", f"`{'input' if isinstance(stmt, A.InputDecl) else 'output'}` belongs in a "
                              "model; a layer takes arguments and returns values", stmt.loc)
    for stmt in body:
        if isinstance(stmt, A.Require):
            check_require(frame, stmt)
    returns = [s for s in body if isinstance(s, A.Return)]
    if kind == "layer":
        if len(returns) != 1:
            where = returns[1].loc if returns else loc
            raise frame.error("E0102", "a layer needs exactly one `return`", where)
        saved = frame.binding
        frame.binding = "out"
        values = tuple(evaluate(v, frame) for v in returns[0].values)
        frame.binding = saved
        for v, src in zip(values, returns[0].values):
            if not is_tensor(v):
                raise frame.error("E0103", f"a layer must return tensors, not {describe(v)}", src.loc)
        result = values[0] if len(values) == 1 else values
    elif returns:
        raise frame.error("E0102", "`return` belongs in a layer; a model declares `output`s", returns[0].loc)
    for stmt in body:
        if isinstance(stmt, A.Update):
            apply_update(frame, stmt)
    frame.force_all()
    return result


def repeat(frame: Frame, e: A.Repeat):
    """``repeat N layer(x, ...)``: N instances chained on their first argument (scopes .0 … .N-1).

    An argument written ``first(a, b)`` is ``a`` for the first copy and ``b`` for the
    others (a ResNet stage whose first block strides and projects); the first copy
    may change the type, the others must keep it."""
    count = evaluate(e.count, frame)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_REPEAT:
        raise frame.error("E0110", f"`repeat` needs a count between 1 and {MAX_REPEAT}, got {describe(count)}",
                          e.count.loc)
    layer = frame.lookup(e.callee.id, e.callee.loc)
    if not isinstance(layer, LayerRef):
        raise frame.error("E0103", f"`repeat` needs a layer, `{e.callee.id}` is {describe(layer)}", e.callee.loc)
    if not e.args:
        raise frame.error("E0102", "`repeat` threads the first argument through the copies; give one", e.loc)
    if _per_copy(frame, e.args[0]) is not None:
        raise frame.error("E0102", "the first argument of `repeat` is threaded through the copies; "
                          "`first(a, b)` chooses the other arguments", e.args[0].loc)
    per_copy = [_per_copy(frame, a) for a in e.args[1:]] + [_per_copy(frame, k.value) for k in e.kwargs]
    evaluated = [tuple(evaluate(v, frame) for v in pc) if pc else evaluate(a, frame)
                 for pc, a in zip(per_copy, list(e.args[1:]) + [k.value for k in e.kwargs])]
    n_args = len(e.args) - 1
    base = frame.call_scope()
    x = evaluate(e.args[0], frame)
    for i in range(count):
        chosen = [v[0 if i == 0 else 1] if pc else v for pc, v in zip(per_copy, evaluated)]
        args, kwargs = chosen[:n_args], dict(zip((k.name for k in e.kwargs), chosen[n_args:]))
        before = len(frame.builder.graph)
        out = call_layer(frame, layer, [x] + args, kwargs, e.loc, scope=f"{base}.{i}")
        if i == 0:  # every copy adds as many nodes as the first: refuse an unrolling too big before doing it
            budget.check_nodes(before + count * (len(frame.builder.graph) - before), e.loc,
                               what=f"unrolling `repeat {count}` would give the graph")
        if not is_tensor(out) or (i > 0 and frame.builder.type(out) != frame.builder.type(x)):
            got = frame.builder.type(out) if is_tensor(out) else describe(out)
            raise frame.error("E0104", f"a repeated layer must return one tensor of its input's type "
                              f"{frame.builder.type(x) if is_tensor(x) else describe(x)} (the first copy may "
                              f"change it); copy {i} of `{layer.defn.name}` returns {got}", e.loc)
        x = out
    return x


def _per_copy(frame: Frame, arg) -> tuple | None:
    """(a, b) when ``arg`` is written ``first(a, b)`` and ``first`` is not a name in scope."""
    if not (isinstance(arg, A.Call) and isinstance(arg.func, A.Name) and arg.func.id == "first"):
        return None
    try:
        frame.lookup("first", arg.func.loc)
        return None  # a user's own `first`
    except DlcError:
        pass
    if len(arg.args) != 2 or arg.kwargs:
        raise frame.error("E0102", "`first(a, b)` takes two values: one for the first copy, one for the others",
                          arg.loc)
    return tuple(arg.args)

"""Layer calls, ``repeat`` and ``scan``.

A layer call makes a child frame whose scope is the binding path
(``h``, ``blocks.2``, ``enc.attn``): formals are bound and type-checked
(tensor formals unify their dims with the argument's shape), the body's
params are created under that scope, and the returned value(s) come back.
``scan`` lowers the cell once into a body graph; its params live in the main
graph and enter the body as captured inputs, so every step shares them.
"""
from __future__ import annotations

import numpy as np

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

from .. import budget

from ..builder import Builder
from ..dims import Sym, shape_str, solve
from ..graph import RNG_INPUT, Graph, Value
from ..ops.random import P as HASH_PRIME
from ..types import TensorType, norm_axis
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


def scan(frame: Frame, e: A.Scan):
    """``scan cell over xs axis k init (c0, ...) lengths L [reverse]`` (or ``steps N``
    instead of ``over xs``) → (the stacked per-step outputs..., the final carries...)."""
    cell = frame.lookup(e.callee.id, e.callee.loc)
    if not isinstance(cell, LayerRef):
        raise frame.error("E0103", f"`scan` needs a layer, `{e.callee.id}` is {describe(cell)}", e.callee.loc)
    inits = [evaluate(i, frame) for i in e.init]
    kwargs = {k.name: evaluate(k.value, frame) for k in e.kwargs}
    axis = evaluate(e.axis, frame) if e.axis is not None else 1
    if e.steps is not None:
        seqs, seq_types, axes = [], [], [axis]
        length = _step_count(frame, e)
        if not isinstance(axis, int) or axis < 0:
            raise frame.error("E0104", f"`steps` needs a non-negative axis, got {axis!r}", e.loc)
    else:
        over = evaluate(e.over, frame)
        seqs = list(over) if isinstance(over, tuple) else [over]
        seq_types, axes, length = _sequences(frame, e, seqs, axis)
    for v, src in list(zip(inits, e.init)):
        if not is_tensor(v):
            raise frame.error("E0103", f"`scan` needs tensors, got {describe(v)}", src.loc)
    lengths = _lengths(frame, e, inits) if e.lengths is not None else None
    _check_cell_arity(frame, cell, e, len(seqs), len(inits), kwargs)
    scope = frame.call_scope()
    body = Graph(cell.defn.name)
    bb = Builder(body, scope=scope, mode=frame.ctx.mode)
    carry_vals = [_body_input(body, f"carry_in{i}", frame.builder.type(c)) for i, c in enumerate(inits)]
    seq_vals = [_body_input(body, f"seq{i}", t.with_shape(t.shape[:a] + t.shape[a + 1:]))
                for i, (t, a) in enumerate(zip(seq_types, axes))]
    # `steps` and `lengths` scan a step index the cell does not see: [1, ..., T] with T at the axis
    step_seq = step_val = None
    if e.steps is not None or lengths is not None:
        index_shape = (1,) * axes[0] + (length,)
        with frame.builder.at(loc=e.loc, context=frame.context or None):
            step_seq = frame.builder.reshape(frame.builder.arange(start=length), shape=index_shape)
        step_val = _body_input(body, "step", TensorType("i64", (1,) * axes[0]))
    captured: dict = {}  # a value of the scan's graph → the body input standing for it

    def to_body(v: Value) -> Value:
        if v not in captured:
            captured[v] = _body_input(body, f"cap{len(captured)}", frame.builder.type(v))
        return captured[v]

    # params live in the main graph: each reaches the body through every enclosing capture
    kwargs = {k: to_body(v) if is_tensor(v) else v for k, v in kwargs.items()}
    body.salt_counter = frame.builder.graph.salt_counter  # random ops in the cell get salts of their own
    out = call_layer(frame, cell, seq_vals + carry_vals, kwargs, e.loc, scope=scope, builder=bb,
                     capture=lambda v: to_body(frame.capture(v)))
    frame.builder.graph.salt_counter = body.salt_counter
    ys, carries = _split_results(frame, cell, e, list(out) if isinstance(out, tuple) else [out], len(inits))
    for i, (c, init) in enumerate(zip(carries, inits)):
        if bb.type(c) != frame.builder.type(init):
            raise frame.error("E0104", f"carry {i} of `{cell.defn.name}` starts as {frame.builder.type(init)} "
                              f"but the cell returns {bb.type(c)}", e.init[i].loc)
    if lengths is not None:  # past its length an example keeps its carries, and its outputs are zeros
        ys, carries = _mask_by_length(frame, e, bb, to_body(lengths), step_val, ys, carries, carry_vals)
    ys = [bb.identity(y) if any(y == c for c in carries) or ys[:j].count(y) else y for j, y in enumerate(ys)]
    # a counter's stacked residuals must have the scanned axis: give it rank max(axis, 1)
    counter_shape = (1,) * max(axes[0], 1)
    counter = _per_step_randomness(frame, body, bb, to_body, counter_shape)
    n_cell = len(carries)
    if counter is not None:  # one more carry: the step count, mixed into the random key
        carry_vals, carries = carry_vals + [counter[0]], carries + [counter[1]]
        inits = inits + [frame.builder.const(np.zeros(counter_shape, np.int64))]
    body.set_outputs({**{f"carry{i}": c for i, c in enumerate(carries)}, **{f"y{j}": y for j, y in enumerate(ys)}})
    extra = [step_val] if step_val is not None else []
    body.set_inputs([v.node for v in carry_vals + seq_vals + extra + list(captured.values())])
    outer = inits + seqs + ([step_seq] if step_seq is not None else []) + list(captured)
    with frame.builder.at(loc=e.loc, scope=scope, context=frame.context or None):
        results = frame.builder.apply("scan", *outer, body=body, n_carry=len(carries),
                                      n_seq=len(seqs) + len(extra), axis=axes[0], reverse=e.reverse)
    results = results[:len(ys) + n_cell]  # the stacked outputs and the cell's own final carries (not the counter)
    return results if len(results) > 1 else results[0]  # no carries, one output: just the stacked outputs


def _sequences(frame: Frame, e: A.Scan, seqs: list, axis):
    """(types, normalised axes, common length) of the scanned sequences."""
    for v in seqs:
        if not is_tensor(v):
            raise frame.error("E0103", f"`scan` needs tensors, got {describe(v)}", e.over.loc)
    seq_types = [frame.builder.type(s) for s in seqs]
    try:
        axes = [norm_axis(axis, t.rank) for t in seq_types]
    except Exception:
        raise frame.error("E0104", f"axis {axis} is out of range for {seq_types[0]}", e.loc) from None
    if len(set(axes)) > 1:
        raise frame.error("E0104", f"axis {axis} means different axes for sequences of different ranks "
                          f"({', '.join(str(t) for t in seq_types)})", e.loc, hint="give a non-negative axis")
    lengths = {t.shape[a] for t, a in zip(seq_types, axes)}
    if len(lengths) > 1:
        raise frame.error("E0104", "scanned sequences differ in length: "
                          + ", ".join(shape_str(t.shape) for t in seq_types), e.over.loc)
    return seq_types, axes, lengths.pop()


def _step_count(frame: Frame, e: A.Scan):
    """The N of ``steps N``: a positive integer or a dim."""
    n = evaluate(e.steps, frame)
    if isinstance(n, bool) or not isinstance(n, (int, Sym)) or (isinstance(n, int) and n < 1):
        raise frame.error("E0103", f"`steps` needs a positive integer or a dim, got {describe(n)}", e.steps.loc)
    return n


def _lengths(frame: Frame, e: A.Scan, inits: list) -> Value:
    """The ``lengths`` tensor: one integer per example, the batch axis 0 of every carry."""
    lengths = evaluate(e.lengths, frame)
    t = frame.builder.type(lengths) if is_tensor(lengths) else None
    if t is None or t.dtype not in ("i32", "i64") or t.rank != 1:
        raise frame.error("E0103", f"`lengths` needs a 1-D integer tensor (one length per example), "
                          f"got {t if t is not None else describe(lengths)}", e.lengths.loc)
    for i, c in enumerate(inits):
        ct = frame.builder.type(c)
        if ct.rank < 1 or ct.shape[0] != t.shape[0]:
            raise frame.error("E0104", f"`lengths` {t} gives one length per example, but carry {i} is {ct}: "
                              "every carry needs the batch as its first axis", e.lengths.loc)
    return lengths


def _check_cell_arity(frame: Frame, cell: LayerRef, e: A.Scan, n_seq: int, n_carry: int, kwargs: dict) -> None:
    """The cell takes the sequence slices, then one argument per ``init`` value."""
    formals = cell.defn.formals
    given = n_seq + n_carry
    where = f"{n_seq} sequence slice{'s' if n_seq != 1 else ''} and {n_carry} carried value" \
            f"{'s' if n_carry != 1 else ''} from `init`"
    if given > len(formals):
        raise frame.error("E0102", f"`{cell.defn.name}` takes {len(formals)} argument(s), but the scan "
                          f"passes {given}: {where}", e.loc,
                          hint="a cell takes the sequence slices first, then one argument per `init` value")
    missing = [f.name for f in formals[given:] if f.default is None and f.name not in kwargs]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        carried = [f.name for f in formals[n_seq:] if f.default is None and f.name not in kwargs]
        raise frame.error("E0102", f"`{cell.defn.name}` needs {names}, but the scan passes only {where}", e.loc,
                          hint=f"the arguments after the {n_seq} sequence slice{'s' if n_seq != 1 else ''} are "
                               f"carried state, one `init` value each: `init ({', '.join(c + '0' for c in carried)})`")


def _split_results(frame: Frame, cell: LayerRef, e: A.Scan, results: list, k: int):
    """(per-step outputs, new carries): k values are the carries (the first also the
    output); more are the outputs followed by the k carries."""
    if len(results) < k or not results:
        raise frame.error("E0102", f"`{cell.defn.name}` returns {len(results)} values for {k} carried "
                          f"value{'s' if k != 1 else ''}: return the new carries (the first is also the "
                          "per-step output), or the per-step outputs followed by the new carries", e.loc)
    if len(results) == k:
        return [results[0]], results
    return results[:len(results) - k], results[len(results) - k:]


def _mask_by_length(frame, e, bb: Builder, lengths: Value, step: Value, ys: list, carries: list, olds: list):
    """Carries frozen and outputs zeroed at the steps past each example's length."""
    t = bb.reshape(step, shape=())
    live = bb.gt(bb.cast(lengths, dtype="i64"), t)  # [B]; Greater has CUDA kernels for int64 (Less: not listed)

    def spread(v):  # live, broadcast over v's trailing axes
        rank = bb.type(v).rank
        return bb.unsqueeze(live, axes=tuple(range(1, rank))) if rank > 1 else live

    carries = [bb.where(spread(c), c, old) for c, old in zip(carries, olds)]
    out = []
    for y in ys:
        yt = bb.type(y)
        if yt.rank < 1 or yt.shape[0] != bb.type(lengths).shape[0]:
            raise frame.error("E0104", f"`lengths` masks the batch axis 0, but a per-step output of "
                              f"`{e.callee.id}` is {yt}", e.lengths.loc)
        out.append(bb.where(spread(y), y, bb.zeros_like(y)))
    return out, carries


def _per_step_randomness(frame: Frame, body: Graph, bb: Builder, to_body, shape: tuple):
    """If the cell draws random numbers, give every step its own key.

    Random ops in the body read a ``__rng`` input; it is replaced by
    ``(outer key mod P) * P + t`` with ``t`` a step counter carried through the scan,
    so each step draws fresh numbers, reproducibly (the backward scan re-runs
    the body on the same carried ``t`` and sees the same masks).  Returns the
    counter's (body input, next value), or None for a deterministic cell."""
    rng = [n for n in body.nodes() if body[n].op == "input" and body[n].attrs["name"] == RNG_INPUT]
    if not rng:
        return None
    (node,) = rng
    t = _body_input(body, "step_count", TensorType("i64", shape))
    # (key mod P) * P + t with P the hash's prime: distinct for every (key, step), below 2**62
    key = bb.add(bb.mul(bb.mod(to_body(frame.builder.rng_key()), HASH_PRIME), HASH_PRIME), bb.sum(t))
    for user in body.consumers(node):
        for i, v in enumerate(body[user].inputs):
            if v.node == node:
                body.set_input(user, i, key)
    body.remove_nodes([node])
    return t, bb.add(t, 1)


def _body_input(body: Graph, name: str, t: TensorType) -> Value:
    n = body.add_node("input", (), {"name": name}, (t,))
    body.add_input(n)
    return Value(n)

"""Expressions → values: compile-time numbers, dims, strings and lists are
computed here; tensor expressions become graph nodes through the frame's
builder.  Calls dispatch to ops (``apply.apply_op``) or layers (``layers.call_layer``);
``repeat`` and ``scan`` lower in ``layers.py`` and ``scan.py``.
"""
from __future__ import annotations

import operator

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

from ..builder import user_facing
from ..dims import Sym, floordiv
from ..graph import Value
from ..ops.registry import get_op
from ..types import TensorType
from .apply import apply_op, literal_tensor
from .frame import ARITY_DISPATCH, Builtin, Frame, LayerRef, OpRef, describe, is_tensor

_TENSOR_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floor_div", "**": "pow", "%": "mod", "@": "matmul",
                  "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge",
                  "and": "logical_and", "or": "logical_or"}
_SCALAR_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "**": operator.pow,
                  "%": operator.mod, "//": operator.floordiv, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
                  "<=": operator.le, ">": operator.gt, ">=": operator.ge}
MAX_DEPTH = 2000  # nested evaluations: deep expressions, and long chains of lazily forced bindings


def evaluate(e, frame: Frame):
    """The value of expression ``e`` in ``frame``."""
    ctx = frame.ctx
    ctx.depth += 1
    try:
        if ctx.depth > MAX_DEPTH:
            raise DlcError("E0003", "the expression nests too deeply (or a chain of bindings is too long)", e.loc)
        return _EVAL[type(e)](e, frame)
    finally:
        ctx.depth -= 1


def _name(e: A.Name, frame: Frame):
    return frame.lookup(e.id, e.loc)


def _number(e, frame):
    return e.value


def _list(e, frame):
    return [evaluate(i, frame) for i in e.items]


def _tuple(e, frame):
    return tuple(evaluate(i, frame) for i in e.items)


def _unary(e: A.UnaryOp, frame: Frame):
    v = evaluate(e.operand, frame)
    if e.op == "not":
        if is_tensor(v):
            return apply_op(frame, "logical_not", [v], {}, e.loc)
        if not isinstance(v, bool):
            raise frame.error("E0103", f"`not` needs a boolean, got {describe(v)}", e.operand.loc)
        return not v
    if is_tensor(v):
        return apply_op(frame, "neg", [v], {}, e.loc)
    if isinstance(v, (int, float, Sym)) and not isinstance(v, bool):
        return -v
    raise frame.error("E0103", f"cannot negate {describe(v)}", e.operand.loc)


def _binop(e: A.BinOp, frame: Frame):
    left, right = evaluate(e.left, frame), evaluate(e.right, frame)
    if is_tensor(left) or is_tensor(right):
        like = left if is_tensor(left) else right
        left, right = (literal_tensor(frame, v, like, src.loc) if isinstance(v, (list, tuple)) else v
                       for v, src in ((left, e.left), (right, e.right)))
        for side, v in (("left", left), ("right", right)):
            if not is_tensor(v) and not (isinstance(v, (int, float)) or isinstance(v, bool)):
                raise frame.error("E0103", f"`{e.op}` between a tensor and {describe(v)}",
                                  (e.left if side == "left" else e.right).loc,
                                  hint="symbolic dims are not tensors; use a fixed size" if isinstance(v, Sym)
                                  else None)
        try:
            return apply_op(frame, _TENSOR_BINOPS[e.op], [left, right], {}, e.loc)
        except DlcError as exc:  # name the operator as written: `@`, not `matmul`
            exc.message = user_facing(exc.message, _TENSOR_BINOPS[e.op], e.op)
            raise
    if e.op in ("and", "or"):
        if not isinstance(left, bool) or not isinstance(right, bool):
            raise frame.error("E0103", f"`{e.op}` needs booleans, got {describe(left)} and {describe(right)}", e.loc)
        return left and right if e.op == "and" else left or right
    ok = (int, float, Sym)
    if e.op in ("<", "<=", ">", ">=") and (isinstance(left, Sym) or isinstance(right, Sym)):
        sym = left if isinstance(left, Sym) else right
        raise frame.error("E0110", f"cannot compare the symbolic dim {sym} at compile time: its size is known "
                          "only when the model runs", e.loc, hint="compare fixed sizes or int arguments")
    if not (isinstance(left, ok) and isinstance(right, ok)) and e.op not in ("==", "!=", "+"):
        raise frame.error("E0103", f"`{e.op}` between {describe(left)} and {describe(right)}", e.loc)
    try:
        if e.op == "/":
            return _divide(left, right)
        if e.op == "@":
            raise TypeError("`@` needs tensors")
        if e.op in ("//", "%") and isinstance(right, Sym):
            raise TypeError("the divisor must be a fixed integer")
        if e.op in ("//", "%") and isinstance(left, Sym):
            if not isinstance(right, int) or right < 1:
                raise TypeError("a dim can only be floor-divided by a positive integer")
            q = floordiv(left, right)
            return q if e.op == "//" else left - right * q  # a symbolic dim: (H + 1)//2, H - 2*(H//2)
        return _SCALAR_BINOPS[e.op](left, right)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise frame.error("E0110", f"cannot compute `{e.op}` of {describe(left)} and {describe(right)}: {exc}",
                          e.loc) from None


def _divide(a, b):
    if isinstance(b, (int, float)) and b == 0:
        raise ZeroDivisionError("division by zero")
    if isinstance(a, Sym):
        if not isinstance(b, int):
            raise TypeError("a dim can only be divided by an integer")
        return a / b
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and a % b == 0:
        return a // b
    return a / b


def _call(e: A.Call, frame: Frame):
    fn = evaluate(e.func, frame)
    args = [evaluate(a, frame) for a in e.args]
    kwargs = {k.name: evaluate(k.value, frame) for k in e.kwargs}
    return call_value(frame, fn, args, kwargs, e)


def call_value(frame: Frame, fn, args: list, kwargs: dict, e):
    """Call an op or layer value with evaluated arguments (``e`` gives locations)."""
    if isinstance(fn, Builtin):  # grad(y, x)
        from .autodiff import grad_call

        return grad_call(frame, args, kwargs, e)
    if isinstance(fn, OpRef):
        if fn.name == "identity" and len(args) == 1 and is_tensor(args[0]) and not kwargs:
            return args[0]  # `act = identity`: no node for a no-op
        if fn.name in ARITY_DISPATCH:
            reduce, elementwise = ARITY_DISPATCH[fn.name]
            fn = OpRef(elementwise if len(args) >= 2 else reduce, fn.kwargs)
        if not any(is_tensor(a) for a in args) and fn.name not in _NULLARY_OK and not kwargs.get("shape"):
            # `leaky_relu(alpha = 0.2)` with no tensor: a partial application, used as an activation
            if not args and all(k in get_op(fn.name).attrs for k in kwargs):
                return OpRef(fn.name, tuple(sorted({**dict(fn.kwargs), **kwargs}.items())))
        return apply_op(frame, fn.name, args, {**dict(fn.kwargs), **kwargs}, e.loc, arg_locs=_arg_locs(e),
                      kw_locs=_kw_locs(e))
    if isinstance(fn, LayerRef):
        from .layers import call_layer

        names = [f.name for f in fn.defn.formals]
        for k, where in _kw_locs(e).items():  # point at the keyword itself, not the whole call
            if k not in names:
                raise frame.error("E0102", f"`{fn.defn.name}` has no argument `{k}`", where,
                                  hint=suggest(k, names) or f"`{fn.defn.name}({', '.join(names)})`")
        return call_layer(frame, fn, args, {**dict(fn.kwargs), **kwargs}, e.loc)
    raise frame.error("E0103", f"{describe(fn)} cannot be called", e.func.loc if isinstance(e, A.Call) else e.loc)


_NULLARY_OK = {"fill", "zeros", "ones", "uniform", "normal", "arange", "eye"}


def _kw_locs(e) -> dict:
    return {k.name: k.loc for k in e.kwargs} if isinstance(e, A.Call) else {}


def _arg_locs(e):
    return [a.loc for a in e.args] if isinstance(e, A.Call) else None


def _attribute(e: A.Attribute, frame: Frame):
    """``embed.E`` / ``h.0.W``: a parameter of another scope (explicit sharing)."""
    parts = []
    node = e
    while isinstance(node, A.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, A.Name):
        raise frame.error("E0103", "only parameters can be reached with `.`", e.loc)
    parts.append(node.id)
    path = ".".join(reversed(parts))
    if "*" in parts:
        raise frame.error("E0103", f"the pattern `{path}` only makes sense in a train block", e.loc)
    # make sure the scope the path points into has been built, in this block or a calling one
    owner = frame
    while owner is not None and node.id not in owner.pending and node.id not in owner.names:
        owner = owner.parent
    if owner is not None and node.id in owner.pending:
        owner.force(node.id, node.loc)
    graph = frame.ctx.graph
    if graph is None:  # a train block's numbers: hyperparameters and consts only, no graph to look in
        raise frame.error("E0103", f"`{path}` names a parameter; here only numbers, hyperparameters and "
                                   "consts can be used", e.loc)
    for candidate in (frame.path(path), path):
        if candidate in graph.params:
            return frame.capture(Value(graph.params[candidate]))
        if candidate in graph.state:  # a state is read like a parameter (updated only where declared)
            return frame.capture(Value(graph.state[candidate][0]))
    hint = suggest(path, list(graph.params)) or ("parameters so far: " + ", ".join(sorted(graph.params)[:12])
                                                 if graph.params else None)
    raise frame.error("E0101", f"no parameter `{path}`", e.loc, hint=hint)


def _index(e: A.Index, frame: Frame):
    value = evaluate(e.value, frame)
    if isinstance(value, (list, tuple)):
        if len(e.items) != 1 or isinstance(e.items[0], A.Slice):
            raise frame.error("E0103", "a list takes one integer index", e.loc)
        i = evaluate(e.items[0], frame)
        if not isinstance(i, int) or not -len(value) <= i < len(value):
            raise frame.error("E0110", f"index {i!r} out of range for a list of {len(value)}", e.items[0].loc)
        return value[i]
    if not is_tensor(value):
        raise frame.error("E0103", f"cannot index {describe(value)}", e.value.loc)
    t: TensorType = frame.builder.type(value)
    items = _expand_ellipsis(e, t.rank, frame)
    if len(items) == 1 and not isinstance(items[0], A.Slice):
        idx = evaluate(e.items[0], frame)
        if is_tensor(idx):  # E[ids]: gather rows
            return apply_op(frame, "gather", [value, idx], {"axis": 0}, e.loc)
    if len(items) > t.rank:
        raise frame.error("E0104", f"{len(items)} indices for a tensor of rank {t.rank} ({t})", e.loc)
    starts, stops, steps, axes, squeeze = [], [], [], [], []
    for axis, item in enumerate(items):
        if isinstance(item, A.Slice):
            parts = [evaluate(p, frame) if p is not None else None for p in (item.start, item.stop, item.step)]
            for p, src in zip(parts, (item.start, item.stop, item.step)):
                if p is not None and not isinstance(p, (int, Sym)):
                    raise frame.error("E0103", f"slice bounds must be integers, got {describe(p)}", src.loc)
            if parts == [None, None, None]:
                continue
            starts.append(parts[0])
            stops.append(parts[1])
            steps.append(parts[2] if parts[2] is not None else 1)
        else:
            i = evaluate(item, frame)
            if not isinstance(i, int) or isinstance(i, bool):
                raise frame.error("E0103", f"an index must be an integer, got {describe(i)}", item.loc)
            d = t.shape[axis]
            if isinstance(d, int) and not -d <= i < d:
                raise frame.error("E0110", f"index {i} is out of range for axis {axis} of size {d}", item.loc)
            starts.append(i)
            stops.append(i + 1 if i != -1 else None)
            steps.append(1)
            squeeze.append(axis)
        axes.append(axis)
    out = value
    if axes:
        out = apply_op(frame, "slice", [value], {"starts": starts, "stops": stops, "steps": steps, "axes": axes}, e.loc)
    if squeeze:
        out = apply_op(frame, "squeeze", [out], {"axes": squeeze}, e.loc)
    return out


def _expand_ellipsis(e: A.Index, rank: int, frame: Frame) -> tuple:
    """The subscripts with a ``...`` replaced by the full slices it stands for."""
    at = [i for i, item in enumerate(e.items) if isinstance(item, A.Ellipsis_)]
    if not at:
        return e.items
    if len(at) > 1:
        raise frame.error("E0103", "a subscript takes at most one `...`", e.items[at[1]].loc)
    rest = len(e.items) - 1
    if rest > rank:
        raise frame.error("E0104", f"{rest} indices for a tensor of rank {rank}", e.loc)
    full = (A.Slice(None, None, None, loc=e.items[at[0]].loc),) * (rank - rest)
    return e.items[:at[0]] + full + e.items[at[0] + 1:]


def _repeat(e: A.Repeat, frame: Frame):
    from .layers import repeat

    return repeat(frame, e)


def _scan(e: A.Scan, frame: Frame):
    from .scan import scan

    return scan(frame, e)


def _string(e, frame):
    return e.value


def _bool(e, frame):
    return e.value


def _slice(e, frame):
    raise frame.error("E0001", "a slice is only valid inside `[...]`", e.loc)


def _ellipsis(e, frame):
    raise frame.error("E0103", "`...` indexes a tensor only", e.loc)


_EVAL = {A.Name: _name, A.Number: _number, A.String: _string, A.Bool: _bool, A.BinOp: _binop,
         A.UnaryOp: _unary, A.Call: _call, A.Attribute: _attribute, A.Index: _index, A.ListExpr: _list,
         A.TupleExpr: _tuple, A.Repeat: _repeat, A.Scan: _scan, A.Slice: _slice,
         A.Ellipsis_: _ellipsis}

"""Parameter constraints: projections applied after every update of a step group.

``constrain = [clip(-0.01, 0.01, params = "D_*"), max_norm(3.0, axis = 0,
params = "*.W"), non_neg(params = "scale")]`` in a train block (every group)
or in a ``step`` group (that group only).  Each constraint maps the updated
parameter to its projection, as nodes of the training step, so the exported
ONNX step applies it too:

- ``clip(lo, hi)``: elementwise into ``[lo, hi]`` (weight clipping of WGAN);
- ``max_norm(max, axis = 0)``: rescale each slice whose L2 norm over ``axis``
  (an int or a list) exceeds ``max`` down to exactly ``max``; others untouched;
- ``non_neg()``: ``max(p, 0)``;
- ``unit_norm(axis = 0)``: each slice divided by its L2 norm over ``axis``.

Constraints run in the order written, after the optimizer and weight decay.
``params`` is a glob pattern (default ``*``) that must match some parameter.
"""
from __future__ import annotations

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

from ..builder import Builder
from ..graph import Value
from .spec import CallSpec

CONSTRAINTS: dict[str, dict] = {
    "clip": {"lo": None, "hi": None, "params": "*"},
    "max_norm": {"max": None, "axis": 0, "params": "*"},
    "non_neg": {"params": "*"},
    "unit_norm": {"axis": 0, "params": "*"},
}
_TINY = 1e-12  # norms below this are treated as this (no division by zero)


def parse_constraints(e) -> list[CallSpec]:
    """Validate a ``constrain = ...`` value (one call or a list of calls)."""
    items = e.items if isinstance(e, A.ListExpr) else (e,)
    return [_one(c) for c in items]


def _one(e) -> CallSpec:
    if isinstance(e, A.Name):
        e = A.Call(e, (), (), loc=e.loc)
    if not isinstance(e, A.Call) or not isinstance(e.func, A.Name):
        raise _err("expected a constraint such as `clip(-0.01, 0.01)`", e.loc,
                   "constraints: " + ", ".join(CONSTRAINTS))
    name = e.func.id
    if name not in CONSTRAINTS:
        raise _err(f"unknown constraint `{name}`", e.func.loc,
                   suggest(name, CONSTRAINTS) or "constraints: " + ", ".join(CONSTRAINTS))
    table = CONSTRAINTS[name]
    keys = list(table)
    if len(e.args) > len(keys) - 1:  # `params` only by name
        raise _err(f"`{name}` takes at most {len(keys) - 1} positional argument(s)", e.loc, _sig(name))
    given = dict(zip(keys, e.args))
    for k in e.kwargs:
        if k.name not in table:
            raise _err(f"`{name}` has no argument `{k.name}`", k.loc, suggest(k.name, keys) or _sig(name))
        if k.name in given:
            raise _err(f"`{name}` got `{k.name}` twice", k.loc)
        given[k.name] = k.value
    out = {}
    for k, default in table.items():
        if k not in given:
            if default is None:
                raise _err(f"`{name}` needs `{k}`", e.loc, _sig(name))
            out[k] = default
        elif k == "params":
            out[k] = _pattern(given[k], name)
        elif k == "axis":
            out[k] = _axes(given[k], name)
        else:
            out[k] = _number(given[k], f"argument `{k}` of `{name}`")
    if name == "clip" and not out["lo"] < out["hi"]:
        raise _err(f"`clip` needs lo < hi, got [{out['lo']}, {out['hi']}]", e.loc)
    if name == "max_norm" and not out["max"] > 0:
        raise _err(f"`max` of `max_norm` must be > 0, got {out['max']}", e.loc)
    return CallSpec(name, out, e.loc)


def _number(e, what: str) -> float:
    sign = 1.0
    if isinstance(e, A.UnaryOp) and e.op == "-":
        sign, e = -1.0, e.operand
    if not isinstance(e, A.Number):
        raise _err(f"{what} must be a number", e.loc)
    return sign * float(e.value)


def _axes(e, name: str) -> tuple[int, ...]:
    items = e.items if isinstance(e, A.ListExpr) else (e,)
    out = []
    for it in items:
        neg = isinstance(it, A.UnaryOp) and it.op == "-"
        num = it.operand if neg else it
        if not isinstance(num, A.Number) or not isinstance(num.value, int):
            raise _err(f"`axis` of `{name}` must be an integer or a list of integers", it.loc)
        out.append(-num.value if neg else num.value)
    if not out:
        raise _err(f"`axis` of `{name}` names no axis", e.loc)
    return tuple(out)


def _pattern(e, name: str) -> str:
    if isinstance(e, A.String):
        return e.value
    parts = []
    while isinstance(e, A.Attribute):
        parts.append(e.attr)
        e = e.value
    if isinstance(e, A.Name):
        return ".".join([e.id, *reversed(parts)])
    raise _err(f"`params` of `{name}` is one parameter pattern, e.g. \"D_*\"", e.loc)


def _sig(name: str) -> str:
    return f"`{name}(" + ", ".join(k if v is None else f"{k} = {v!r}" for k, v in CONSTRAINTS[name].items()) + ")`"


def apply_constraint(b: Builder, c: CallSpec, p: Value, param: str) -> Value:
    """The projection of the updated parameter ``p`` (named ``param``) by ``c``."""
    kw = c.kwargs
    if c.name == "clip":  # Max and Min, not Clip: onnxruntime's CUDA provider has no float Clip kernel
        return b.minimum(b.maximum(p, kw["lo"]), kw["hi"])
    if c.name == "non_neg":
        return b.maximum(p, 0.0)
    rank = b.type(p).rank
    axes = []
    for a in kw["axis"]:
        if not -rank <= a < rank:
            raise _err(f"`{c.name}` over axis {a} of `{param}`, which has rank {rank} ({b.type(p)})", c.loc,
                       "give `params` a pattern that selects parameters of a fitting rank")
        axes.append(a % rank)
    axes = sorted(set(axes))
    norm = b.sqrt(b.maximum(b.sum(b.mul(p, p), axes=axes, keepdims=True), _TINY * _TINY))
    if c.name == "unit_norm":
        return b.div(p, norm)
    return b.mul(p, b.minimum(b.div(kw["max"], norm), 1.0))  # max_norm: 1 within the limit


def _err(message: str, loc, hint: str | None = None) -> DlcError:
    return DlcError("E0201", message, loc, hint=hint)

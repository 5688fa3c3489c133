"""The ``train`` block, validated strictly into a :class:`TrainSpec`.

Every key and every argument of every call is checked against a table; an
unknown one is an E0201 error with a suggestion, a wrong type says what was
expected.  Nothing is silently defaulted except what the tables declare.
Durations in schedules and the early-stopping patience are in epochs.

Wherever a number (or true/false) is expected, the block may also write an
expression over the model's hyperparameters and the module's consts
(``optimizer = adam(lr = lr)``, ``batch = batch``, ``total = epochs * 2``):
:class:`Values` evaluates it like a model argument and the result is checked
like a literal, so ``--set lr=1e-3`` sweeps without copying files.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Mapping

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

from .optim import OPTIMIZERS as _OPTIMIZER_TABLE

NUM, BOOL, STR = "a number", "true or false", "a name"
# an optimizer's hyperparameters and defaults live in its one entry (optim.py)
OPTIMIZERS: dict[str, dict[str, Any]] = {name: o.defaults for name, o in _OPTIMIZER_TABLE.items()}
SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"every": None, "gamma": 0.1},
    "exponential": {"gamma": None, "every": 1.0},
    "inverse": {"gamma": None, "power": 1.0},
    "cosine": {"total": None, "min_lr": 0.0},
    "warmup": {"epochs": None, "then": "constant"},
}
KEYS = ("data", "inputs", "loss", "optimizer", "schedule", "clip", "batch", "epochs", "metrics", "early_stop",
        "regularize", "weight_decay", "params", "seed", "step", "constrain")
STEP_KEYS = ("loss", "params", "optimizer", "schedule", "clip", "every", "repeat", "sees", "constrain")
SEES = ("updated", "start")  # which parameters of other groups a step group reads within a batch


@dataclass(frozen=True)
class CallSpec:
    """A validated call such as ``adam(lr = 1e-3)``: name and complete kwargs."""

    name: str
    kwargs: dict
    loc: Any = None


@dataclass
class StepSpec:
    name: str
    loss: A.Expr
    params: tuple[str, ...]  # glob patterns over parameter names
    optimizer: CallSpec
    schedule: CallSpec
    clip: CallSpec | None
    every: int = 1
    loc: Any = None  # of the `params` item (or the group), for pattern errors
    repeat: int = 1  # updates per batch it runs on (n_critic on one batch)
    sees: str = "updated"  # other groups' parameters: as updated earlier in this batch, or as at its start
    constraints: list[CallSpec] = field(default_factory=list)  # this group's own (compiler/training/constraints.py)


@dataclass
class TrainSpec:
    model: str
    data: CallSpec
    inputs: dict[str, str]
    steps: list[StepSpec]
    batch: int = 32
    epochs: int = 10
    metrics: list[tuple[str, A.Expr]] = field(default_factory=list)
    early_stop: CallSpec | None = None
    regularize: list[CallSpec] = field(default_factory=list)
    weight_decay: CallSpec | None = None
    seed: int = 0
    loc: Any = None
    constraints: list[CallSpec] = field(default_factory=list)  # every group's


class Values:
    """The scalar names a train block can read — the model's hyperparameters (their
    bound values) and the module's consts — and the evaluation of expressions over them."""

    def __init__(self, env, hyper: Mapping[str, Any]):
        from ..lower.frame import _CONST_CTX, Frame

        self.frame = Frame(_CONST_CTX, env, scope="", context="train", builder=None)  # type: ignore[arg-type]
        for k, v in hyper.items():
            self.frame.define(k, v, None)
        self.names = {*hyper, *env.consts}

    def __call__(self, e: A.Expr):
        from ..lower.expr import evaluate

        return evaluate(e, self.frame)


_VALUES: contextvars.ContextVar[Values | None] = contextvars.ContextVar("train_values", default=None)


def _evaluated(e, what: str, want: str):
    """The value of a non-literal expression ``e`` where ``want`` (NUM, BOOL or "an integer") is expected."""
    values = _VALUES.get()
    if values is None or isinstance(e, (A.String, A.ListExpr, A.Call)):
        hint = "a train block evaluates arithmetic over the model's hyperparameters and consts, not calls" \
            if values is not None and isinstance(e, A.Call) else None
        raise _err(f"{what} must be {want}", e.loc, hint)
    if isinstance(e, A.Name) and e.id not in values.names:
        hint = suggest(e.id, values.names) or (
            "a train block reads the model's hyperparameters and consts: " + ", ".join(sorted(values.names))
            if values.names else "declare it as a model hyperparameter: `model m(lr: float = 1e-3)`")
        raise _err(f"{what} must be {want}; `{e.id}` is neither a hyperparameter of the model nor a const",
                   e.loc, hint)
    value = values(e)
    ok = isinstance(value, bool) if want == BOOL else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and (want != "an integer" or isinstance(value, int)))
    if not ok:
        raise _err(f"{what} must be {want}, got {value!r}", e.loc)
    return value


def step_outputs(spec: TrainSpec, step: StepSpec) -> dict[str, A.Expr]:
    """The extra outputs a step group's graph is lowered with: ``loss/<group>`` and ``metric/<name>``."""
    return {f"loss/{step.name}": step.loss, **{f"metric/{n}": e for n, e in spec.metrics}}


def parse_train(t: A.TrainDef, values: Values | None = None) -> TrainSpec:
    """Validate train block ``t``; ``values`` resolves hyperparameters and consts (none: literals only)."""
    token = _VALUES.set(values)
    try:
        return _parse_train(t)
    finally:
        _VALUES.reset(token)


def _parse_train(t: A.TrainDef) -> TrainSpec:
    items = {}
    groups = []
    for it in t.items:
        if isinstance(it, A.StepGroup):
            groups.append(it)
            continue
        if it.key not in KEYS or it.key == "step":
            raise _err(f"unknown train key `{it.key}`", it.loc, suggest(it.key, KEYS) or "keys: " + ", ".join(KEYS))
        if it.key in items:
            raise _err(f"train key `{it.key}` is given twice", it.loc)
        items[it.key] = it
    if "data" not in items:
        raise _err("the train block needs `data`", t.loc, "e.g. `data = digits()`")
    spec = TrainSpec(model=t.model, data=_data(items["data"].value), inputs={}, steps=[], loc=t.loc)
    if "inputs" in items:
        spec.inputs = _mapping(items["inputs"].value)
    spec.batch = _int(items, "batch", 32, low=1)
    spec.epochs = _int(items, "epochs", 10, low=0)
    spec.seed = _int(items, "seed", 0, low=0)
    if "metrics" in items:
        spec.metrics = _metrics(items["metrics"].value)
    if "early_stop" in items:
        spec.early_stop = _call(items["early_stop"].value, {"patience": {"patience": None, "monitor": "val.loss",
                                                                          "restore_best": True, "min_delta": 0.0,
                                                                          "mode": "auto"}},
                                "early stopping")
    if "regularize" in items:
        value = items["regularize"].value
        calls = value.items if isinstance(value, A.ListExpr) else (value,)
        table = {"l1": {"strength": None, "params": "*"}, "l2": {"strength": None, "params": "*"}}
        spec.regularize = [_call(c, table, "regulariser") for c in calls]
    if "weight_decay" in items:
        v = items["weight_decay"].value
        if isinstance(v, A.Number):
            spec.weight_decay = CallSpec("decay", {"strength": float(v.value), "params": "*"}, v.loc)
        else:
            spec.weight_decay = _call(v, {"decay": {"strength": None, "params": "*"}}, "weight decay")
    if "constrain" in items:
        from .constraints import parse_constraints  # constraints builds on this module's CallSpec

        spec.constraints = parse_constraints(items["constrain"].value)
    if groups:
        for key in ("loss", "optimizer", "params", "schedule", "clip"):
            if key in items:
                raise _err(f"`{key}` belongs inside each `step` group when the block has step groups",
                           items[key].loc)
        spec.steps = [_step(g.name, {i.key: i for i in g.items}, g.loc, g.items) for g in groups]
    else:
        spec.steps = [_step("main", items, t.loc, ())]
    return spec


def _step(name: str, items: dict, loc, raw) -> StepSpec:
    for it in raw:
        if it.key not in STEP_KEYS:
            raise _err(f"unknown key `{it.key}` in step `{name}`", it.loc,
                       suggest(it.key, STEP_KEYS) or "keys: " + ", ".join(STEP_KEYS))
    if "loss" not in items:
        raise _err(f"step `{name}` needs a `loss`" if raw else "the train block needs a `loss`", loc,
                   "name a scalar output: `loss = loss`")
    optimizer = (_call(items["optimizer"].value, OPTIMIZERS, "optimizer") if "optimizer" in items
                 else CallSpec("sgd", dict(OPTIMIZERS["sgd"])))
    schedule = _schedule(items["schedule"].value) if "schedule" in items else CallSpec("constant", {})
    clip = None
    if "clip" in items:
        clip = _call(items["clip"].value, {"norm": {"max": None}, "value": {"max": None}}, "clipping")
    every = _int(items, "every", 1, low=1)
    repeat = _int(items, "repeat", 1, low=1)
    sees = "updated"
    if "sees" in items:
        sees = _literal(items["sees"].value, "", "`sees`")
        if sees not in SEES:
            raise _err(f"`sees` must be `updated` or `start`, got `{sees}`", items["sees"].value.loc,
                       "updated: other groups' parameters as updated earlier in this batch; "
                       "start: as they were when the batch began")
    constraints = []
    if raw and "constrain" in items:
        from .constraints import parse_constraints

        constraints = parse_constraints(items["constrain"].value)
    params = _patterns(items["params"].value) if "params" in items else ("*",)
    where = items["params"].loc if "params" in items else loc
    return StepSpec(name, items["loss"].value, params, optimizer, schedule, clip, every, where, repeat, sees,
                    constraints)


def _schedule(e) -> CallSpec:
    spec = _call(e, SCHEDULES, "schedule")
    if spec.name == "warmup":
        then = spec.kwargs["then"]
        inner = _schedule(then if isinstance(then, A.Call) else A.Name(str(then), loc=e.loc))
        if inner.name == "warmup":
            raise _err("warm-up cannot be followed by another warm-up", e.loc)
        spec = CallSpec("warmup", {**spec.kwargs, "then": inner}, spec.loc)
    return spec


def _call(e, table: dict, what: str) -> CallSpec:
    if isinstance(e, A.Name):
        e = A.Call(e, (), (), loc=e.loc)
    if not isinstance(e, A.Call) or not isinstance(e.func, A.Name):
        raise _err(f"expected {what} such as `{next(iter(table))}(...)`", e.loc)
    name = e.func.id
    if name not in table:
        raise _err(f"unknown {what} `{name}`", e.func.loc, suggest(name, table) or "choose from " + ", ".join(table))
    params = table[name]
    keys = list(params)
    if len(e.args) > len(keys):
        raise _err(f"`{name}` takes at most {len(keys)} positional argument(s)", e.loc, _sig(name, params))
    given = dict(zip(keys, e.args))
    for k in e.kwargs:
        if k.name not in params:
            raise _err(f"`{name}` has no argument `{k.name}`", k.loc, suggest(k.name, keys) or _sig(name, params))
        given[k.name] = k.value
    out = {}
    for k, default in params.items():
        if k not in given:
            if default is None:
                raise _err(f"`{name}` needs `{k}`", e.loc, _sig(name, params))
            out[k] = default
            continue
        out[k] = _literal(given[k], default, f"argument `{k}` of `{name}`")
        _check_range(name, k, out[k], given[k].loc)
    return CallSpec(name, out, e.loc)


# argument name → (lowest, highest, is the lowest itself allowed); names not listed are unchecked
_RANGES = {"lr": (0, None, True), "eps": (0, None, False), "every": (0, None, False), "gamma": (0, None, False),
           "total": (0, None, False), "max": (0, None, False), "power": (0, None, False),
           "epochs": (0, None, False), "patience": (1, None, True), "strength": (0, None, True),
           "min_delta": (0, None, True), "weight_decay": (0, None, True), "l1": (0, None, True),
           "l2": (0, None, True), "initial": (0, None, True), "min_lr": (0, None, True),
           "beta": (0, 1, True), "beta1": (0, 1, True), "beta2": (0, 1, True), "rho": (0, 1, True)}


def _check_range(call: str, key: str, value, loc) -> None:
    if key == "mode" and value not in ("auto", "min", "max"):
        raise _err(f"`mode` of `{call}` must be auto, min or max, got {value}", loc)
    if key not in _RANGES or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if call == "ftrl" and key == "lr" and value <= 0:  # FTRL divides by its rate
        raise _err(f"argument `lr` of `ftrl` must be > 0, got {value}", loc)
    low, high, closed = _RANGES[key]
    ok = (value >= low if closed else value > low) and (high is None or value < high)
    if not ok:
        bound = f">= {low}" if closed else f"> {low}"
        bound += f" and < {high}" if high is not None else ""
        raise _err(f"argument `{key}` of `{call}` must be {bound}, got {value}", loc)


def _literal(e, like, what: str):
    """A compile-time value for a train argument, typed like its default (None: a number)."""
    if isinstance(like, bool):
        if isinstance(e, A.Bool):
            return e.value
        return _evaluated(e, what, BOOL)
    if like is None or isinstance(like, (int, float)):
        value = e.value if isinstance(e, A.Number) else _evaluated(e, what, NUM)
        return float(value) if isinstance(like, float) else value
    if isinstance(e, A.Call):
        return e  # a nested call (warm-up's `then`), validated by its owner
    if isinstance(e, (A.Name, A.Attribute, A.String)):
        return _dotted(e)
    raise _err(f"{what} must be {STR}", e.loc)


def _dotted(e) -> str:
    if isinstance(e, A.String):
        return e.value
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Attribute):
        return f"{_dotted(e.value)}.{e.attr}"
    raise _err("expected a name", e.loc)


def _patterns(e) -> tuple[str, ...]:
    items = e.items if isinstance(e, A.ListExpr) else (e,)
    return tuple(_dotted(i) for i in items)


def _data(e) -> CallSpec:
    if isinstance(e, A.String):
        return CallSpec(e.value, {}, e.loc)
    if isinstance(e, A.Name):
        return CallSpec(e.id, {}, e.loc)
    if isinstance(e, A.Call) and isinstance(e.func, A.Name) and e.func.id == "file":
        if len(e.args) != 1 or not isinstance(e.args[0], A.String):
            raise _err("`file(...)` takes the file name as a string: `file(\"data.csv\", target = \"label\")`",
                       e.loc)
        return CallSpec(e.args[0].value, {k.name: _plain(k.value) for k in e.kwargs}, e.loc)
    if not isinstance(e, A.Call) or not isinstance(e.func, A.Name) or e.args:
        raise _err("`data` is a data set call such as `digits(seed = 0)`, a file name, or "
                   "`file(\"x.csv\", target = \"label\")`", e.loc)
    kwargs = {}
    for k in e.kwargs:
        kwargs[k.name] = _plain(k.value)
    return CallSpec(e.func.id, kwargs, e.loc)


def _plain(e):
    values = _VALUES.get()
    if isinstance(e, (A.Number, A.String, A.Bool)):
        return e.value
    if isinstance(e, A.ListExpr):
        return [_plain(i) for i in e.items]
    if values is not None and (isinstance(e, A.Name) and e.id in values.names or isinstance(e, (A.BinOp, A.UnaryOp))):
        return values(e)  # a hyperparameter or const (`n = n`), or arithmetic over them
    if isinstance(e, (A.Name, A.Attribute)):
        return _dotted(e)
    raise _err("expected a number, string, boolean or list", e.loc)


def _mapping(e) -> dict[str, str]:
    if not isinstance(e, A.Call) or not isinstance(e.func, A.Name) or e.func.id != "map" or e.args:
        raise _err("`inputs` maps model inputs to data arrays: `inputs = map(xs = x, y = y_cls)`", e.loc)
    return {k.name: _dotted(k.value) for k in e.kwargs}


def _metrics(e) -> list[tuple[str, A.Expr]]:
    items = e.items if isinstance(e, A.ListExpr) else (e,)
    out, seen = [], set()
    for it in items:
        base = it.id if isinstance(it, A.Name) else it.func.id if isinstance(it, A.Call) and isinstance(
            it.func, A.Name) else "metric"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        out.append((name, it))
    return out


def _int(items: dict, key: str, default: int, low: int) -> int:
    if key not in items:
        return default
    e = items[key].value
    value = e.value if isinstance(e, A.Number) else _evaluated(e, f"`{key}`", "an integer")
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _err(f"`{key}` must be an integer >= {low}" + ("" if isinstance(e, A.Number) else f", got {value!r}"),
                   e.loc)
    return value


def _sig(name: str, params: dict) -> str:
    return f"`{name}(" + ", ".join(k if v is None else f"{k} = {v}" for k, v in params.items()) + ")`"


def _err(message: str, loc, hint: str | None = None) -> DlcError:
    return DlcError("E0201", message, loc, hint=hint)

"""The abstract syntax tree of a `.dl` file: frozen dataclasses.

Every node carries ``loc`` (its source span).  ``loc`` is excluded from
equality, so two trees parsed from differently formatted text compare equal
when they mean the same program (the printer round-trip test relies on it).
Pipelines (``x |> f(a)``) are desugared by the parser into ``Call`` nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import NO_LOC, Loc


def _loc():
    return field(default=NO_LOC, compare=False, repr=False, kw_only=True)


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Name:
    id: str
    loc: Loc = _loc()


@dataclass(frozen=True)
class Number:
    value: int | float
    loc: Loc = _loc()


@dataclass(frozen=True)
class String:
    value: str
    loc: Loc = _loc()


@dataclass(frozen=True)
class Bool:
    value: bool
    loc: Loc = _loc()


@dataclass(frozen=True)
class BinOp:
    """``op`` is one of ``+ - * / % ** @ == != < <= > >= and or``."""

    op: str
    left: "Expr"
    right: "Expr"
    loc: Loc = _loc()


@dataclass(frozen=True)
class UnaryOp:
    """``op`` is ``-`` or ``not``."""

    op: str
    operand: "Expr"
    loc: Loc = _loc()


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    loc: Loc = _loc()


@dataclass(frozen=True)
class Call:
    func: "Expr"  # a Name or an Attribute
    args: tuple["Expr", ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    loc: Loc = _loc()


@dataclass(frozen=True)
class Attribute:
    """``value.attr``; ``attr`` may be digits (``blocks.2.attn``)."""

    value: "Expr"
    attr: str
    loc: Loc = _loc()


@dataclass(frozen=True)
class Ellipsis_:
    """``...`` in a subscript: as many full slices as the other items leave axes."""

    loc: Loc = _loc()


@dataclass(frozen=True)
class Slice:
    start: "Expr | None" = None
    stop: "Expr | None" = None
    step: "Expr | None" = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Index:
    """``value[items]``; each item is an Expr (an index), a Slice or an Ellipsis_."""

    value: "Expr"
    items: tuple["Expr | Slice", ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class TupleExpr:
    items: tuple["Expr", ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Repeat:
    """``repeat count callee(args, kwargs)``: apply a layer ``count`` times,
    threading the first argument through; scopes are ``binding.0`` …"""

    count: "Expr"
    callee: Name
    args: tuple["Expr", ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    loc: Loc = _loc()


@dataclass(frozen=True)
class Scan:
    """``scan callee(kwargs) over xs axis k init (c1, ...) lengths L [reverse]``, or
    ``steps N`` instead of ``over xs`` (``over`` is then None)."""

    callee: Name
    kwargs: tuple[Keyword, ...]
    over: "Expr | None"
    axis: "Expr | None" = None
    init: tuple["Expr", ...] = ()
    reverse: bool = False
    loc: Loc = _loc()
    steps: "Expr | None" = None
    lengths: "Expr | None" = None


Expr = Union[Name, Number, String, Bool, BinOp, UnaryOp, Call, Attribute, Index,
             ListExpr, TupleExpr, Repeat, Scan]


# ---------------------------------------------------------------------- types
@dataclass(frozen=True)
class TensorTypeExpr:
    """``f32[B, 4*H]``; ``dtype`` is None for a bare ``[I, units]`` (param default f32)."""

    dtype: str | None
    dims: tuple[Expr, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class ScalarTypeExpr:
    """``int``, ``float``, ``bool`` or ``str`` (for layer/model hyperparameters)."""

    name: str
    loc: Loc = _loc()


TypeExpr = Union[TensorTypeExpr, ScalarTypeExpr]


# ----------------------------------------------------------------- statements
@dataclass(frozen=True)
class InputDecl:
    name: str
    type: TensorTypeExpr
    loc: Loc = _loc()


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: TensorTypeExpr
    init: Expr | None = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class StateDecl:
    """``state NAME: [dims] = init``: a tensor carried from one training step to
    the next (running statistics), not trained by gradients."""

    name: str
    type: TensorTypeExpr
    init: Expr | None = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Update:
    """``update NAME = expr``: the next value of state ``NAME``."""

    name: str
    value: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class OutputDecl:
    """``output name = expr``, or ``output name`` for an existing binding."""

    name: str
    value: Expr | None = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Binding:
    targets: tuple[str, ...]
    value: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Require:
    cond: Expr
    message: str | None = None
    loc: Loc = _loc()


Stmt = Union[InputDecl, ParamDecl, StateDecl, Update, OutputDecl, Binding, Return, Require]


# --------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Formal:
    """A layer or model parameter: ``name[: type][= default]``."""

    name: str
    type: TypeExpr | None = None
    default: Expr | None = None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Use:
    path: str
    loc: Loc = _loc()


@dataclass(frozen=True)
class Const:
    name: str
    value: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class LayerDef:
    name: str
    formals: tuple[Formal, ...]
    body: tuple[Stmt, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class ModelDef:
    name: str
    formals: tuple[Formal, ...]
    body: tuple[Stmt, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class TrainItem:
    key: str
    value: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class StepGroup:
    """``step name { key = value; ... }`` inside a train block."""

    name: str
    items: tuple[TrainItem, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class TrainDef:
    model: str
    items: tuple[TrainItem | StepGroup, ...]
    loc: Loc = _loc()


Decl = Union[Use, Const, LayerDef, ModelDef, TrainDef]


@dataclass(frozen=True)
class Module:
    decls: tuple[Decl, ...]
    loc: Loc = _loc()

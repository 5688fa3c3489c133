"""Frames: the name environment of one block instance (the model, or one call
of a layer) while it is lowered.

Bindings are evaluated lazily, on first use, so their order in the source does
not matter; a binding reached again while it is being evaluated closes a cycle,
reported with every binding on it.  Names resolve, in order: the block's own
names (formals, inputs, params, bindings), symbolic dims, the module's consts
and layers, then ops and dtypes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, Loc, suggest

from ..builder import Builder
from ..dims import Sym
from ..graph import Graph, Value
from ..ops.registry import all_ops
from ..types import DTYPES

_DEEP = 32  # bindings being evaluated inside each other before dependencies are forced iteratively
# names users write that map onto registry ops with other names
ALIASES = {"expand": "broadcast_to", "silu": "swish", "concatenate": "concat", "index_select": "gather"}
# `max(x)` reduces, `max(a, b)` is elementwise: expr.call_value picks by arity
ARITY_DISPATCH = {"max": ("reduce_max", "maximum"), "min": ("reduce_min", "minimum")}


@dataclass(frozen=True)
class OpRef:
    """An op used as a value (``act = relu``); ``kwargs`` pre-applied (``leaky_relu(alpha = 0.2)``)."""

    name: str
    kwargs: tuple = ()


@dataclass(frozen=True)
class LayerRef:
    """A layer used as a value; ``module`` is the ModuleEnv it was defined in."""

    defn: A.LayerDef
    module: Any
    kwargs: tuple = ()


@dataclass(frozen=True)
class Builtin:
    """A language builtin that is not an op: ``grad`` (compiler/lower/autodiff.py)."""

    name: str


BUILTINS = {"grad": Builtin("grad")}


@dataclass(frozen=True)
class DType:
    name: str


@dataclass
class ModuleEnv:
    """The top-level names of one spec file (after its ``use`` imports)."""

    path: str
    layers: dict[str, LayerRef] = field(default_factory=dict)
    consts: dict[str, A.Const] = field(default_factory=dict)
    const_values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    """State shared by every frame of one compilation."""

    graph: Graph
    builder: Builder  # adds nodes to the main graph (params always live there)
    mode: str
    visiting: list = field(default_factory=list)  # (frame, name) of bindings being evaluated
    depth: int = 0


class Frame:
    def __init__(self, ctx: Ctx, module: ModuleEnv, *, scope: str, context: str, builder: Builder,
                 capture: Callable[[Value], Value] | None = None, parent: "Frame | None" = None):
        self.ctx = ctx
        self.parent = parent  # the calling frame (parameter paths like `embed.E` may point into it)
        self.module = module
        self.scope = scope
        self.context = context
        self.builder = builder
        self.capture = capture or (lambda v: v)
        self.names: dict[str, Any] = {}
        self.locs: dict[str, Loc] = {}
        self.pending: dict[str, A.Binding] = {}
        self.dims: dict[str, Any] = {}
        self.calls: dict[str, int] = {}  # layer calls made while evaluating each binding
        self.states: dict[str, str] = {}  # state declared in this block → its path in the graph
        self.binding: str | None = None

    # -- scopes ----------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.scope}.{name}" if self.scope else name

    def call_scope(self, fallback: str = "out") -> str:
        """The scope of the next layer call: the binding's name, numbered after the first."""
        base = self.binding or fallback
        n = self.calls.get(base, 0) + 1
        while n > 1 and (f"{base}_{n}" in self.names or f"{base}_{n}" in self.pending):
            n += 1  # `base_2` is a binding of its own: do not take its scope
        self.calls[base] = n
        return self.path(base if n == 1 else f"{base}_{n}")

    def error(self, code: str, message: str, loc: Loc | None, hint: str | None = None, **kw) -> DlcError:
        return DlcError(code, message, loc, hint=hint, context=self.context or None, **kw)

    # -- definitions -------------------------------------------------------------
    def define(self, name: str, value, loc: Loc | None) -> None:
        if name in self.names or name in self.pending:
            first = self.locs.get(name) or (self.pending[name].loc if name in self.pending else None)
            raise self.error("E0107", f"`{name}` is defined twice", loc,
                             notes=[("first defined here", first)] if first else [])
        self.names[name] = value
        self.locs[name] = loc

    def add_binding(self, stmt: A.Binding) -> None:
        for t in stmt.targets:
            if t in self.names or t in self.pending:
                first = self.locs.get(t) or self.pending[t].loc
                raise self.error("E0107", f"`{t}` is defined twice", stmt.loc, notes=[("first defined here", first)])
            self.pending[t] = stmt

    # -- lookup ------------------------------------------------------------------
    def lookup(self, name: str, loc: Loc | None):
        if name in self.names:
            return self.names[name]
        if name in self.pending:
            self.force(name, loc)
            return self.names[name]
        if name in self.dims:
            return self.dims[name]
        if name in self.module.consts:
            return const_value(self.module, name)
        if name in self.module.layers:
            return self.module.layers[name]
        if name in BUILTINS:
            return BUILTINS[name]
        op = ALIASES.get(name, name)
        if op in all_ops() or op in ARITY_DISPATCH:
            return OpRef(op)
        if name in DTYPES:
            return DType(name)
        hint = suggest(name, self.visible())
        if name[:1].isupper() and not hint:
            hint = "capitalised names are symbolic dims; bind them in an input or argument type"
        if name == "first":  # the per-copy form exists only among a repeat's arguments
            hint = "`first(a, b)` chooses a value per copy in the arguments of `repeat`: " \
                   "`repeat n block(x, stride = first(2, 1))`"
        raise self.error("E0101", f"unknown name `{name}`", loc, hint=hint)

    def visible(self) -> list[str]:
        return [*self.names, *self.pending, *self.dims, *self.module.consts, *self.module.layers,
                *BUILTINS, *all_ops(), *ALIASES, *ARITY_DISPATCH]

    def force(self, name: str, loc: Loc | None) -> None:
        """Evaluate the pending binding that defines ``name`` (its pending dependencies first)."""
        from .expr import evaluate

        if len(self.ctx.visiting) >= _DEEP:  # a long chain: walk it without recursing (node order elsewhere
            self._force_dependencies(name)   # stays that of plain lazy evaluation)
            if name not in self.pending:
                return
        stmt = self.pending[name]
        key = (id(self), stmt.targets)
        if key in self.ctx.visiting:
            start = self.ctx.visiting.index(key)
            chain = [", ".join(t) for f, t in self.ctx.visiting[start:] if f == id(self)]
            raise self.error("E0106", "these bindings depend on each other in a cycle: "
                             + " → ".join(f"`{n}`" for n in chain + chain[:1]), stmt.loc,
                             hint="every binding is a node of the graph; a value cannot depend on itself "
                                  "(use `scan` for recurrence)")
        self.ctx.visiting.append(key)
        saved = self.binding
        self.binding = stmt.targets[0]
        try:
            value = evaluate(stmt.value, self)
        finally:
            self.binding = saved
            self.ctx.visiting.pop()
        for t in stmt.targets:
            self.pending.pop(t, None)
        if len(stmt.targets) == 1:
            self.names[stmt.targets[0]] = value
        else:
            if not isinstance(value, tuple) or len(value) != len(stmt.targets):
                got = len(value) if isinstance(value, tuple) else 1
                raise self.error("E0102", f"{len(stmt.targets)} names on the left, but the right side gives "
                                 f"{got} value{'s' if got != 1 else ''}", stmt.loc)
            for t, v in zip(stmt.targets, value):
                self.names[t] = v
        for t in stmt.targets:
            self.locs[t] = stmt.loc

    def _force_dependencies(self, name: str) -> None:
        """Force the pending bindings ``name``'s binding mentions, deepest first, by an explicit
        depth-first walk: evaluating one then finds its inputs ready and recurses no deeper.
        A mention that closes a cycle is left to :meth:`force`, which reports it."""
        from .deps import mentioned_names

        busy = self.__dict__.setdefault("_preforcing", set())
        if name in busy:  # a cycle through the walk itself: evaluation reports it
            return
        busy.add(name)
        try:
            self._walk_dependencies(name, mentioned_names)
        finally:
            busy.discard(name)

    def _walk_dependencies(self, name: str, mentioned_names) -> None:
        root = self.pending[name]
        on_path = {id(root)}
        stack = [(root, iter(mentioned_names(root.value)))]
        while stack:
            stmt, deps = stack[-1]
            dep = next((d for d in deps if d in self.pending and id(self.pending[d]) not in on_path), None)
            if dep is not None:
                child = self.pending[dep]
                if any(f == id(self) and t == child.targets for f, t in self.ctx.visiting):
                    continue  # already being evaluated further out: a cycle, reported by force
                on_path.add(id(child))
                stack.append((child, iter(mentioned_names(child.value))))
                continue
            stack.pop()
            on_path.discard(id(stmt))
            if stmt is not root and stmt.targets[0] in self.pending:
                self.force(stmt.targets[0], stmt.loc)

    def force_all(self) -> None:
        """Evaluate every binding not used yet (in source order), so its errors surface."""
        for name in sorted(self.pending, key=lambda n: (self.pending[n].loc.line, self.pending[n].loc.col)):
            if name in self.pending:
                self.force(name, self.pending[name].loc)


def const_value(module: ModuleEnv, name: str):
    """The value of a module-level ``const`` (evaluated once, in an empty frame)."""
    if name not in module.const_values:
        from .expr import evaluate

        decl = module.consts[name]
        module.const_values[name] = _EVALUATING
        frame = Frame(_CONST_CTX, module, scope="", context="", builder=None)  # type: ignore[arg-type]
        try:
            value = evaluate(decl.value, frame)
        except BaseException:
            del module.const_values[name]  # not "being evaluated" any more: the next compile reports it again
            raise
        if isinstance(value, Value):
            raise DlcError("E0103", f"const `{name}` must be a number, string or list, not a tensor", decl.loc)
        module.const_values[name] = value
    value = module.const_values[name]
    if value is _EVALUATING:
        raise DlcError("E0106", f"const `{name}` depends on itself", module.consts[name].loc)
    return value


_EVALUATING = object()
_CONST_CTX = Ctx(graph=None, builder=None, mode="eval")  # type: ignore[arg-type]


def is_tensor(v) -> bool:
    return isinstance(v, Value)


def describe(v) -> str:
    """A value's kind in words, for error messages."""
    if isinstance(v, Value):
        return "a tensor"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, Sym):
        return f"the dim {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, (tuple, list)):
        return f"a list of {len(v)}"
    if isinstance(v, OpRef):
        return f"the op `{v.name}`"
    if isinstance(v, LayerRef):
        return f"the layer `{v.defn.name}`"
    if isinstance(v, DType):
        return f"the dtype {v.name}"
    if isinstance(v, Builtin):
        return f"the builtin `{v.name}`"
    return type(v).__name__


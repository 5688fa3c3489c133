"""The builder: the one way nodes are added to a graph.

``b.apply("matmul", x, w)`` (or ``b.matmul(x, w)``) looks the op up, checks
attrs, runs its shape rule — so every node is typed the moment it exists —
and adds the node with the builder's current scope, source span, role and
``grad_of`` tag.  Python numbers among the inputs become constants with the
dtype of the first tensor input (weak scalar typing).  Composite ops expand
into primitives here.  A failing shape rule becomes a ``DlcError`` E0104 at
the current span, naming the layer path.
"""
from __future__ import annotations

import contextlib

import numpy as np

from dlc.grammar.errors import DlcError

from . import budget
from .graph import RNG_INPUT, Graph, Value
from .ops.registry import get_op
from .types import FLOATS, AttrError, ShapeError, TensorType, dtype_name, np_dtype


class Builder:
    def __init__(self, graph: Graph, *, scope: str = "", loc=None, role: str = "forward",
                 context: str | None = None, mode: str = "eval"):
        self.graph = graph
        self.mode = mode  # "train" or "eval": dropout and batch_norm expand differently
        self.scope = scope
        self.loc = loc
        self.role = role
        self.grad_of: int | None = None
        self.context = context  # human layer path for error messages
        self.shown_op: str | None = None  # the op the user wrote, while it and its expansion are built

    @contextlib.contextmanager
    def at(self, *, scope=None, loc=None, role=None, grad_of=..., context=...):
        """Temporarily change where (and as what) nodes are added."""
        saved = (self.scope, self.loc, self.role, self.grad_of, self.context)
        if scope is not None:
            self.scope = scope
        if loc is not None:
            self.loc = loc
        if role is not None:
            self.role = role
        if grad_of is not ...:
            self.grad_of = grad_of
        if context is not ...:
            self.context = context
        try:
            yield self
        finally:
            self.scope, self.loc, self.role, self.grad_of, self.context = saved

    def rng_key(self) -> Value:
        """The graph's random key input (i64 scalar named ``__rng``), made on first use.

        The runtime feeds a key derived from (seed, step); random ops hash
        (key, salt, element index), so results are reproducible and the same
        in NumPy and onnxruntime."""
        for n in self.graph.inputs:
            if self.graph[n].attrs["name"] == RNG_INPUT:
                return Value(n)
        n = self.graph.add_node("input", (), {"name": RNG_INPUT}, (TensorType("i64", ()),), role="state")
        self.graph.add_input(n)
        return Value(n)

    def salt(self) -> int:
        """A fresh per-graph salt that tells random ops apart (deterministic)."""
        self.graph.salt_counter += 1
        return self.graph.salt_counter

    def type(self, v: Value) -> TensorType:
        return self.graph.type_of(v)

    # -- node creation ---------------------------------------------------
    def node(self, op: str, inputs, attrs: dict, types) -> int:
        if len(self.graph) % 4096 == 4095:  # every few thousand nodes: cheap, and early enough
            budget.check_nodes(len(self.graph), self.loc)
        return self.graph.add_node(op, inputs, attrs, types, loc=self.loc, scope=self.scope,
                                   role=self.role, grad_of=self.grad_of)

    def const(self, value, dtype: str | None = None) -> Value:
        arr = np.asarray(value, dtype=np_dtype(dtype) if dtype else None)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        arr.setflags(write=False)
        t = TensorType(dtype_name(arr.dtype), tuple(int(d) for d in arr.shape))
        return Value(self.node("const", (), {"value": arr}, (t,)))

    def apply(self, op: str, *inputs, **attrs):
        """Add one application of ``op``; returns a Value or a tuple of Values.

        Errors name the outermost op being applied (``mse``, not the ``sub`` it
        expands into).  An unknown op name is a bug in dlc (the front end
        resolves the names users write), not a user error."""
        try:
            opdef = get_op(op)
        except KeyError:
            raise LookupError(f"dlc bug: no op named {op!r} in the registry") from None
        outer = self.shown_op is None
        if outer:
            self.shown_op = op
        try:
            return self._apply(op, opdef, inputs, attrs)
        finally:
            if outer:
                self.shown_op = None

    def _apply(self, op: str, opdef, inputs, attrs):
        shown = self.shown_op or op
        try:
            attrs = opdef.check_attrs(attrs)
        except ShapeError as e:
            raise self.error("E0102", user_facing(str(e), op, shown)) from None
        values = self._tensors(op, inputs)
        if opdef.composite:
            return opdef.expand(self, *values, **attrs)
        types = [self.type(v) for v in values]
        try:
            attrs = opdef.resolve_attrs(types, attrs)
            out = opdef.shape(*types, **attrs)
        except AttrError as e:  # an attribute of the wrong form: the arguments are wrong, not the shapes
            raise self.error("E0102", user_facing(str(e), op, shown)) from None
        except ShapeError as e:
            err = self.error("E0104", f"shape mismatch in `{shown}`: {user_facing(str(e), op, shown)}")
            err.notes.extend(self._operand_notes(values))
            raise err from None
        out = out if isinstance(out, tuple) else (out,)
        n = self.node(op, values, attrs, out)
        if opdef.outputs is not None and len(opdef.outputs) == 1:
            return Value(n, 0)
        return tuple(Value(n, i) for i in range(len(out)))

    def __getattr__(self, op: str):
        """``b.matmul(x, w)`` is ``b.apply("matmul", x, w)`` for ops that exist.  A name that is
        no op is an AttributeError — a bug in the compiler (a typo in a gradient rule), not
        the user's E0101, which :meth:`apply` raises for names written in a spec."""
        if op.startswith("_"):
            raise AttributeError(op)
        try:
            get_op(op)
        except KeyError:
            raise AttributeError(f"Builder has no op `{op}`") from None
        return lambda *inputs, **attrs: self.apply(op, *inputs, **attrs)

    def _tensors(self, op: str, inputs) -> list[Value]:
        # a number takes the dtype of the first non-bool tensor: where(mask, x, 0.0) makes 0.0 x's dtype
        dtypes = [self.type(v).dtype for v in inputs if isinstance(v, Value)]
        like = next((d for d in dtypes if d != "bool"), dtypes[0] if dtypes else None)
        out = []
        for v in inputs:
            if isinstance(v, Value):
                out.append(v)
            elif isinstance(v, (bool, int, float, np.number, np.ndarray)):
                dtype = like if like is not None else ("f32" if isinstance(v, float) else None)
                if dtype is not None and dtype not in FLOATS and isinstance(v, float) and float(v) != int(v):
                    raise self.error("E0103", f"`{self.shown_op or op}` mixes a {dtype} tensor with the number {v}",
                                     hint="use cast(x, f32) to convert the tensor")
                out.append(self.const(v, dtype if dtype else ("bool" if isinstance(v, bool) else "i64")))
            else:
                raise self.error("E0103", f"`{self.shown_op or op}` expects a tensor, got {_describe(v)}")
        return out

    def _operand_notes(self, values) -> list:
        """Where each operand of a failing op comes from, with its type (the other spans)."""
        notes = []
        for i, v in enumerate(values):
            data = self.graph[v.node]
            loc = data.loc
            if loc is not None and loc != self.loc and getattr(loc, "source", None) is not None:
                what = data.attrs.get("name") if data.op in ("input", "param") else None
                label = f"`{what}` is {data.types[v.index]}, declared" if what else \
                    f"operand {i + 1} is {data.types[v.index]}, computed"
                if (label, loc) not in notes:  # x @ x: one note
                    notes.append((label, loc))
        return notes

    def error(self, code: str, message: str, hint: str | None = None) -> DlcError:
        return DlcError(code, message, self.loc, hint=hint, context=self.context)


def user_facing(message: str, internal: str, shown: str) -> str:
    """``message`` with the internal op's quoted name replaced by the one the user wrote."""
    return message.replace(f"`{internal}`", f"`{shown}`") if internal != shown else message


def _describe(v) -> str:
    if isinstance(v, str):
        return f"the string {v!r}"
    return type(v).__name__

"""The NumPy interpreter: plan once, run many times.

:class:`Plan` turns a graph into a flat schedule of kernel calls over
numbered value slots; each slot is released right after its last use, so
peak memory follows the live set rather than the whole graph.  Symbolic dims
are bound per run from the shapes of the feeds; attrs that mention them are
resolved then, once per distinct binding of the dims (cached).

The schedule runs in one of two ways.  The hot path is straight-line Python
generated once per plan (:func:`~dlc.runtime.plan_codegen.generate`): one line per kernel call with
the kernel and its static attrs bound as constants, values in local
variables, ``del`` at each value's last use, and no per-call dict building,
attr lookups or isinstance chains; a failing kernel is located from the
traceback's line number.  The reference path (:meth:`Plan._execute`) walks
the step records and serves the modes that inspect every value: finiteness
checks, float64 gradient checks, per-op profiles.

A scan runs its body once per step through :meth:`Plan.bind`: dims bound, attrs
resolved and feeds checked once per scan call, then the generated function
called on positional inputs (no per-step dict of feeds, binding or peak check).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from dlc.compiler import budget
from dlc.compiler.dims import Sym, evaluate_shape, mentions_sym, solve
from dlc.compiler.graph import Graph, Value
from dlc.compiler.ops.registry import get_op
from dlc.compiler.types import FLOATS, ShapeError, dtype_name, np_dtype
from dlc.grammar.errors import DlcError

from .plan_codegen import generate
from .plan_memory import planned_peak
from .plan_values import as_declared, resolve_dims, run_dtype
from .run_context import RunContext

_NO_CONTEXT: dict = {}
# what a kernel raises on values its node's types admit but it cannot compute (an index past the
# end, a squeeze of a dim the feeds made 0): E0401 at the node's location, never a traceback
KERNEL_FAILURES = (ValueError, IndexError, FloatingPointError, KeyError, ShapeError)
# Debug mode: every value's run-time shape and dtype is compared with its declared type (the test
# suite turns it on for every run; see tests/conftest.py).
CHECK_TYPES_ENV = "DLC_CHECK_TYPES"


@dataclass
class _Step:
    node: int
    kernel: Callable
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    attrs: dict
    symbolic: bool  # attrs mention Syms: resolve per run
    context: bool  # the kernel gets a RunContext (control flow: it runs a body)
    frees: tuple[int, ...]


class Plan:
    """An executable schedule for ``graph`` computing ``outputs`` (default: all).

    ``compute_dtype=np.float64`` runs every float value in float64 (used by
    gradient checks); otherwise dtypes are those of the graph.
    """

    def __init__(self, graph: Graph, outputs: list[str] | None = None, *, compute_dtype=None,
                 check_types: bool | None = None):
        """``check_types`` (default: the ``DLC_CHECK_TYPES`` environment variable) compares every
        value computed with its declared type and raises E0401 at the first that differs (on the
        generated path too: the check is generated in)."""
        self.graph = graph
        self.check_types = bool(os.environ.get(CHECK_TYPES_ENV)) if check_types is None else check_types
        self._declared: dict = {}  # (node, output) -> (declared shape, has symbols, dtype)
        self._peaks_ok: set = set()  # dim bindings whose planned peak fits the budget
        self.output_names = list(graph.outputs) if outputs is None else list(outputs)
        self.compute_dtype = compute_dtype
        wanted = [graph.outputs[name] for name in self.output_names]
        live = graph.ancestors({v.node for v in wanted})
        order = [n for n in graph.topo_order() if n in live]
        slot_of: dict[Value, int] = {}
        for n in order:
            for v in graph.out_values(n):
                slot_of[v] = len(slot_of)
        self.n_slots = len(slot_of)
        self.sources: list[tuple[str, Any, int, int]] = []  # (kind, key, slot, node)
        steps: list[_Step] = []
        last_use: dict[int, int] = {}
        for n in order:
            data = graph[n]
            op = data.op
            if op in ("input", "param", "state"):
                self.sources.append((op, data.attrs["name"], slot_of[Value(n)], n))
                continue
            if op == "const":
                self.sources.append(("const", data.attrs["value"], slot_of[Value(n)], n))
                continue
            opdef = get_op(op)
            ins = tuple(slot_of[v] for v in data.inputs)
            for s in ins:
                last_use[s] = len(steps)
            attrs = dict(data.attrs)
            if compute_dtype is not None and op == "cast" and attrs["dtype"] in FLOATS:
                attrs["dtype"] = dtype_name(compute_dtype)
            steps.append(_Step(n, opdef.kernel, ins, tuple(slot_of[v] for v in graph.out_values(n)),
                               attrs, mentions_sym(attrs), opdef.takes_context, ()))
        self.out_slots = [slot_of[v] for v in wanted]
        keep = set(self.out_slots)
        frees: dict[int, list[int]] = {}
        for s, i in last_use.items():
            if s not in keep:
                frees.setdefault(i, []).append(s)
        for i, st in enumerate(steps):
            st.frees = tuple(frees.get(i, ()))
        self.steps = steps
        self.input_nodes = {graph[n].attrs["name"]: n for n in graph.inputs}
        self._dim_plan = self._plan_dims(graph, self.input_nodes)
        self._body_plans: dict[int, Plan] = {}  # id(body graph) → its plan; the plan keeps the body alive
        self._takes_context = any(st.context for st in steps)
        self._source_dtypes = [self._target(graph[n].types[0].dtype) for _, _, _, n in self.sources]
        self._symbolic = [i for i, st in enumerate(steps) if st.symbolic]
        self._resolved: dict = {}  # dims binding -> {step index: resolved attrs}
        self._fast, self._line_of_step = generate(self)

    # -- running ------------------------------------------------------------
    def bind_dims(self, feeds: Mapping[str, np.ndarray], known: Mapping[str, int] | None = None) -> dict[str, int]:
        """Unify the declared input types with the feeds' shapes.

        Fixed dims are compared and plain names (``B``) bound directly; dim
        expressions (``T - 1``) are solved last, once every plain name is known.
        This runs once per scan step, so the per-input work is planned ahead."""
        env: dict[str, Any] = dict(known or {})
        deferred = []
        for name, n, declared, fixed, names, exprs in self._dim_plan:
            if name not in feeds:
                continue
            actual = np.shape(feeds[name])
            ok = len(actual) == len(declared) and all(actual[ax] == d for ax, d in fixed)
            for ax, var in names if ok else ():
                if env.setdefault(var, actual[ax]) != actual[ax]:
                    ok = False
            if not ok:
                self._shape_error(name, n, declared, actual, env)
            if exprs:
                deferred.append((name, n, declared, actual, exprs))
        for name, n, declared, actual, exprs in deferred:
            if not all(solve(d, actual[ax], env) for ax, d in exprs):
                self._shape_error(name, n, declared, actual, env)
        return env

    def _shape_error(self, name, n, declared, actual, env):
        raise DlcError("E0401", f"input `{name}` has shape {list(actual)}, but the model declares "
                       f"{_fmt(evaluate_shape(declared, env))}", self.graph[n].loc)

    @staticmethod
    def _plan_dims(graph: Graph, input_nodes: dict) -> list:
        plan = []
        for name, n in input_nodes.items():
            declared = graph[n].types[0].shape
            fixed, names, exprs = [], [], []
            for ax, d in enumerate(declared):
                if not isinstance(d, Sym):
                    fixed.append((ax, d))
                elif d.single_var() is not None:
                    names.append((ax, d.single_var()))
                else:
                    exprs.append((ax, d))
            plan.append((name, n, declared, fixed, names, exprs))
        return plan

    def run(self, feeds: Mapping[str, Any], params: Mapping[str, np.ndarray] | None = None,
            state: Mapping[str, np.ndarray] | None = None, *, check_finite: bool = False,
            dims: Mapping[str, int] | None = None, profile: dict | None = None) -> dict:
        """Execute; returns ``{output name: array}``.

        ``check_finite`` raises E0402 at the first node whose output holds a
        NaN or Inf, naming its op and source line.  ``dims`` are known values of
        symbolic dims (a scan body gets its caller's).  ``profile``: a dict that
        accumulates ``op -> [seconds, calls]`` over the run (the reference path)."""
        params = params or {}
        state = state or {}
        env = self.bind_dims(feeds, dims)
        self._check_peak(env)
        values = []
        for (kind, key, slot, n), target in zip(self.sources, self._source_dtypes):
            if kind == "const":
                value = key
            else:
                table = feeds if kind == "input" else params if kind == "param" else state
                try:
                    value = table[key]
                except KeyError:
                    raise DlcError("E0401", f"no value given for {kind} `{key}`", self.graph[n].loc,
                                   hint=f"expected {kind}s: {', '.join(sorted(self._names(kind)))}") from None
            if value.__class__ is not np.ndarray or value.dtype != target:
                value = self._convert(value, self.graph[n].types[0].dtype, key, kind)
            values.append(value)
        with np.errstate(all="ignore"):  # NaN/Inf are reported by check_finite and the trainer, not warnings
            if check_finite or self.compute_dtype is not None or profile is not None:
                slots: list[Any] = [None] * self.n_slots
                for (_, _, slot, _), value in zip(self.sources, values):
                    slots[slot] = value
                self._execute(slots, env, check_finite, profile)
                return {name: slots[s] for name, s in zip(self.output_names, self.out_slots)}
            resolved = self._resolve_attrs(env) if self._symbolic else None
            self._run_env = env  # the dims the generated type checks (debug mode) evaluate shapes in
            try:
                results = self._fast(values, resolved, self._context(env))
            except DlcError:
                raise
            except KERNEL_FAILURES as e:
                raise self._failure(e) from e
        return dict(zip(self.output_names, results))

    def bind(self, feeds: Mapping[str, Any], dims: Mapping[str, int] | None = None) -> Callable[[list], tuple]:
        """A function running the plan again and again on inputs shaped like ``feeds``.

        Dims are bound, attrs resolved, the peak checked and ``feeds`` validated here, once;
        the function takes the graph's inputs positionally (``graph.inputs`` order, a list)
        and returns the planned outputs as a tuple.  Every call must pass arrays of the
        shapes and dtypes of ``feeds`` (a scan step: its carries keep their types and its
        slices have one shape), which is not checked again.  Falls back to :meth:`run` per
        call when this plan computes in another precision (gradient checks)."""
        names = [self.graph[n].attrs["name"] for n in self.graph.inputs]
        if self.compute_dtype is not None:
            def run_each(values: list) -> tuple:
                out = self.run(dict(zip(names, values)), dims=dims)
                return tuple(out[k] for k in self.output_names)
            return run_each
        env = self.bind_dims(feeds, dims)
        self._check_peak(env)
        position = {name: i for i, name in enumerate(names)}
        template: list[Any] = []
        picks: list[tuple[int, int]] = []  # (source index, input position)
        for (kind, key, _slot, n), target in zip(self.sources, self._source_dtypes):
            if kind == "const":
                same = key.__class__ is np.ndarray and key.dtype == target
                template.append(key if same else self._convert(key, self.graph[n].types[0].dtype, "", kind))
                continue
            if kind != "input":
                raise DlcError("E0401", f"a bound plan takes inputs only, not {kind} `{key}`", self.graph[n].loc)
            value = feeds.get(key)
            if value is None:
                raise DlcError("E0401", f"no value given for input `{key}`", self.graph[n].loc)
            if value.__class__ is not np.ndarray:
                value = np.asarray(value)  # a NumPy scalar (a 0-d slice taken by index) is a 0-d array here
            if value.dtype != target:
                raise DlcError("E0401", f"input `{key}` is {dtype_name(value.dtype)}, the plan runs "
                               f"{dtype_name(target)}", self.graph[n].loc)
            template.append(None)
            picks.append((len(template) - 1, position[key]))
        resolved = self._resolve_attrs(env) if self._symbolic else None
        context = self._context(env)
        fast, failure = self._fast, self._failure
        self._run_env = env
        direct = [p for _, p in picks] == list(range(len(names))) and len(template) == len(names)

        def run_bound(values: list) -> tuple:
            if direct:
                src = values
            else:
                src = template.copy()
                for i, p in picks:
                    src[i] = values[p]
            try:
                return fast(src, resolved, context)
            except DlcError:
                raise
            except KERNEL_FAILURES as e:
                raise failure(e) from e
        return run_bound

    def _context(self, env: dict) -> dict:
        """The extra kwargs of kernels that take the run's context (control flow: a
        :class:`RunContext`, see compiler/ops/context.py); none for plans without them."""
        if not self._takes_context:
            return _NO_CONTEXT
        return {"context": RunContext(self._body_plans, env, self.compute_dtype)}

    def _resolve_attrs(self, env: dict) -> dict:
        key = tuple(env.items())
        got = self._resolved.get(key)
        if got is None:
            if len(self._resolved) > 16:
                self._resolved.clear()
            got = self._resolved[key] = {i: resolve_dims(self.steps[i].attrs, env) for i in self._symbolic}
        return got

    def _failure(self, e: Exception) -> DlcError:
        """E0401 naming the node whose kernel raised ``e`` (found from the generated code's line)."""
        tb, line = e.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code is self._fast.__code__:
                line = tb.tb_lineno
            tb = tb.tb_next
        st = self.steps[self._line_of_step.get(line, 0)] if self.steps else None
        data = self.graph[st.node] if st is not None else None
        op = data.op if data is not None else "?"
        return DlcError("E0401", f"`{op}` failed at run time: {e}", data.loc if data is not None else None)

    def _execute(self, slots: list, env: dict, check_finite: bool, profile: dict | None = None) -> None:
        for st in self.steps:
            attrs = resolve_dims(st.attrs, env) if st.symbolic else st.attrs
            if st.context:
                attrs = {**attrs, **self._context(env)}
            try:
                if profile is None:
                    result = st.kernel(*[slots[s] for s in st.ins], **attrs)
                else:
                    t0 = time.perf_counter()
                    result = st.kernel(*[slots[s] for s in st.ins], **attrs)
                    entry = profile.setdefault(self.graph[st.node].op, [0.0, 0])
                    entry[0] += time.perf_counter() - t0
                    entry[1] += 1
            except DlcError:
                raise
            except KERNEL_FAILURES as e:
                data = self.graph[st.node]
                raise DlcError("E0401", f"`{data.op}` failed at run time: {e}", data.loc) from e
            if not isinstance(result, tuple):
                result = (result,)
            for i, (s, value) in enumerate(zip(st.outs, result)):
                value = np.asarray(value)
                if self.compute_dtype is not None and value.dtype.kind == "f":
                    value = value.astype(self.compute_dtype, copy=False)
                if self.check_types:
                    self._check_declared(st, i, value, env)
                slots[s] = value
                if check_finite and value.dtype.kind == "f" and not np.isfinite(value).all():
                    data = self.graph[st.node]
                    raise DlcError("E0402", f"`{data.op}` produced a non-finite value (NaN or Inf)",
                                   data.loc, context=data.scope or None,
                                   hint="lower the learning rate, clip gradients, or check log/div inputs")
            for s in st.frees:
                slots[s] = None

    def check_memory(self, feeds: Mapping[str, Any]) -> None:
        """E0003 when running on ``feeds`` would need more than the memory budget (nothing is run)."""
        self._check_peak(self.bind_dims(feeds))

    def _check_peak(self, env: dict) -> None:
        """Refuse a run whose planned peak memory (from the declared types under ``env``) is over budget."""
        key = tuple(sorted((k, v) for k, v in env.items() if isinstance(v, int)))
        if key in self._peaks_ok:
            return
        peak, where = self.planned_peak(env)
        if peak > budget.budget():
            data = self.graph[where] if where is not None else None
            shapes = ", ".join(f"{k}={v}" for k, v in key)
            budget.check(f"running this graph{' with ' + shapes if shapes else ''} (its peak is at `{data.op}`)"
                         if data else "running this graph", peak, data.loc if data else None,
                         hint="feed smaller inputs (a smaller batch), or raise the budget with --max-memory")
        self._peaks_ok.add(key)

    def planned_peak(self, env: dict) -> tuple[int, int | None]:
        """(bytes, node) of the largest live set of the schedule (runtime/plan_memory.py)."""
        return planned_peak(self.graph, self.sources, self.steps, env, self.compute_dtype)

    def _check_declared(self, st: _Step, i: int, value: np.ndarray, env: dict) -> None:
        """Debug mode: output ``i`` of ``st`` has exactly the shape and dtype the graph declares."""
        key = (st.node, i)
        if key not in self._declared:
            t = self.graph[st.node].types[i]
            self._declared[key] = (t.shape, any(isinstance(d, Sym) for d in t.shape),
                                   np_dtype(t.dtype) if self.compute_dtype is None or t.dtype not in FLOATS
                                   else np.dtype(self.compute_dtype))
        shape, symbolic, want_dt = self._declared[key]
        got, dt = value.shape, value.dtype
        if not symbolic and got == shape and dt == want_dt:
            return
        data = self.graph[st.node]
        t = data.types[i]
        want = evaluate_shape(shape, env)
        shape_ok = len(got) == len(want) and all(isinstance(w, Sym) or w == g for w, g in zip(want, got))
        if not shape_ok or dt != want_dt:
            raise DlcError("E0401", f"internal error: `{data.op}` output {i} is {dtype_name(dt)}{list(got)} "
                               f"at run time, but its declared type is {t.dtype}{_fmt(want)}", data.loc,
                               hint="this is a bug in dlc: please report it with the spec")

    def _target(self, dtype: str) -> np.dtype:
        return run_dtype(dtype, self.compute_dtype)

    def _convert(self, value, dtype: str, name="", kind="input") -> np.ndarray:
        return as_declared(value, self._target(dtype), name, kind)

    def _names(self, kind: str) -> list[str]:
        return [k for kd, k, _, _ in self.sources if kd == kind]


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"

"""Running graphs on either backend.

Two calling conventions:

- :func:`make_runner` — stateless: ``run(feeds, params, state) -> {output: array}``
  (tests, gradient checks, the CLI's ``run``).
- :func:`make_store` + :func:`bind` — the training hot path: parameters and
  state live in a backend-specific *store* (NumPy arrays, or OrtValues in
  onnxruntime memory on the session's device); ``run(feeds)`` reads the
  store and returns the outputs that are not store values (loss, metrics) as
  NumPy arrays; ``run.commit(names)`` replaces the store values ``names`` by
  their ``new/<name>`` outputs of that run.  Nothing crosses to the host
  between steps on the onnxruntime backend.

Either way the graph first goes through the optimizing pipeline
(compiler/passes/pipeline.py) for its backend: fused elementwise chains for
NumPy, primitive ops for onnxruntime.  The NumPy backend then plans the graph
once (runtime/interpreter.py); the onnxruntime backend exports it with
parameters and state as graph inputs (so updated values can be fed back every
step) and opens one session, plus one per batch shape with the scans unrolled
when the graph has scans (runtime/ort.py, :class:`~.ort.Unrolled`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from dlc.compiler.graph import Graph
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL, optimize
from dlc.grammar.errors import DlcError

Runner = Callable[[dict, dict, dict], dict]
BACKENDS = ("numpy", "onnxruntime")


def _unknown(backend: str) -> DlcError:
    return DlcError("E0110", f"unknown backend `{backend}`", hint="backends: " + ", ".join(BACKENDS))


def make_runner(graph: Graph, backend: str, level: int = DEFAULT_LEVEL, *, threads: int | None = None) -> Runner:
    """A runner of ``graph`` on ``backend``, optimized at ``level`` (0: as built); ``threads``:
    onnxruntime's intra-op threads (default :func:`~dlc.runtime.threads.training_threads`)."""
    if backend == "numpy":
        from .interpreter import Plan

        plan = Plan(optimize(graph, level, "numpy"))
        return lambda feeds, params, state: plan.run(feeds, params, state)
    if backend == "onnxruntime":
        from dlc.compiler.onnx_export import export_graph

        from .ort import Unrolled

        graph = optimize(graph, level, "onnx")
        wanted = list(graph.outputs)
        sessions = Unrolled(export_graph(graph, params=None, name=graph.name, train=True),
                            lambda session: lambda feeds: session.run(feeds, wanted), threads=threads)

        def run(feeds: dict, params: dict, state: dict) -> dict:
            return sessions({**feeds, **params, **state})

        return run
    raise _unknown(backend)


class NumpyStore(dict):
    """The NumPy backend's store: name → array (the arrays are never written in place)."""

    device = "cpu"

    def set(self, values: Mapping[str, np.ndarray]) -> None:
        self.update({k: np.array(v) for k, v in values.items()})

    def get(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return {n: np.array(self[n]) for n in (self if names is None else names)}


def make_store(backend: str, device: str = "cpu"):
    """An empty store of parameters and state for ``backend`` on ``device``."""
    if backend == "numpy":
        if device != "cpu":
            raise DlcError("E0110", f"the numpy backend runs on the CPU, not `{device}`",
                           hint="use backend=\"onnxruntime\" for other devices")
        return NumpyStore()
    if backend == "onnxruntime":
        from .ort import ResidentValues, providers_for

        providers_for(device)  # a missing provider is an error now, not at the first step
        return ResidentValues(device)
    raise _unknown(backend)


class _NumpyRun:
    def __init__(self, plan, store: NumpyStore, host: list[str]):
        self.plan, self.store, self.host = plan, store, host
        self._last: dict = {}

    def __call__(self, feeds: Mapping) -> dict:
        self._last = out = self.plan.run(feeds, self.store, self.store)
        return {o: out[o] for o in self.host}

    def commit(self, names: Iterable[str]) -> None:
        out, store = self._last, self.store
        for name in names:
            store[name] = out[f"new/{name}"]


def bind(graph: Graph, store, backend: str, *, threads: int | None = None, outputs: list[str] | None = None,
         level: int = DEFAULT_LEVEL):
    """``run(feeds) -> {output: array}`` for ``graph`` reading its params and state from
    ``store``; the ``new/<name>`` outputs are kept back, and ``run.commit(names)`` makes
    those of ``names`` the store's values (the others are dropped at the next run).
    ``level``: the optimizing pipeline's level (0: the graph as built)."""
    names = list(graph.outputs) if outputs is None else list(outputs)
    writes = {o: o[len("new/"):] for o in names if o.startswith("new/") and o[len("new/"):] in store}
    if backend == "numpy":
        from .interpreter import Plan

        return _NumpyRun(Plan(optimize(graph, level, "numpy"), names), store, [o for o in names if o not in writes])
    if backend == "onnxruntime":
        from dlc.compiler.onnx_export import export_graph

        from .ort import BoundRun, Unrolled

        graph = optimize(graph, level, "onnx")
        return Unrolled(export_graph(graph, params=None, name=graph.name, train=True),
                        lambda session: BoundRun(session, store, writes, names), device=store.device, threads=threads)
    raise _unknown(backend)

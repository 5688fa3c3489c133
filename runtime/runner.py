"""One calling convention for both backends: ``run(feeds, params, state) -> {output: array}``.

The graph first goes through the optimizing pipeline (compiler/passes/
pipeline.py) for its backend: fused elementwise chains for NumPy, primitive
ops for onnxruntime.  The NumPy backend then plans the graph once
(runtime/interpreter.py); the onnxruntime backend exports it with parameters
and state as graph inputs (so updated values can be fed back every step) and
opens one session.
"""
from __future__ import annotations

from typing import Callable


from dlc.compiler.graph import Graph
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL, optimize
from dlc.grammar.errors import DlcError

Runner = Callable[[dict, dict, dict], dict]


def make_runner(graph: Graph, backend: str, level: int = DEFAULT_LEVEL) -> Runner:
    """A runner of ``graph`` on ``backend``, optimized at ``level`` (0: as built)."""
    if backend == "numpy":
        from .interpreter import Plan

        plan = Plan(optimize(graph, level, "numpy"))
        return lambda feeds, params, state: plan.run(feeds, params, state)
    if backend == "onnxruntime":
        from dlc.compiler.onnx_export import export_graph

        from .ort import OrtSession

        graph = optimize(graph, level, "onnx")
        session = OrtSession(export_graph(graph, params=None, name=graph.name, train=True))
        wanted = list(graph.outputs)

        def run(feeds: dict, params: dict, state: dict) -> dict:
            return session.run({**feeds, **params, **state}, wanted)

        return run
    raise DlcError("E0110", f"unknown backend `{backend}`", hint="backends: numpy, onnxruntime")



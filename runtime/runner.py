"""One calling convention for both backends: ``run(feeds, params, state) -> {output: array}``.

The NumPy backend plans the graph once (runtime/interpreter.py); the
onnxruntime backend exports it with parameters and state as graph inputs
(so updated values can be fed back every step) and opens one session.
"""
from __future__ import annotations

from typing import Callable


from dlc.compiler.graph import Graph
from dlc.grammar.errors import DlcError

Runner = Callable[[dict, dict, dict], dict]


def make_runner(graph: Graph, backend: str) -> Runner:
    if backend == "numpy":
        from .interpreter import Plan

        plan = Plan(graph)
        return lambda feeds, params, state: plan.run(feeds, params, state)
    if backend == "onnxruntime":
        from dlc.compiler.onnx_export import export_graph

        from .ort import OrtSession

        session = OrtSession(export_graph(graph, params=None, name=graph.name, train=True))
        wanted = list(graph.outputs)

        def run(feeds: dict, params: dict, state: dict) -> dict:
            return session.run({**feeds, **params, **state}, wanted)

        return run
    raise DlcError("E0110", f"unknown backend `{backend}`", hint="backends: numpy, onnxruntime")



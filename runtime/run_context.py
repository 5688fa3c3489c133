"""The interpreter's kernel context: how an op that runs a body (``scan``) gets it run.

Ops never import the runtime (compiler/ops/context.py states the protocol);
the interpreter hands each such kernel a :class:`RunContext`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from dlc.compiler.graph import Graph


class RunContext:
    """The interpreter's :class:`~dlc.compiler.ops.context.KernelContext`:
    bodies run as nested plans, built once per body and precision (the cache
    belongs to the calling plan) and fed the caller's bound dims."""

    __slots__ = ("_plans", "dims", "compute_dtype")

    def __init__(self, plans: dict, dims: Mapping[str, int], compute_dtype):
        self._plans, self.dims, self.compute_dtype = plans, dims, compute_dtype

    def bind_body(self, body: Graph, feeds: Mapping[str, Any]) -> Callable[[list], tuple]:
        plan = self._plans.get(id(body))
        if plan is None:
            from .interpreter import Plan  # the interpreter imports this module: resolved at call time

            plan = self._plans[id(body)] = Plan(body, compute_dtype=self.compute_dtype)
        return plan.bind(feeds, self.dims)

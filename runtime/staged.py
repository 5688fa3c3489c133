"""Running a gradient graph in stages with cross-worker sums between them
(synchronised batch statistics; the plan is compiler/training/stages.py).

A worker's side is :class:`StagedGrad`: one runner per stage graph, on either
backend (each stage is an ordinary graph, planned for NumPy or exported to
ONNX), and the values a step's stages hand each other on the worker
(``keep/…``).  The driver's side is :func:`run_stages`: call stage ``k`` on
every worker, sum their ``sum/…`` outputs, pass the sums on to stage ``k+1``,
and combine the final outputs (:func:`combine`).

A stage call is a pure function of (step, every earlier stage's sums): a worker
that lost its kept values — a restarted process, a retried call — recomputes
the earlier stages from the sums it is sent, bit for bit, so Ray's retry of
one stage call is as safe as the retry of a whole single-stage step.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from dlc.compiler.training.stages import SUMMED, StagePlan

from .runner import make_runner


class StagedGrad:
    """The stage runners of one gradient graph, and the kept values of the step in flight."""

    def __init__(self, plan: StagePlan, backend: str, level: int, *, threads: int | None = None):
        self.plan = plan
        self.runners = [make_runner(g, backend, level, threads=threads) for g in plan.graphs]
        self.inputs = [list(g.input_names()) for g in plan.graphs]
        self._step: object = None  # the step whose stages ran here, and how many of them
        self._done = 0
        self._env: dict[str, np.ndarray] = {}

    def run(self, k: int, step: object, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray],
            sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stage ``k`` of ``step`` (any hashable that names the step and its inputs): its
        ``sum/…`` outputs, and on the last stage every final output.  ``sums``: the workers'
        sums of every earlier stage's ``sum/…`` outputs."""
        if self._step != step or self._done != k:  # not this step's next stage: start over from the sums
            self._step, self._done, self._env = step, 0, {}
        while self._done <= k:
            out = self._run_one(self._done, feeds, values, sums)
            self._done += 1
        last = len(self.runners) - 1
        if k == last:
            finals = {name: self._env[name] for name in self.plan.outputs}
            self._step, self._done, self._env = None, 0, {}
            return finals
        return {name: out[name] for name in self.plan.reduced[k]}

    def _run_one(self, k, feeds, values, sums):
        env = self._env
        fed = {}
        for name in self.inputs[k]:
            fed[name] = sums[name] if name.startswith("sum/") else env[name] if name.startswith("keep/") \
                else feeds[name]
        out = self.runners[k](fed, values, values)
        env.update({name: v for name, v in out.items() if not name.startswith("sum/")})
        return out


def add_up(parts: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The workers' ``names`` outputs summed (in float64, returned in their dtype)."""
    out = {}
    for name in names:
        first = np.asarray(parts[0][name])
        total = sum(np.asarray(p[name], dtype=np.float64) for p in parts)
        out[name] = np.asarray(total).astype(first.dtype)
    return out


def combine(parts: Sequence[Mapping[str, np.ndarray]], kinds: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The final outputs of a staged step: partial ones summed over the workers, the others
    (computed from the global sums, the same on every worker) taken from the first."""
    summed = add_up(parts, [k for k, kind in kinds.items() if kind == SUMMED])
    return {k: summed[k] if kind == SUMMED else np.asarray(parts[0][k]) for k, kind in kinds.items()}


def run_stages(call: Callable[[int, dict], list[dict]], n_stages: int, kinds: Mapping[str, str]) -> dict:
    """Drive one staged step: ``call(k, sums)`` runs stage ``k`` on every worker with the sums
    so far and returns their outputs; after each stage their ``sum/…`` outputs are added up.
    Returns the combined final outputs."""
    sums: dict[str, np.ndarray] = {}
    for k in range(n_stages - 1):
        parts = call(k, dict(sums))
        sums.update(add_up(parts, list(parts[0])))
    return combine(call(n_stages - 1, sums), kinds)

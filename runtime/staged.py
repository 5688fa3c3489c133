"""Running a gradient graph in stages with cross-worker sums between them
(synchronised batch statistics; the plan is compiler/training/stages.py).

A worker's side is :class:`StagedGrad`: one runner per stage graph, on either
backend (each stage is an ordinary graph, planned for NumPy or exported to
ONNX), and the values a step's stages hand each other on the worker
(``keep/…``).  The driver's side is :func:`run_stages`: call stage ``k`` on
every worker, sum their ``sum/…`` outputs, pass the sums on to stage ``k+1``,
and combine the final outputs (:func:`combine`).

A worker keeps the sums it was sent during a step, so each stage's call carries
only the previous stage's sums.  A stage call with every earlier stage's sums is
a pure function of (step, those sums): a worker that lost its kept values — a
restarted process, a retried call — answers ``None`` (:meth:`StagedGrad.run`)
when it was sent only the new sums, is sent them all, and recomputes the earlier
stages from them, bit for bit; so Ray's retry of one stage call is as safe as
the retry of a whole single-stage step.
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
        self._env: dict[str, np.ndarray] = {}  # kept values and the sums received, of that step

    def run(self, k: int, step: object, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray],
            sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Stage ``k`` of ``step`` (any hashable that names the step and its inputs): its
        ``sum/…`` outputs, and on the last stage every final output.  ``sums``: the workers'
        sums of stage ``k-1``'s ``sum/…`` outputs when this worker ran stages 0..k-1 of
        ``step``; else every earlier stage's (a replay) — None when they are not all there
        (this worker lost the step's state: the caller resends them all)."""
        if self._step != step or self._done != k:  # not this step's next stage: start over from the sums
            if any(name not in sums for names in self.plan.reduced[:k] for name in names):
                return None
            self._step, self._done, self._env = step, 0, {}
        self._env.update(sums)
        while self._done <= k:
            out = self._run_one(self._done, feeds, values)
            self._done += 1
        last = len(self.runners) - 1
        if k == last:
            finals = {name: self._env[name] for name in self.plan.outputs}
            self._step, self._done, self._env = None, 0, {}
            return finals
        return {name: out[name] for name in self.plan.reduced[k]}

    def _run_one(self, k, feeds, values):
        env = self._env
        fed = {name: env[name] if name.startswith(("sum/", "keep/")) else feeds[name] for name in self.inputs[k]}
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


def run_stages(call: Callable[[int, dict, dict], list[dict]], n_stages: int, kinds: Mapping[str, str]) -> dict:
    """Drive one staged step: ``call(k, new, sums)`` runs stage ``k`` on every worker and returns
    their outputs; ``new`` are the sums of stage ``k-1`` (what a worker that ran it lacks), ``sums``
    every sum so far (for a worker that lost the step, :meth:`StagedGrad.run`).  After each stage
    the workers' ``sum/…`` outputs are added up.  Returns the combined final outputs."""
    sums: dict[str, np.ndarray] = {}
    new: dict[str, np.ndarray] = {}
    for k in range(n_stages - 1):
        parts = call(k, new, dict(sums))
        new = add_up(parts, list(parts[0]))
        sums.update(new)
    return combine(call(n_stages - 1, new, sums), kinds)

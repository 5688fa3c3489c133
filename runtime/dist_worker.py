"""One data-parallel worker's side (runtime/distributed.py drives N of them on Ray).

A :class:`GradientWorker` holds a model's step groups' gradient graphs (or,
when the group needs synchronised batch sums, its stages: runtime/staged.py)
and the train split it loaded itself; it computes its shard of a global batch,
named by :class:`BatchRef`.  Plain Python — no Ray in here — so it is tested
directly.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from dlc.compiler.graph import RNG_INPUT
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL
from dlc.compiler.training.stages import StagePlan, SyncError, stage_plan
from dlc.grammar.errors import DlcError, Loc

from .data import batch_indices
from .runner import make_runner
from .staged import StagedGrad
from .train_data import load_splits
from .trainer import RNG_MODULUS, build_grad_graph

WORKER_KEY_STRIDE = 1_000_003  # worker r's random key: the step's key + r * stride (mod the key range)


@dataclass(frozen=True)
class BatchRef:
    """One global batch, by position: what the driver sends instead of the rows."""

    epoch: int
    index: int


@dataclass(frozen=True)
class ModelSource:
    """What a worker needs to rebuild a model's graphs and data: the loaded spec,
    the model's definition, its hyperparameters and declared inputs (picklable)."""

    loaded: object
    defn: object
    hyper: dict
    inputs: dict


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Worker ``rank``'s rows of a global batch: ``np.array_split`` order, sizes differ by ≤ 1."""
    return np.array_split(indices, world)[rank]


def worker_key(key: int, rank: int) -> np.int64:
    """The random key worker ``rank`` uses for a step whose single-process key is ``key``."""
    return np.int64((int(key) + rank * WORKER_KEY_STRIDE) % RNG_MODULUS)


def params_digest(values: Mapping[str, np.ndarray]) -> str:
    """A hash of named arrays (names, dtypes, shapes and bytes), for the debug-mode check."""
    h = hashlib.sha256()
    for k in sorted(values):
        a = np.ascontiguousarray(values[k])
        h.update(f"{k}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class GradientWorker:
    """One data-parallel worker: the step groups' gradient graphs and the training split.

    Plain Python (no Ray in here), so it is tested directly; :func:`_remote_worker`
    wraps it in a Ray actor."""

    def __init__(self, source: ModelSource, spec, *, rank: int, world: int, seed: int, backend: str = "numpy",
                 level: int = DEFAULT_LEVEL, threads: int | None = None, debug: bool = False):
        if threads is not None:  # a worker process is one of many on a node: BLAS gets `threads` of its cores
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(threads)
        self.rank, self.world, self.spec, self.seed, self.debug = rank, world, spec, seed, debug
        self.runners = []
        for step in spec.steps:
            graph, _ = build_grad_graph(source, spec, step)
            plan = synchronised_plan(graph, step.name) if world > 1 else None
            self.runners.append(make_runner(graph, backend, level, threads=threads) if plan is None
                                else StagedGrad(plan, backend, level, threads=threads))
        self.train = load_splits(source, spec)["train"]
        self.n_train = len(next(iter(self.train.values())))
        self._order: tuple[int, np.ndarray] | None = None
        self._inputs: tuple | None = None  # (step, feeds, values) of the synchronised step in flight
        self.last_digest = ""

    def rows(self, batch: BatchRef) -> np.ndarray:
        """This worker's row indices of ``batch``."""
        if self._order is None or self._order[0] != batch.epoch:
            self._order = (batch.epoch, batch_indices(self.n_train, self.spec.batch, shuffle=True,
                                                      seed=self.seed, epoch=batch.epoch))
        order = self._order[1]
        size = self.spec.batch
        return shard(order[batch.index * size:(batch.index + 1) * size], self.rank, self.world)

    def grad(self, group: int, batch: BatchRef, key: int, values: Mapping[str, np.ndarray]) -> dict:
        """Loss, metrics, gradients and next model state of this worker's shard of ``batch``
        (``n`` = 0 and nothing else for an empty shard)."""
        if self.debug:  # hashing every parameter costs a pass over them: only when asked to check
            self.last_digest = params_digest(values)
        idx = self.rows(batch)
        if len(idx) == 0:
            return {"n": 0}
        feeds = {k: a[idx] for k, a in self.train.items()}
        feeds[RNG_INPUT] = worker_key(key, self.rank)
        out = self.runners[group](feeds, values, values)
        return {"n": len(idx), **{k: np.asarray(v) for k, v in out.items()}}

    def stage(self, group: int, k: int, batch: BatchRef, key: int, values, sums: Mapping[str, np.ndarray]) -> dict:
        """Stage ``k`` of a synchronised group's step on this worker's shard (runtime/staged.py):
        ``n`` and the stage's partial sums, or on the last stage the final outputs (``n`` = 0 and
        nothing else for an empty shard; ``lost`` when this worker no longer holds the step and
        was not sent every sum).  ``sums``: the workers' sums of stage ``k-1``, or of every earlier
        stage (StagedGrad.run).
        ``values``: the parameters and state — a mapping, or (after stage 0, which always gets
        the mapping) a callable returning it, called only by a worker that does not hold this
        step's values already (a restarted one), so later stages do not deserialise them again."""
        step = (group, batch, key)
        if isinstance(values, Mapping):
            self._inputs = None
        idx = self.rows(batch)
        if len(idx) == 0:
            if self.debug and isinstance(values, Mapping):
                self.last_digest = params_digest(values)
            return {"n": 0}
        if self._inputs is None or self._inputs[0] != step:
            feeds = {name: a[idx] for name, a in self.train.items()}
            feeds[RNG_INPUT] = worker_key(key, self.rank)
            self._inputs = (step, feeds, values if isinstance(values, Mapping) else values())
            if self.debug:  # also a worker restarted between stages, which fetched the values itself
                self.last_digest = params_digest(self._inputs[2])
        _, feeds, held = self._inputs
        out = self.runners[group].run(k, step, feeds, held, sums)
        if out is None:  # lost this step's kept values and sums (restarted): ask for every sum
            return {"n": len(idx), "lost": True}
        return {"n": len(idx), **{name: np.asarray(v) for name, v in out.items()}}

    def digest(self) -> str:
        """The hash of the parameters this worker computed its last gradients with (debug mode)."""
        return self.last_digest

    def pid(self) -> int:
        return os.getpid()


def synchronised_plan(graph, group: str) -> StagePlan | None:
    """The stages of a group's gradient graph for several workers (None: one stage), or a
    coded error for a batch reduction that cannot be synchronised."""
    try:
        return stage_plan(graph)
    except SyncError as e:
        raise DlcError("E0201", f"step `{group}` cannot be split across workers: {e}", loc=_source_loc(e.loc),
                       hint="train this model in one process (leave out --workers)") from None


def _source_loc(loc):
    """A node's loc as an error's source span (None when the node has none, or not a span)."""
    return loc if isinstance(loc, Loc) else None

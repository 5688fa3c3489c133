"""Synchronous data-parallel training on Ray.

A :class:`DistributedTrainer` is a :class:`~dlc.runtime.trainer.Trainer`
(one call = one global batch), so the epoch loop, metrics, early stopping,
checkpoints and ``--resume`` are the single-process ones unchanged.  What
differs is where a step's work happens:

- Each of ``N`` workers is a Ray actor that loads the train block's data
  itself (built-in sets, ``.npz`` and ``.csv`` files are deterministic at the
  block's seed) and compiles each step group's *gradient graph*
  (runtime/trainer.py ``build_grad_graph``: loss, metrics, ``grad/<param>``,
  the spec's next state) on either backend.  Batches never pass through the
  driver: a step names (epoch, batch index) and every worker cuts its own rows
  out of the same (seed, epoch) order the single-process loop uses
  (runtime/data.py ``batch_indices``), split with ``np.array_split`` so shard
  sizes differ by at most one.
- The driver sends the parameters once per step group (one object in Ray's
  object store, which workers on one machine read from shared memory),
  combines the workers' gradients, losses, metrics and next state — averaged
  weighted by shard size when that is exact (a per-example-mean loss with
  nothing else across the batch: stages.py ``weighted_mean_is_exact``), else
  summed or taken as computed (the next bullet) — and runs the group's
  *optimizer update* graph
  (``build_update``: regularisation, clipping, the schedule, the optimizer)
  once.  ``grad`` + ``update`` is node for node the fused step, so one worker
  takes bit for bit the single-process step, and N workers take it up to float
  rounding.
- Where a model looks across the batch inside the step (batch normalisation's
  statistics, a masked mean, a sum loss), the gradient graph runs in stages
  (compiler/training/stages.py, runtime/staged.py): after each, the driver
  adds up the workers' partial sums and sends them on with the next stage's
  call, so every shard normalises with the global batch's statistics; the
  final gradients are then partial sums, and the driver adds them up instead
  of averaging.
- Random ops: worker 0 uses the single-process key of (seed, step, group),
  worker ``r`` a key derived from it and ``r``; a run is reproducible for a
  given ``N``.

Faults: a worker that dies is restarted by Ray (``max_restarts``) and the
call retried on the new process (``max_task_retries``) — safe, because a call
is a pure function of (parameters, epoch, batch, key).  When retries run out,
or a step takes longer than ``timeout`` seconds, the step fails with E0404
and nothing has been committed: the last checkpoint is intact and
``--resume`` continues from it.

Ray is an optional extra (``pip install 'dlc[ray]'``).  Without ``address``
Ray starts on this machine and is shut down at :meth:`close`; with one, the
trainer joins that cluster and only removes the actors it created.
"""
from __future__ import annotations

import os
import time
from typing import Iterator, Mapping

import numpy as np

from dlc.compiler.optional import import_optional
from dlc.compiler.training.step import StepGraph
from dlc.grammar.errors import DlcError

from .dist_worker import BatchRef, GradientWorker, ModelSource, params_digest, synchronised_plan
from .runner import bind
from .staged import run_stages
from .trainer import Trainer, batches_per_epoch, build_grad_graph, build_update_graph, trainer_args

LOOPBACK = "127.0.0.1"  # a Ray started here listens on this machine only


def _stage_info(model, spec, step) -> tuple[int, dict[str, str]] | None:
    """What the driver needs of a group's plan: None for one stage, else (the number of
    stages, how each final output combines)."""
    plan = synchronised_plan(build_grad_graph(model, spec, step)[0], step.name)
    return None if plan is None else (len(plan.graphs), dict(plan.outputs))


class _Fetch:
    """An object-store reference that is resolved only when called (Ray resolves references
    passed as arguments on every call; one held in an attribute it leaves alone)."""

    def __init__(self, ref):
        self.ref = ref

    def __call__(self):
        import ray

        return ray.get(self.ref)


def _remote_worker(ray, max_restarts: int):
    return ray.remote(num_cpus=0)(GradientWorker).options(max_restarts=max_restarts,
                                                          max_task_retries=max_restarts)


class DistributedTrainer(Trainer):
    """Data-parallel steps of one training run over ``workers`` Ray actors (see the module
    docstring).  A :class:`Trainer` whose group runners are the optimizer updates alone:
    parameters, optimizer state, evaluation and checkpoints stay on the driver, and
    :meth:`_update` gathers each update's gradients from the workers."""

    def __init__(self, model, *, workers: int, address: str | None = None, backend: str = "numpy",
                 device: str = "cpu", seed: int | None = None, fresh: bool = True, timeout: float = 600.0,
                 max_restarts: int = 1, threads_per_worker: int = 1, debug: bool = False):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise DlcError("E0110", f"--workers must be a positive integer, got {workers!r}")
        self.ray = ray = import_optional("ray", "training on several workers (--workers)")
        self.timeout, self.debug, self._model = float(timeout), debug, model
        args = trainer_args(model, seed=seed, fresh=fresh)
        # which groups run in stages (the workers make the same plans): an unsplittable one fails before Ray starts
        self._stages = [None if workers == 1 else _stage_info(model, args["spec"], s) for s in args["spec"].steps]
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            try:
                local = {} if address else {"num_cpus": max(os.cpu_count() or 1, 1), "_node_ip_address": LOOPBACK}
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                         **local)
            except Exception as e:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
                raise DlcError("E0404", f"cannot start or join Ray{f' at {address}' if address else ''}: {e}",
                               hint="check --address, or leave it out to start Ray on this machine") from None
        source = ModelSource(model.loaded, model.defn, dict(model.hyper), dict(model.inputs))
        actor = _remote_worker(ray, max_restarts)
        self.workers = [actor.remote(source, args["spec"], rank=r, world=workers, seed=args["seed"], backend=backend,
                                     level=args["level"], threads=threads_per_worker, debug=debug)
                        for r in range(workers)]
        super().__init__(**args, backend=backend, device=device)
        self._get(self.workers[0].pid.remote())  # fail now, not at the first step, if workers cannot start

    def _bind(self, step: StepGraph):
        """The group's optimizer update alone, bound to the driver's store."""
        s = next(x for x in self.spec.steps if x.name == step.group)
        update = build_update_graph(self._model, self.spec, s, batches_per_epoch(self.n_train, self.spec.batch))
        return bind(update.graph, self.store, self.backend, threads=self.threads, level=self.level)

    @property
    def n_train(self) -> int:
        return len(next(iter(self.splits["train"].values())))

    def train_batches(self, epoch: int) -> Iterator[tuple[BatchRef, int]]:
        """(batch, examples) pairs of one epoch: positions only, the workers hold the rows."""
        size = self.spec.batch
        for i, start in enumerate(range(0, self.n_train, size)):
            yield BatchRef(epoch, i), min(size, self.n_train - start)

    def __call__(self, batch: BatchRef) -> dict[str, float]:
        metrics = super().__call__(batch)
        if self.debug and (batch.index + 1) * self.spec.batch >= self.n_train:  # once per epoch
            self.check_consistent(self._sent)
        return metrics

    step = __call__

    def _update(self, g, batch: BatchRef, key, start: Mapping[str, np.ndarray] | None, commit: list[str]) -> dict:
        """One update of group ``g``: the workers' shard gradients of ``batch``, combined
        (averaged by shard size, or for a staged group summed, see the module docstring),
        through the group's optimizer update; the spec's state (when ``commit`` names it) is
        the workers' combined next state."""
        sent = self.store.get([*self.param_names, *self.model_state])
        if start is not None:  # the other groups' parameters as the batch found them
            sent.update({k: start[k] for k in self.param_names if k not in g.step.params})
        if self.debug:
            self._sent = sent
        values = self.ray.put(sent)
        staged = self._stages[g.index]
        deadline = time.monotonic() + self.timeout  # for the whole step, however many stages it has
        if staged is None:
            parts = [p for p in self._get([w.grad.remote(g.index, batch, int(key), values) for w in self.workers],
                                          deadline) if p["n"]]
            avg = _weighted_mean(parts)
        else:
            avg = self._staged_grads(g.index, staged, batch, int(key), values, deadline)
        out = g.run({k: v for k, v in avg.items() if k.startswith("grad/")})
        g.run.commit([*g.step.params, *g.step.state_init])
        state = [k for k in g.step.model_state if k in commit]
        if state:
            self.store.set({k: avg[f"new/{k}"] for k in state})
        return {"train/loss": avg["train/loss"], "train/lr": out["train/lr"],
                **{k: v for k, v in avg.items() if k.startswith("metric/")}}

    def _staged_grads(self, group: int, staged: tuple[int, dict], batch: BatchRef, key: int, values,
                      deadline: float) -> dict:
        """A synchronised group's outputs: its stages on every worker with a non-empty shard,
        the partial sums added up on the driver between stages (runtime/staged.py); E0404 when
        they are not all done by ``deadline`` (``time.monotonic()``)."""
        active = self.workers

        later = _Fetch(values)  # stages after the first: the workers hold the values already

        def call(k: int, new: dict, sums: dict) -> list[dict]:
            nonlocal active
            parts = self._get([w.stage.remote(group, k, batch, key, values if k == 0 else later, new)
                               for w in active], deadline)
            if k == 0:  # every worker hashes its parameters in stage 0; the empty shards stop there
                active = [w for w, p in zip(active, parts) if p["n"]]
                parts = [p for p in parts if p["n"]]
            lost = [i for i, p in enumerate(parts) if p.get("lost")]
            if lost:  # restarted since its last stage: every sum, to replay the step
                again = self._get([active[i].stage.remote(group, k, batch, key, later, sums) for i in lost], deadline)
                for i, p in zip(lost, again):
                    parts[i] = p
            return [{name: v for name, v in p.items() if name != "n"} for p in parts]

        n_stages, kinds = staged
        return run_stages(call, n_stages, kinds)

    def check_consistent(self, values: Mapping[str, np.ndarray]) -> None:
        """Raise E0404 unless every worker's last parameters hash like ``values`` (debug mode
        checks this at the end of every epoch against what the last step sent)."""
        want = params_digest(values)
        got = self._get([w.digest.remote() for w in self.workers])
        bad = [r for r, d in enumerate(got) if d != want]
        if bad:
            raise DlcError("E0404", f"worker{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} computed "
                                    "gradients with other parameters than the driver's")

    def worker_pids(self) -> list[int]:
        return self._get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        """Remove the workers; shut Ray down if this trainer started it."""
        for w in self.workers:
            try:
                self.ray.kill(w)
            except Exception:  # noqa: BLE001, S110 - a worker that is already gone
                pass
        self.workers = []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def _get(self, refs, deadline: float | None = None):
        """``ray.get`` with the step's remaining time (``deadline``, ``time.monotonic()``; None:
        ``timeout`` from now), Ray's failures as coded errors."""
        ray = self.ray
        left = self.timeout if deadline is None else deadline - time.monotonic()
        try:
            if left <= 0:
                raise ray.exceptions.GetTimeoutError()
            return ray.get(refs, timeout=left)
        except ray.exceptions.GetTimeoutError:
            raise DlcError("E0404", f"a training step took longer than {self.timeout:g} s on the workers",
                           hint="the last checkpoint is intact: `dlc train ... --resume` continues") from None
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
            raise DlcError("E0404", f"a worker died and could not be restarted: {type(e).__name__}",
                           hint="the last checkpoint is intact: `dlc train ... --resume` continues") from None
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DlcError):
                raise cause from None
            raise DlcError("E0404", f"a worker failed: {cause or e}") from None


def _weighted_mean(parts: list[dict]) -> dict[str, np.ndarray]:
    """Every array output of the workers averaged with weights ``n`` (their shard sizes)."""
    total = sum(p["n"] for p in parts)
    out = {}
    for k in parts[0]:
        if k == "n":
            continue
        acc = sum(np.asarray(p[k], dtype=np.float64) * p["n"] for p in parts) / total
        out[k] = acc.astype(parts[0][k].dtype)
    return out

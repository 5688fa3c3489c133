"""The single-step training API, and the spine of the epoch loop.

A :class:`Trainer` owns one training run's moving parts: the step graphs of
a train block (one per step group), a runner per group bound to one store
of parameters and state that lives in the backend (NumPy arrays, or
OrtValues in onnxruntime memory on the chosen device), the global step
counter that the step groups' ``every`` and the random keys follow, the
data splits (loaded on first use) and checkpoints.  ``trainer(batch)`` runs
one batch through every group due at this step and returns its metrics::

    step = model.trainer(backend="onnxruntime")
    for batch in my_batches:
        metrics = step(batch)          # {"loss": ..., "lr": ..., <train metrics>}
    model.params = step.params

Nothing here knows the API layer: :func:`make_trainer` takes any object
with the Model's attributes (``loaded``, ``defn``, ``hyper``, ``graph``,
``params``, ``state``, ``inputs``, ``name``, ``spec_hash``, ``train_spec()``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from dlc.compiler.graph import RNG_INPUT, Graph
from dlc.compiler.lower import compile_model
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL
from dlc.compiler.training.spec import step_outputs
from dlc.compiler.training.step import StepGraph, build_grad, build_step, build_update, initial_state, select_params
from dlc.compiler.types import np_dtype
from dlc.grammar.errors import DlcError

from . import checkpoint as ckpt
from .allocator import keep_freed_memory
from .data import batches
from .train_data import load_splits
from .params import nonnegative_int, init_params, init_state
from .runner import bind, make_store
from .threads import training_threads

EVAL_BATCH = 1024


# -- the step graphs and data of a model's train block ---------------------------------------
def build_steps(model, spec, steps_per_epoch: int) -> list[StepGraph]:
    """One training-step graph per step group."""
    out = []
    for step in spec.steps:
        lowered = compile_model(model.loaded, model.defn, "train", model.hyper, extra=step_outputs(spec, step))
        out.append(build_step(lowered.graph, spec, step, updates_per_epoch(step, steps_per_epoch)))
    return out


def build_grad_graph(model, spec, step) -> tuple[Graph, list[str]]:
    """(step group ``step``'s gradient graph, the parameters it differentiates): loss,
    metrics, ``grad/<param>`` and next state, no update (``build_grad``).  ``model`` is
    anything with ``loaded``, ``defn`` and ``hyper`` (a Model, a worker's ModelSource)."""
    lowered = compile_model(model.loaded, model.defn, "train", model.hyper, extra=step_outputs(spec, step))
    return build_grad(lowered.graph, step)


def build_update_graph(model, spec, step, steps_per_epoch: int) -> StepGraph:
    """Step group ``step``'s optimizer update alone (``build_update``: inputs ``grad/<param>``),
    its schedule counting the group's updates per epoch as the fused step does."""
    names = select_params(step.params, list(model.graph.params), step.loc, f"step `{step.name}`")
    return build_update(model.graph, spec, step, names, updates_per_epoch(step, steps_per_epoch))


def updates_per_epoch(step, steps_per_epoch: int) -> int:
    """The updates a step group makes per epoch, which its schedule counts: a group that
    runs every k batches, r times, makes r/k as many as there are batches."""
    return max(math.ceil(steps_per_epoch / step.every), 1) * step.repeat


def eval_graph(model, spec) -> Graph:
    """The eval-mode graph whose outputs are every group's loss and the metrics."""
    extra = {}
    for step in spec.steps:
        extra.update(step_outputs(spec, step))
    g = compile_model(model.loaded, model.defn, "eval", model.hyper, extra=extra).graph
    first = spec.steps[0].name
    g.set_outputs({k: v for k, v in g.outputs.items() if metric_key(k, first) is not None})
    return g


def metric_key(output: str, first_group: str) -> str | None:
    """How an eval-graph output is reported: ``loss``, ``loss.<group>``, the metric's name, or not at
    all (model outputs, and a metric that only repeats the loss)."""
    kind, sep, name = output.partition("/")
    if not sep:
        return None
    if kind == "loss":
        return "loss" if name == first_group else f"loss.{name}"
    if kind == "metric" and name != "loss" and not name.startswith("loss."):
        return name
    return None


def batches_per_epoch(n_train: int, batch: int) -> int:
    """The batches an epoch over ``n_train`` rows makes (the last one may be short; at least one)."""
    return max(math.ceil(n_train / batch), 1)


def steps_per_epoch_for(model, spec) -> int:
    """The batches per epoch of the train block's training split (loads it)."""
    return batches_per_epoch(len(next(iter(load_splits(model, spec)["train"].values()))), spec.batch)


RNG_STRIDE = 7_919  # rng_key is affine in the step: one step adds RNG_STRIDE (mod RNG_MODULUS);
RNG_MODULUS = 2_147_483_647  # the training-step export advances its key input by exactly that


def rng_key(seed: int, step: int, group: int) -> np.int64:
    """The random key of step group ``group``'s run at global step ``step``."""
    return np.int64((seed * 1_000_003 + step * RNG_STRIDE + group * 104_729) % RNG_MODULUS)


# -- the trainer ---------------------------------------------------------------------------------
class _Group:
    """One step group: its graph, its bound runner and what it writes back."""

    def __init__(self, index: int, step: StepGraph, run):
        self.index = index
        self.step = step
        self.run = run
        self.every = step.every
        self.loss_key = "loss" if index == 0 else f"loss.{step.group}"
        own = [*step.params, *step.state_init]
        self.commit_first = own + list(step.model_state)  # the first group of a batch moves the spec's state
        self.commit_later = own


class Trainer:
    """Steps of one training run on one backend; see the module docstring.

    ``params`` and ``state`` (model state and optimizer slots) are uploaded
    once; ``step(batch)`` / ``trainer(batch)`` updates them in the backend and
    returns ``{"loss": ..., "lr": ..., "loss.<group>": ..., <metric>: ...}`` as
    floats for the groups that ran.  :attr:`params` and :attr:`state` read
    them back (host copies)."""

    def __init__(self, steps: list[StepGraph], params: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray],
                 *, model_state: list[str], backend: str = "numpy", device: str = "cpu", seed: int = 0,
                 evaluator: Graph | None = None, threads: int | None = None, loader=None, spec=None,
                 spec_hash: str = "", name: str = "", level: int = DEFAULT_LEVEL):
        self.steps = steps
        self.backend, self.device, self.seed = backend, device, seed
        self.threads = training_threads() if threads is None else threads
        self.model_state = list(model_state)
        self.param_names = list(params)
        self.spec, self.spec_hash, self.name = spec, spec_hash, name
        self.global_step = 0
        self.level = level  # the optimizing pipeline's level for every graph this trainer runs
        self._loader, self._splits = loader, None
        self._types = _declared_types([s.graph for s in steps] + ([evaluator] if evaluator is not None else []))
        self._blas = None
        if backend == "numpy":  # a training loop owns its process: step buffers reuse the last step's pages
            keep_freed_memory()
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()  # the BLAS libraries loaded now (NumPy's, MKL's)
        self.store = make_store(backend, device)
        values = {**params, **state}
        for s in steps:
            values.update({k: v for k, v in initial_state(s).items() if k not in values})
        self.store.set(self._as_declared(values))
        self.state_names = [k for k in values if k not in params]
        self.groups = [_Group(i, s, self._bind(s)) for i, s in enumerate(steps)]
        self._graph = evaluator
        self._evaluator = None
        self.outputs: dict[int, dict] = {}  # the last step: group index -> its host outputs (train/loss, metric/*)

    # -- values ------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.store.get(self.param_names)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Model state and optimizer slots (``step/<group>``, ``<group>/<opt>.<slot>/<param>``)."""
        return self.store.get(self.state_names)

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace parameters or state by name (unknown names are an error)."""
        unknown = [k for k in values if k not in self.store]
        if unknown:
            raise DlcError("E0110", f"the trainer has no parameter or state {', '.join(unknown)}")
        self.store.set(self._as_declared(values))

    def _as_declared(self, values: Mapping) -> dict[str, np.ndarray]:
        out = {}
        for k, v in values.items():
            dtype = self._types.get(k)
            arr = np.asarray(v)
            out[k] = arr.astype(dtype) if dtype is not None and arr.dtype != dtype else arr
        return out

    # -- stepping ------------------------------------------------------------------------
    def _bind(self, step: StepGraph):
        """The runner of one step group's update, reading and committing the store."""
        return bind(step.graph, self.store, self.backend, threads=self.threads, level=self.level)

    def __call__(self, batch) -> dict[str, float]:
        """One batch: every step group due at this global step runs, in order, ``repeat``
        times (fresh random keys; repeat 0 has the key of a group without repeat).  A group
        with ``sees = start`` reads the other groups' parameters as the batch found them.
        On the NumPy backend BLAS (OpenBLAS, and MKL with ``dlc[mkl]``) runs with the
        trainer's ``threads`` meanwhile, however the caller's process is set up: the same
        count the distributed workers and the epoch loop use, so the same batch gives the
        same bits (MKL's multi-threaded GEMMs sum in another order)."""
        if self._blas is None:
            return self._step(batch)
        with self._blas.limit(limits=self.threads, user_api="blas"):  # ~10 µs
            return self._step(batch)

    def _step(self, batch) -> dict[str, float]:
        metrics: dict[str, float] = {}
        self.outputs = {}
        committed = False
        step = self.global_step
        at_start = self.params if any(g.step.sees == "start" for g in self.groups[1:]) else None
        for g in self.groups:
            if step % g.every:
                continue
            start = at_start if g.step.sees == "start" else None
            for r in range(g.step.repeat):
                key = rng_key(self.seed, step, g.index + len(self.groups) * r)
                out = self._update(g, batch, key, start, g.commit_later if committed else g.commit_first)
                committed = committed or bool(g.step.model_state)
            metrics[g.loss_key] = float(out["train/loss"])
            self.outputs[g.index] = out
            if g.index == 0:
                metrics["lr"] = float(out["train/lr"])
                for k, v in out.items():  # train metrics (a metric that repeats the loss is the loss)
                    name = metric_key(k, g.step.group)
                    if name is not None and k.startswith("metric/"):
                        metrics[name] = float(v)
        self.global_step = step + 1
        return metrics

    def _update(self, g: _Group, batch, key, start: Mapping[str, np.ndarray] | None, commit: list[str]) -> dict:
        """Run group ``g`` once on ``batch`` with random key ``key`` and commit ``commit``; with
        ``start``, the other groups' parameters are those values meanwhile.  Returns the
        group's host outputs (``train/loss``, ``train/lr``, ``metric/*``)."""
        feeds = dict(batch)
        feeds[RNG_INPUT] = key
        moved = None
        if start is not None:
            others = [k for k in self.param_names if k not in g.step.params]
            moved = self.store.get(others)
            self.store.set({k: start[k] for k in others})
        out = g.run(feeds)
        loss = float(out["train/loss"])
        if not math.isfinite(loss):
            self._locate_nonfinite(g, feeds, loss)
        g.run.commit(commit)
        if moved is not None:
            self.store.set(moved)
        return out

    step = __call__

    def train_batches(self, epoch: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(batch, examples) pairs of one epoch over the training split, in the order
        that (seed, epoch) fixes."""
        for b in batches(self.splits["train"], self.spec.batch, shuffle=True, seed=self.seed, epoch=epoch):
            yield b, len(next(iter(b.values())))

    def _locate_nonfinite(self, g: _Group, feeds, loss: float):
        from .interpreter import Plan

        values = self.store.get()
        Plan(g.step.graph).run(feeds, values, values, check_finite=True)  # raises E0402 at the first bad node
        raise DlcError("E0402", f"the loss became {loss}", hint="lower the learning rate or clip gradients")

    def evaluate(self, arrays: Mapping[str, np.ndarray], batch: int = EVAL_BATCH) -> dict[str, float]:
        """Loss and metrics of the eval-mode graph over ``arrays``, averaged per example."""
        if self._graph is None:
            raise DlcError("E0201", "this trainer has no evaluation graph")
        n = len(next(iter(arrays.values()))) if arrays else 0
        if n == 0:
            return {}
        if self._evaluator is None:
            self._evaluator = bind(self._graph, self.store, self.backend, threads=self.threads, level=self.level)
        first = self.steps[0].group
        sums: dict[str, float] = {}
        for b in batches(arrays, batch, shuffle=False, seed=0, epoch=0):
            out = self._evaluator({**b, RNG_INPUT: np.int64(0)})
            m = len(next(iter(b.values())))
            for k, v in out.items():
                key = metric_key(k, first)
                if key is not None:
                    sums[key] = sums.get(key, 0.0) + float(v) * m
        return {k: v / n for k, v in sums.items()}

    # -- data and checkpoints -------------------------------------------------------------
    @property
    def splits(self) -> dict[str, dict[str, np.ndarray]]:
        """The train block's data, split (loaded on first use)."""
        if self._splits is None:
            if self._loader is None:
                raise DlcError("E0201", "this trainer was built without a data set")
            self._splits = self._loader()
        return self._splits

    def save(self, folder: Path, meta: dict, extra_state: Mapping[str, np.ndarray] | None = None) -> Path:
        """Checkpoint parameters and state (plus ``extra_state``) at the current step."""
        return ckpt.save(Path(folder), params=self.params, state={**self.state, **(extra_state or {})},
                         meta={"spec_hash": self.spec_hash, "step": self.global_step, "seed": self.seed,
                               "model": self.name, "backend": self.backend, **meta})

    def restore(self, c: ckpt.Checkpoint, skip_prefix: str | None = None) -> None:
        """Continue from checkpoint ``c``: its parameters and state (names starting with
        ``skip_prefix`` are left for the caller) and its step counter."""
        self.load({**c.params, **{k: v for k, v in c.state.items()
                                  if not (skip_prefix and k.startswith(skip_prefix)) and k in self.store}})
        self.global_step = int(c.meta["step"])


def _declared_types(graphs) -> dict[str, np.dtype]:
    out = {}
    for g in graphs:
        for n in g.nodes():
            data = g[n]
            if data.op in ("param", "state"):
                out.setdefault(data.attrs["name"], np_dtype(data.types[0].dtype))
    return out


def trainer_args(model, *, seed: int | None = None, fresh: bool = True, steps_per_epoch: int | None = None,
                 allow_nonfinite: bool = False) -> dict:
    """The :class:`Trainer` constructor's arguments for ``model``'s train block (the step
    graphs, initial values, data loader, evaluation graph); see :func:`make_trainer`."""
    spec = model.train_spec()
    seed = spec.seed if seed is None else nonnegative_int(seed)
    splits: dict = {}

    def loader():
        if not splits:
            splits.update(load_splits(model, spec, allow_nonfinite))
        return splits

    if steps_per_epoch is None:
        n_train = len(next(iter(loader()["train"].values())))
        steps_per_epoch = batches_per_epoch(n_train, spec.batch)
    steps = build_steps(model, spec, steps_per_epoch)
    params = init_params(model.graph, seed) if fresh else {k: np.array(v) for k, v in model.params.items()}
    state = init_state(model.graph, seed) if fresh else {k: np.array(v) for k, v in model.state.items()}
    return {"steps": steps, "params": params, "state": state, "model_state": list(state), "seed": seed,
            "evaluator": eval_graph(model, spec), "loader": loader, "spec": spec, "spec_hash": model.spec_hash,
            "name": model.name, "level": getattr(model, "opt_level", DEFAULT_LEVEL)}


def make_trainer(model, *, backend: str = "numpy", device: str = "cpu", seed: int | None = None,
                 fresh: bool = True, threads: int | None = None, steps_per_epoch: int | None = None,
                 allow_nonfinite: bool = False) -> Trainer:
    """A Trainer for ``model``'s train block.  ``fresh``: parameters initialised with the
    training seed (same seed, same run); False continues from ``model.params`` / ``model.state``.
    ``steps_per_epoch`` (for schedules) defaults to the training split's size / batch."""
    args = trainer_args(model, seed=seed, fresh=fresh, steps_per_epoch=steps_per_epoch,
                        allow_nonfinite=allow_nonfinite)
    return Trainer(**args, backend=backend, device=device, threads=threads)

"""The training loop, shared by both backends.

Each step group's graph (compiler/training/step.py) is a pure function
``(batch, params, state) → (loss, metrics, new params, new state)``; the loop
feeds it batches, keeps params and state, evaluates on the validation split
after every epoch, stops early when the monitored metric stops improving, and
checkpoints atomically.  Everything random derives from the seed: the batch
order from (seed, epoch), random ops' key from (seed, global step), so a run
resumed from a checkpoint is bit-identical to one never interrupted.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlc.compiler.graph import RNG_INPUT
from dlc.compiler.lower import compile_model
from dlc.compiler.training.step import StepGraph, build_step, initial_state
from dlc.grammar.errors import DlcError

from . import checkpoint as ckpt
from .data import batches, check_dataset, load_dataset, match_inputs, split
from .finite import check_dataset_finite
from .runner import make_runner

EVAL_BATCH = 1024
BEST = "@best/"  # checkpoint prefix of the best epoch's parameters and state (`@` never occurs in a name)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    test: dict = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False


def _extra(spec, step) -> dict:
    return {f"loss/{step.name}": step.loss, **{f"metric/{n}": e for n, e in spec.metrics}}


def build_steps(model, spec, steps_per_epoch: int) -> list[StepGraph]:
    """One training-step graph per step group."""
    out = []
    for step in spec.steps:
        lowered = compile_model(model.loaded, model.defn, "train", model.hyper, extra=_extra(spec, step))
        # a group that runs every k batches makes 1/k of the updates: its schedule counts those
        out.append(build_step(lowered.graph, spec, step, max(math.ceil(steps_per_epoch / step.every), 1)))
    return out


def eval_graph(model, spec):
    """The eval-mode graph with every group's loss and the metrics as outputs."""
    extra = {}
    for step in spec.steps:
        extra.update(_extra(spec, step))
    return compile_model(model.loaded, model.defn, "eval", model.hyper, extra=extra).graph


def data_options(model, spec) -> tuple[dict, dict]:
    """(options of the data set itself, split options) of the train block's ``data``."""
    opts = dict(spec.data.kwargs)
    split_opts = {"fractions": opts.pop("split", (0.8, 0.1, 0.1)), "same": bool(opts.pop("same", False)),
                  "seed": int(opts.pop("seed", spec.seed))}
    base = Path(model.loaded.path).resolve().parent if model.loaded.path != "<string>" else None
    return {"base_dir": base, **opts}, split_opts


def check_data(model, spec) -> None:
    """Validate the data reference of a train block without loading it (``dlc check``)."""
    opts, _ = data_options(model, spec)
    with _at(spec.data.loc):
        check_dataset(spec.data.name, **opts)


def load_splits(model, spec, allow_nonfinite: bool = False) -> dict[str, dict[str, np.ndarray]]:
    opts, so = data_options(model, spec)
    data_seed, fractions, same = so["seed"], so["fractions"], so["same"]
    with _at(spec.data.loc):
        ds = load_dataset(spec.data.name, seed=data_seed, **opts)
        if not allow_nonfinite:
            check_dataset_finite(ds)
        parts = split(ds, fractions, seed=data_seed, same=same)
        return {k: match_inputs(v, model.inputs, spec.inputs or None) for k, v in parts.items()}


@contextlib.contextmanager
def _at(loc):
    """Give data errors (raised without a span) the span of the train block's `data`."""
    try:
        yield
    except DlcError as e:
        if e.loc is None:
            e.loc = loc
        raise


def steps_per_epoch_for(model, spec) -> int:
    n = len(next(iter(load_splits(model, spec)["train"].values())))
    return max(math.ceil(n / spec.batch), 1)


def rng_key(seed: int, step: int, group: int) -> np.int64:
    return np.int64((seed * 1_000_003 + step * 7_919 + group * 104_729) % 2_147_483_647)


def train(model, **options) -> History:
    """Train ``model`` in place (its ``params`` end as the trained ones); see ``_train`` for options.

    BLAS runs single-threaded meanwhile (``DLC_BLAS_THREADS`` overrides): the
    matrices of a training step are small, and a second OpenBLAS thread that
    competes for one of two cores made steps several times slower, never faster,
    in benchmarks/bench.py."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(os.environ.get("DLC_BLAS_THREADS", "1")), user_api="blas"):
        return _train(model, **options)


def _train(model, *, epochs: int | None = None, seed: int | None = None, checkpoint=None, resume: bool = False,
           backend: str = "numpy", progress: bool = True, echo=print, fresh: bool = True,
           allow_nonfinite: bool = False) -> History:
    """``fresh``: start from parameters initialised with the training seed (the
    default: same seed, same run); False continues from ``model.params``
    (fine-tuning after ``load_checkpoint``).  ``resume`` continues from the
    newest checkpoint in ``checkpoint`` instead."""
    from dlc.model import init_params, init_state

    spec = model.train_spec()
    epochs = spec.epochs if epochs is None else epochs
    seed = spec.seed if seed is None else seed
    splits = load_splits(model, spec, allow_nonfinite)
    n_train = len(next(iter(splits["train"].values())))
    spe = max(math.ceil(n_train / spec.batch), 1)
    steps = build_steps(model, spec, spe)
    runners = [make_runner(s.graph, backend) for s in steps]
    evaluator = make_runner(eval_graph(model, spec), backend)
    params = init_params(model.graph, seed) if fresh else {k: np.array(v) for k, v in model.params.items()}
    state = init_state(model.graph, seed) if fresh else {k: np.array(v) for k, v in model.state.items()}
    model_state = list(state)  # the spec's own state (running statistics); the rest are optimizer slots
    for s in steps:
        state.update(initial_state(s))
    history = History()
    stopper = _EarlyStop(spec.early_stop)
    start_epoch, global_step = 0, 0
    ckpt_dir = Path(checkpoint) if checkpoint else None
    c = None
    if resume and ckpt_dir is not None:  # a folder (its newest valid checkpoint) or one manifest in it
        point = ckpt.resume_point(ckpt_dir, expect_spec_hash=model.spec_hash,
                                  expect_params={k: (v.shape, v.dtype) for k, v in params.items()})
        ckpt_dir, c = point.folder, point.checkpoint
        for message in point.messages:
            echo(message)
    if ckpt_dir is not None:
        ckpt.claim(ckpt_dir)  # refuse a folder of someone else's files before the first epoch, not after it
    if c is not None:
        params = dict(c.params)
        state = {k: v for k, v in c.state.items() if not k.startswith(BEST)}
        best = {k[len(BEST):]: v for k, v in c.state.items() if k.startswith(BEST)}
        stopper.best_params = best or None
        start_epoch, global_step = int(c.meta["epoch"]), int(c.meta["step"])
        history.epochs = list(c.meta.get("history", []))
        stopper.restore(c.meta.get("early_stop", {}))
    echo(f"training {model.name}: {n_train} examples, batch {spec.batch}, {spe} steps/epoch, "
         f"{sum(p.size for p in params.values()):,} weights, backend {backend}")
    for epoch in range(start_epoch, epochs):
        if stopper.stopped:
            break
        t0 = time.perf_counter()
        bar = _bar(spe, f"epoch {epoch + 1}/{epochs}", progress)
        totals = [[0.0, 0] for _ in steps]  # per step group: loss sum, examples
        for batch in batches(splits["train"], spec.batch, shuffle=True, seed=seed, epoch=epoch):
            committed = False  # the spec's state moves once per batch: the first group that runs commits it
            for gi, (s, run) in enumerate(zip(steps, runners)):
                if global_step % s.every:
                    continue
                feeds = {**batch, RNG_INPUT: rng_key(seed, global_step, gi)}
                out = run(feeds, params, state)
                loss = float(out["train/loss"])
                if not math.isfinite(loss):
                    _locate_nonfinite(s, feeds, params, state, loss)
                for name in s.params:
                    params[name] = out[f"new/{name}"]
                for name in (*s.state_init, *(() if committed else s.model_state)):
                    state[name] = out[f"new/{name}"]
                committed = committed or bool(s.model_state)
                n = len(next(iter(batch.values())))
                totals[gi][0] += loss * n
                totals[gi][1] += n
            global_step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{totals[0][0] / max(totals[0][1], 1):.4f}")
        if bar is not None:
            bar.close()
        row = {"epoch": epoch + 1, "loss": totals[0][0] / max(totals[0][1], 1)}
        for st, (t, c) in list(zip(steps, totals))[1:]:
            row[f"loss.{st.group}"] = t / max(c, 1)
        row.update({f"val.{k}": v for k, v in evaluate(evaluator, splits["val"], params, state, spec).items()})
        row["time"] = time.perf_counter() - t0
        history.epochs.append(row)
        echo(_line(row, epochs))
        stopper.update(row, epoch + 1, {**params, **{k: state[k] for k in model_state}})
        if ckpt_dir is not None:
            best = {BEST + k: v for k, v in (stopper.best_params or {}).items()} if stopper.restore_best else {}
            ckpt.save(ckpt_dir, params=params, state={**state, **best},
                      meta={"spec_hash": model.spec_hash, "step": global_step, "epoch": epoch + 1, "seed": seed,
                            "model": model.name, "backend": backend, "history": history.epochs,
                            "early_stop": stopper.snapshot(),
                            "optimizers": {s.name: s.optimizer.name for s in spec.steps}})
    if stopper.stopped:
        history.stopped_early = True
        echo(f"early stop: `{stopper.monitor}` has not improved for {stopper.patience} epoch(s)")
    if stopper.best_params is not None and stopper.restore_best:  # parameters and running statistics
        params = {k: stopper.best_params[k] for k in params}
        state.update({k: stopper.best_params[k] for k in model_state})
        history.best_epoch = stopper.best_epoch
        echo(f"restored the parameters of epoch {stopper.best_epoch} (best {stopper.monitor})")
    history.test = evaluate(evaluator, splits["test"], params, state, spec)
    echo("test  " + ("  ".join(f"{k} {v:.4f}" for k, v in history.test.items()) or "(no test split)"))
    model.params = {k: np.array(v) for k, v in params.items()}
    model.state = {k: np.array(state[k]) for k in model_state}
    return history


def evaluate(run, arrays: dict, params: dict, state: dict, spec) -> dict[str, float]:
    """Loss and metrics over a whole split, averaged per example."""
    n = len(next(iter(arrays.values()))) if arrays else 0
    if n == 0:
        return {}
    sums: dict[str, float] = {}
    for batch in batches(arrays, EVAL_BATCH, shuffle=False, seed=0, epoch=0):
        out = run({**batch, RNG_INPUT: np.int64(0)}, params, state)
        m = len(next(iter(batch.values())))
        for k, v in out.items():
            key = _metric_key(k, spec.steps[0].name)
            if key is not None:
                sums[key] = sums.get(key, 0.0) + float(v) * m
    return {k: v / n for k, v in sums.items()}


def _metric_key(output: str, first_group: str) -> str | None:
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


def _locate_nonfinite(s: StepGraph, feeds, params, state, loss: float):
    from .interpreter import Plan

    Plan(s.graph).run(feeds, params, state, check_finite=True)  # raises E0402 at the first bad node
    raise DlcError("E0402", f"the loss became {loss}", hint="lower the learning rate or clip gradients")


class _EarlyStop:
    def __init__(self, spec):
        self.enabled = spec is not None
        kw = spec.kwargs if spec else {}
        self.patience = int(kw.get("patience", 0))
        self.monitor = kw.get("monitor", "val.loss")
        self.restore_best = bool(kw.get("restore_best", False))
        self.min_delta = float(kw.get("min_delta", 0.0))
        mode = kw.get("mode", "auto")  # auto: losses and errors go down, everything else (accuracy) up
        self.lower_is_better = mode == "min" or mode == "auto" and any(
            w in self.monitor for w in ("loss", "mse", "mae", "error", "perplexity"))
        self.best = None
        self.best_epoch = None
        self.best_params = None  # parameters and the spec's state of the best epoch
        self.bad = 0
        self.stopped = False

    def update(self, row: dict, epoch: int, params: dict) -> None:
        if not self.enabled:
            return
        if self.monitor not in row:
            raise DlcError("E0201", f"early stopping monitors `{self.monitor}`, which is not measured",
                           hint="measured: " + ", ".join(k for k in row if k not in ("epoch", "time")))
        value = row[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.lower_is_better
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_params = {k: v.copy() for k, v in params.items()}
        else:
            self.bad += 1
            self.stopped = self.bad >= self.patience

    def snapshot(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "stopped": self.stopped}

    def restore(self, snap: dict) -> None:
        self.best, self.best_epoch = snap.get("best"), snap.get("best_epoch")
        self.bad, self.stopped = int(snap.get("bad", 0)), bool(snap.get("stopped", False))


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)


def _line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k == "loss" or k.startswith("loss.")]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val.")]
    parts.append(f"({row['time']:.1f}s)")
    return "  ".join(parts)

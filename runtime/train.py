"""The epoch loop, shared by both backends, built on the Trainer (runtime/trainer.py).

Each step group's graph (compiler/training/step.py) is a pure function
``(batch, params, state) → (loss, metrics, new params, new state)``; the
Trainer runs it on one batch and keeps params and state in the backend.  The
loop feeds it the epoch's batches, evaluates on the validation split after
every epoch (``_epoch`` returns the epoch's row: the one place its results
land, read by the log line, early stopping, the checkpoint and the run log),
stops early when the monitored metric stops improving, and checkpoints
atomically.  Everything random derives from the seed: the batch
order from (seed, epoch), random ops' key from (seed, global step), so a run
resumed from a checkpoint is bit-identical to one never interrupted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dlc.grammar.errors import DlcError

from . import checkpoint as ckpt
from .ckpt_folder import claim, manifests
from .params import nonnegative_int
from .runlog import EpochMeter, RunLog
from .threads import training_threads
from .trainer import Trainer, batches_per_epoch, make_trainer

BEST = "@best/"  # checkpoint prefix of the best epoch's parameters and state (`@` never occurs in a name)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    test: dict = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False


def train(model, **options) -> History:
    """Train ``model`` in place (its ``params`` end as the trained ones); see ``_train`` for options.

    BLAS runs with :func:`training_threads` threads meanwhile (1 unless ``DLC_THREADS`` says
    otherwise), the same count that onnxruntime's sessions are given."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=training_threads(), user_api="blas"):
        return _train(model, **options)


def _train(model, *, epochs: int | None = None, seed: int | None = None, checkpoint=None, resume: bool = False,
           backend: str = "numpy", device: str = "cpu", progress: bool = True, echo=print,
           fresh: bool = True, log=None, workers: int | None = None, address: str | None = None,
           debug: bool = False, allow_nonfinite: bool = False) -> History:
    """``fresh``: start from parameters initialised with the training seed (the
    default: same seed, same run); False continues from ``model.params``
    (fine-tuning after ``load_checkpoint``).  ``resume`` continues from the
    newest checkpoint in ``checkpoint`` instead.  Metrics are logged per epoch
    in the checkpoint folder and in ``log`` (runtime/runlog.py).  ``workers``: train
    data-parallel on that many Ray workers (runtime/distributed.py), on the cluster at
    ``address`` or on this machine (they check their own shards' data: ``allow_nonfinite`` is
    for the local trainer); ``debug`` checks every epoch that they all used the
    driver's parameters."""
    if epochs is not None:
        nonnegative_int(epochs, "epochs")  # as the train block's
    if workers is None:
        trainer = make_trainer(model, backend=backend, device=device, seed=seed, fresh=fresh,
                               allow_nonfinite=allow_nonfinite)
        return _run(model, trainer, epochs, checkpoint, resume, backend, progress, echo, log, seed)
    from .distributed import DistributedTrainer

    trainer = DistributedTrainer(model, workers=workers, address=address, backend=backend, device=device,
                                 seed=seed, fresh=fresh, debug=debug)
    try:
        echo(f"data-parallel on {workers} Ray worker{'s' if workers > 1 else ''}")
        return _run(model, trainer, epochs, checkpoint, resume, backend, progress, echo, log, seed)
    finally:
        trainer.close()


def _run(model, trainer, epochs, checkpoint, resume, backend, progress, echo, log, seed=None) -> History:
    """The epoch loop over ``trainer`` (a Trainer or a DistributedTrainer); ``seed``: the one the
    caller asked for (None: the train block's, or on resume the checkpoint's)."""
    spec = trainer.spec
    epochs = spec.epochs if epochs is None else epochs
    splits = trainer.splits
    n_train = len(next(iter(splits["train"].values())))
    spe = batches_per_epoch(n_train, spec.batch)
    history = History()
    stopper = _EarlyStop(spec.early_stop)
    stopper.check_splits(splits)
    start_epoch, resumed = 0, False
    ckpt_dir = Path(checkpoint) if checkpoint else None
    if resume and ckpt_dir is not None:  # a folder (its newest valid checkpoint) or one manifest in it
        point = ckpt.resume_point(ckpt_dir, expect_spec_hash=trainer.spec_hash,
                                  expect_params={k: (v.shape, v.dtype) for k, v in trainer.params.items()})
        ckpt_dir = point.folder
        for message in point.messages:
            echo(message)
        if point.checkpoint is not None:
            _continue_seed(trainer, point.checkpoint, seed, echo)
            start_epoch, resumed = _resume(trainer, point.checkpoint, history, stopper), True
    if ckpt_dir is not None:
        claim(ckpt_dir)  # refuse a folder of someone else's files before the first epoch, not after it
        if not resume:
            _refuse_earlier_run(ckpt_dir)
    runlog = RunLog(ckpt_dir, log, resume_epoch=start_epoch if resumed else None)
    meter = EpochMeter([s.group for s in trainer.steps])
    weights = sum(p.size for p in trainer.params.values())
    echo(f"training {model.name}: {n_train} examples, batch {spec.batch}, {spe} steps/epoch, "
         f"{weights:,} weights, backend {backend}")
    kept = [*trainer.param_names, *trainer.model_state]  # what the best epoch keeps
    for epoch in range(start_epoch, epochs):
        if stopper.stopped:
            break
        row = _epoch(trainer, splits, epoch, epochs, spe, progress, meter)
        history.epochs.append(row)  # the one place an epoch's results land
        echo(_line(row, epochs))
        stopper.update(row, epoch + 1, lambda: trainer.store.get(kept))
        if ckpt_dir is not None:
            best = {BEST + k: v for k, v in (stopper.best_params or {}).items()} if stopper.restore_best else {}
            trainer.save(ckpt_dir, {"epoch": epoch + 1, "hyper": model.hyper, "history": history.epochs,
                                    "early_stop": stopper.snapshot(),
                                    "optimizers": {s.name: s.optimizer.name for s in spec.steps}}, best)
        runlog.epoch(row, trainer.global_step)  # after the checkpoint: the log never runs ahead of what resumes
    if stopper.stopped:
        history.stopped_early = True
        echo(f"early stop: `{stopper.monitor}` has not improved for {stopper.patience} epoch(s)")
    if stopper.best_params is not None and stopper.restore_best:  # parameters and running statistics
        trainer.load({k: stopper.best_params[k] for k in kept})
        history.best_epoch = stopper.best_epoch
        echo(f"restored the parameters of epoch {stopper.best_epoch} (best {stopper.monitor})")
    history.test = trainer.evaluate(splits["test"])
    runlog.test(history.test, trainer.global_step)
    echo("test  " + ("  ".join(f"{k} {v:.4f}" for k, v in history.test.items()) or "(no test split)"))
    model.params = trainer.params
    model.state = trainer.store.get(trainer.model_state)
    return history


def _continue_seed(trainer, c: ckpt.Checkpoint, asked: int | None, echo) -> None:
    """Resume with the seed the run was trained with: batch order and random ops derive from it, so
    another seed would silently make the resumed run differ from the uninterrupted one."""
    saved = c.meta.get("seed")
    if saved is None or saved == trainer.seed:
        return
    if asked is None and isinstance(trainer, Trainer):  # nothing asked for: the run's own seed
        trainer.seed = int(saved)
        echo(f"continuing with the run's seed {saved}")
        return
    raise DlcError("E0403", f"checkpoint `{c.path.name}` was trained with seed {saved}, not {trainer.seed}",
                   hint=f"resume with --seed {saved} (the batches and random ops continue the run's), "
                        "or start afresh in a new --checkpoint folder")


def _refuse_earlier_run(folder: Path) -> None:
    """A run started afresh in a folder that holds an earlier run's checkpoints would prune
    them as it saves its own (only the newest few are kept): E0403 before the first epoch."""
    found = manifests(folder)
    if found:
        raise DlcError("E0403", f"`{folder}` holds {len(found)} checkpoint{'s' if len(found) > 1 else ''} of an "
                                f"earlier run (newest: `{found[-1][1].name}`); training afresh there would delete "
                                f"{'them' if len(found) > 1 else 'it'} as it saves its own",
                       hint="pass --resume to continue that run, or give --checkpoint a new folder")


def _resume(trainer: Trainer, c: ckpt.Checkpoint, history: History, stopper: "_EarlyStop") -> int:
    """Continue from checkpoint ``c``; returns the epoch to start at."""
    trainer.restore(c, skip_prefix=BEST)
    best = {k[len(BEST):]: v for k, v in c.state.items() if k.startswith(BEST)}
    stopper.best_params = best or None
    history.epochs = list(c.meta.get("history", []))
    stopper.restore(c.meta.get("early_stop", {}))
    return int(c.meta["epoch"])


def _epoch(trainer: Trainer, splits: dict, epoch: int, epochs: int, spe: int, progress: bool,
           meter: EpochMeter) -> dict:
    """One pass over the training split, then the validation split; returns the epoch's row
    (``epoch``, ``loss``, ``loss.<group>``, ``lr``, ``train.<metric>``, ``val.<metric>``, ``time``)."""
    t0 = time.perf_counter()
    bar = _bar(spe, f"epoch {epoch + 1}/{epochs}", progress)
    keys = [g.loss_key for g in trainer.groups]
    totals = {k: [0.0, 0] for k in keys}  # per step group: loss sum, examples
    first = totals[keys[0]]
    for batch, n in trainer.train_batches(epoch):
        metrics = trainer(batch)
        for k in keys:
            if k in metrics:
                totals[k][0] += metrics[k] * n
                totals[k][1] += n
        for gi, out in trainer.outputs.items():
            meter.add(gi, out, n)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{first[0] / max(first[1], 1):.4f}")
    if bar is not None:
        bar.close()
    row = {"epoch": epoch + 1, **{k: t / max(c, 1) for k, (t, c) in totals.items()}}
    row.update(meter.row())
    row.update({f"val.{k}": v for k, v in trainer.evaluate(splits["val"]).items()})
    row["time"] = time.perf_counter() - t0
    return row


class _EarlyStop:
    def __init__(self, spec):
        self.enabled = spec is not None
        self.loc = spec.loc if spec else None
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

    def update(self, row: dict, epoch: int, values) -> None:
        """``values()``: the parameters and model state now (read only when this epoch is the best)."""
        if not self.enabled:
            return
        if self.monitor not in row:
            raise DlcError("E0201", f"early stopping monitors `{self.monitor}`, which is not measured",
                           hint="measured: " + ", ".join(k for k in row if k not in ("epoch", "time")), loc=self.loc)
        value = row[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.lower_is_better
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_params = values()
        else:
            self.bad += 1
            self.stopped = self.bad >= self.patience

    def check_splits(self, splits: dict) -> None:
        """A `val.` monitor needs validation examples: refused before the first epoch, not after it."""
        if self.enabled and self.monitor.startswith("val.") and not len(next(iter(splits["val"].values()), ())):
            raise DlcError("E0201", f"early stopping monitors `{self.monitor}`, but the validation split is empty",
                           hint="give `split` a validation fraction, or monitor a training value such as "
                                "`monitor = loss`", loc=self.loc)

    def snapshot(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "stopped": self.stopped}

    def restore(self, snap: dict) -> None:
        self.best, self.best_epoch = snap.get("best"), snap.get("best_epoch")
        self.bad, self.stopped = int(snap.get("bad", 0)), bool(snap.get("stopped", False))


def _bar(total: int, desc: str, enabled: bool):
    import sys

    if not enabled or not sys.stderr.isatty():  # redrawn frames only make sense on a terminal
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)


def _line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k == "loss" or k.startswith(("loss.", "train."))]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val.")]
    parts.append(f"({row['time']:.1f}s)")
    return "  ".join(parts)

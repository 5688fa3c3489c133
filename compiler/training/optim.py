"""Optimizers and learning-rate schedules as graph nodes.

An optimizer is one entry of :data:`OPTIMIZERS`: its hyperparameters with
their defaults, the state slots it keeps per parameter (moments,
accumulators; all start at zero unless stated) and an ``update`` that adds the
nodes computing the new parameter and new slot values from the gradient, the
learning rate and the step count ``t`` (1 for the first update).  The state is functional: slots are graph ``state`` inputs and
their new values graph outputs, so a training step is a pure function that
exports to ONNX as it is.

A schedule maps the number of updates already done (a float tensor) to the
learning rate; durations are given in epochs and converted with
``steps_per_epoch``.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable

from ..builder import Builder


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: its hyperparameters with their defaults (what a train block
    may write in ``name(...)``), the slots it keeps per parameter with their
    initial values (from the hyperparameters), and the update rule
    ``update(b, kw, p, g, slots, lr, t) -> (new p, {slot: new value})``."""

    defaults: dict
    slots: Callable[[dict], dict[str, float]]
    update: Callable


def _ema(b: Builder, old, new, decay: float):
    return b.add(b.mul(old, decay), b.mul(new, 1.0 - decay))


def _sgd(b, kw, p, g, s, lr, t):
    return b.sub(p, b.mul(lr, g)), {}


def _momentum(nesterov: bool):
    def update(b, kw, p, g, s, lr, t):
        v = b.add(b.mul(s["velocity"], kw["beta"]), g)
        step = b.add(g, b.mul(v, kw["beta"])) if nesterov else v
        return b.sub(p, b.mul(lr, step)), {"velocity": v}
    return update


def _adagrad(b, kw, p, g, s, lr, t):
    acc = b.add(s["sum_sq"], b.mul(g, g))
    return b.sub(p, b.div(b.mul(lr, g), b.add(b.sqrt(acc), kw["eps"]))), {"sum_sq": acc}


def _rmsprop(b, kw, p, g, s, lr, t):
    ms = _ema(b, s["mean_sq"], b.mul(g, g), kw["rho"])
    return b.sub(p, b.div(b.mul(lr, g), b.add(b.sqrt(ms), kw["eps"]))), {"mean_sq": ms}


def _adadelta(b, kw, p, g, s, lr, t):
    ms = _ema(b, s["mean_sq"], b.mul(g, g), kw["rho"])
    dx = b.mul(b.div(b.sqrt(b.add(s["mean_dx"], kw["eps"])), b.sqrt(b.add(ms, kw["eps"]))), g)
    mdx = _ema(b, s["mean_dx"], b.mul(dx, dx), kw["rho"])
    return b.sub(p, b.mul(lr, dx)), {"mean_sq": ms, "mean_dx": mdx}


def _adam(decoupled_decay: bool):
    def update(b, kw, p, g, s, lr, t):
        m = _ema(b, s["m"], g, kw["beta1"])
        v = _ema(b, s["v"], b.mul(g, g), kw["beta2"])
        # bias corrections 1 - beta^t, computed as graph nodes of the step count
        c1 = b.sub(1.0, b.pow(b.const(kw["beta1"], b.type(t).dtype), t))
        c2 = b.sub(1.0, b.pow(b.const(kw["beta2"], b.type(t).dtype), t))
        step = b.div(b.div(m, c1), b.add(b.sqrt(b.div(v, c2)), kw["eps"]))
        new_p = b.sub(p, b.mul(lr, step))
        if decoupled_decay:  # AdamW: the decay is not part of the gradient's moments
            new_p = b.sub(new_p, b.mul(b.mul(lr, kw["weight_decay"]), p))
        return new_p, {"m": m, "v": v}
    return update


def _ftrl(b, kw, p, g, s, lr, t):  # FTRL-Proximal (McMahan et al. 2013), per-coordinate rates
    n2 = b.add(s["n"], b.mul(g, g))
    sigma = b.div(b.sub(b.sqrt(n2), b.sqrt(s["n"])), lr)
    z = b.sub(b.add(s["z"], g), b.mul(sigma, p))
    denom = b.add(b.div(b.add(b.sqrt(n2), kw["beta"]), lr), kw["l2"])
    shrunk = b.div(b.neg(b.sub(z, b.mul(b.sign(z), kw["l1"]))), denom)
    return b.where(b.gt(b.abs(z), kw["l1"]), shrunk, 0.0), {"n": n2, "z": z}


_ADAM = {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

# The optimizers, one entry each (the train block's `optimizer = name(...)` looks them up here).
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer({"lr": 0.01}, lambda kw: {}, _sgd),
    "momentum": Optimizer({"lr": 0.01, "beta": 0.9}, lambda kw: {"velocity": 0.0}, _momentum(False)),
    "nesterov": Optimizer({"lr": 0.01, "beta": 0.9}, lambda kw: {"velocity": 0.0}, _momentum(True)),
    "adagrad": Optimizer({"lr": 0.01, "eps": 1e-10, "initial": 0.0}, lambda kw: {"sum_sq": kw.get("initial", 0.0)},
                         _adagrad),
    "rmsprop": Optimizer({"lr": 0.001, "rho": 0.9, "eps": 1e-8}, lambda kw: {"mean_sq": 0.0}, _rmsprop),
    "adadelta": Optimizer({"lr": 1.0, "rho": 0.95, "eps": 1e-6}, lambda kw: {"mean_sq": 0.0, "mean_dx": 0.0},
                          _adadelta),
    "adam": Optimizer(_ADAM, lambda kw: {"m": 0.0, "v": 0.0}, _adam(False)),
    "adamw": Optimizer({**_ADAM, "weight_decay": 0.01}, lambda kw: {"m": 0.0, "v": 0.0}, _adam(True)),
    "ftrl": Optimizer({"lr": 0.1, "l1": 0.0, "l2": 0.0, "beta": 1.0}, lambda kw: {"n": 0.0, "z": 0.0}, _ftrl),
}


def slots(name: str, kwargs: dict) -> dict[str, float]:
    """Slot name → initial value for optimizer ``name``."""
    return OPTIMIZERS[name].slots(kwargs)


def update(b: Builder, name: str, kw: dict, p, g, s: dict, lr, t):
    """(new parameter, {slot: new value}) for one parameter."""
    return OPTIMIZERS[name].update(b, kw, p, g, s, lr, t)


def schedule(b: Builder, spec, base_lr: float, done, steps_per_epoch: int):
    """The learning rate after ``done`` updates (a float scalar tensor)."""
    name, kw = spec.name, spec.kwargs
    spe = float(max(steps_per_epoch, 1))
    if name == "constant":
        return b.const(base_lr, b.type(done).dtype)
    if name == "step":
        return b.mul(b.pow(b.const(kw["gamma"], "f32"), b.floor(b.div(done, kw["every"] * spe))), base_lr)
    if name == "exponential":
        return b.mul(b.pow(b.const(kw["gamma"], "f32"), b.div(done, kw["every"] * spe)), base_lr)
    if name == "inverse":
        return b.div(base_lr, b.pow(b.add(b.mul(done, kw["gamma"] / spe), 1.0), kw["power"]))
    if name == "cosine":
        total = max(kw["total"] * spe, 1.0)
        frac = b.div(b.minimum(done, total), total)
        cos = b.add(b.cos(b.mul(frac, math.pi)), 1.0)
        return b.add(b.mul(cos, 0.5 * (base_lr - kw["min_lr"])), kw["min_lr"])
    if name == "warmup":
        warm = max(kw["epochs"] * spe, 1.0)
        ramp = b.mul(b.div(b.add(done, 1.0), warm), base_lr)
        after = schedule(b, kw["then"], base_lr, b.maximum(b.sub(done, warm), 0.0), steps_per_epoch)
        return b.where(b.lt(done, warm), ramp, after)
    raise KeyError(name)

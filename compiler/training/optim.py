"""Optimizers and learning-rate schedules as graph nodes.

An optimizer is a table entry: the state slots it keeps per parameter
(moments, accumulators; all start at zero unless stated) and an ``update``
that adds the nodes computing the new parameter and new slot values from the
gradient, the learning rate and the step count ``t`` (1 for the first
update).  The state is functional: slots are graph ``state`` inputs and
their new values graph outputs, so a training step is a pure function that
exports to ONNX as it is.

A schedule maps the number of updates already done (a float tensor) to the
learning rate; durations are given in epochs and converted with
``steps_per_epoch``.
"""
from __future__ import annotations

import math

from ..builder import Builder


def slots(name: str, kwargs: dict) -> dict[str, float]:
    """Slot name → initial value for optimizer ``name``."""
    return {"sgd": {}, "momentum": {"velocity": 0.0}, "nesterov": {"velocity": 0.0},
            "adagrad": {"sum_sq": kwargs.get("initial", 0.0)}, "rmsprop": {"mean_sq": 0.0},
            "adadelta": {"mean_sq": 0.0, "mean_dx": 0.0}, "adam": {"m": 0.0, "v": 0.0},
            "adamw": {"m": 0.0, "v": 0.0}, "ftrl": {"n": 0.0, "z": 0.0}}[name]


def update(b: Builder, name: str, kw: dict, p, g, s: dict, lr, t):
    """(new parameter, {slot: new value}) for one parameter."""
    if name == "sgd":
        return b.sub(p, b.mul(lr, g)), {}
    if name in ("momentum", "nesterov"):
        v = b.add(b.mul(s["velocity"], kw["beta"]), g)
        step = b.add(g, b.mul(v, kw["beta"])) if name == "nesterov" else v
        return b.sub(p, b.mul(lr, step)), {"velocity": v}
    if name == "adagrad":
        acc = b.add(s["sum_sq"], b.mul(g, g))
        return b.sub(p, b.div(b.mul(lr, g), b.add(b.sqrt(acc), kw["eps"]))), {"sum_sq": acc}
    if name == "rmsprop":
        ms = _ema(b, s["mean_sq"], b.mul(g, g), kw["rho"])
        return b.sub(p, b.div(b.mul(lr, g), b.add(b.sqrt(ms), kw["eps"]))), {"mean_sq": ms}
    if name == "adadelta":
        ms = _ema(b, s["mean_sq"], b.mul(g, g), kw["rho"])
        dx = b.mul(b.div(b.sqrt(b.add(s["mean_dx"], kw["eps"])), b.sqrt(b.add(ms, kw["eps"]))), g)
        mdx = _ema(b, s["mean_dx"], b.mul(dx, dx), kw["rho"])
        return b.sub(p, b.mul(lr, dx)), {"mean_sq": ms, "mean_dx": mdx}
    if name in ("adam", "adamw"):
        m = _ema(b, s["m"], g, kw["beta1"])
        v = _ema(b, s["v"], b.mul(g, g), kw["beta2"])
        # bias corrections 1 - beta^t, computed as graph nodes of the step count
        c1 = b.sub(1.0, b.pow(b.const(kw["beta1"], b.type(t).dtype), t))
        c2 = b.sub(1.0, b.pow(b.const(kw["beta2"], b.type(t).dtype), t))
        step = b.div(b.div(m, c1), b.add(b.sqrt(b.div(v, c2)), kw["eps"]))
        new_p = b.sub(p, b.mul(lr, step))
        if name == "adamw":
            new_p = b.sub(new_p, b.mul(b.mul(lr, kw["weight_decay"]), p))
        return new_p, {"m": m, "v": v}
    if name == "ftrl":  # FTRL-Proximal (McMahan et al. 2013), per-coordinate rates
        n2 = b.add(s["n"], b.mul(g, g))
        sigma = b.div(b.sub(b.sqrt(n2), b.sqrt(s["n"])), lr)
        z = b.sub(b.add(s["z"], g), b.mul(sigma, p))
        denom = b.add(b.div(b.add(b.sqrt(n2), kw["beta"]), lr), kw["l2"])
        shrunk = b.div(b.neg(b.sub(z, b.mul(b.sign(z), kw["l1"]))), denom)
        return b.where(b.gt(b.abs(z), kw["l1"]), shrunk, 0.0), {"n": n2, "z": z}
    raise KeyError(name)


def _ema(b: Builder, old, new, decay: float):
    return b.add(b.mul(old, decay), b.mul(new, 1.0 - decay))


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

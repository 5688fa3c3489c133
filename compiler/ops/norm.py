"""Normalisation and regularisation ops: layer_norm, batch_norm, instance_norm,
lrn, l2_normalize, and the weight penalties l1 and l2.

``layer_norm`` and ``lrn`` are primitives with fused kernels (one pass, no
graph of temporaries) and the ONNX ops of the same name; ``layer_norm``'s
gradient is the ``layer_norm_grad`` primitive (compiler/ops/norm_grad.py),
``lrn``'s is written as graph nodes.  The rest are composites of reductions and arithmetic, which
is what they cost anyway and what keeps them differentiable and exportable
for free:

- ``batch_norm`` expands by ``b.mode``.  In ``train`` mode it normalises with
  the batch statistics and also returns the updated running statistics (the
  language has no state declarations yet, so a spec cannot feed them back:
  see docs/language.md); in ``eval`` mode it uses the running statistics and
  returns them unchanged, so both modes have the same three outputs.  The
  training graph therefore exports as plain ReduceSum/Mul/… nodes, never as
  ONNX ``BatchNormalization`` with ``training_mode=1`` (which onnxruntime does
  not run for inference-style sessions).
- Mean and variance are taken as mean((x - mean)²), not E[x²] - E[x]², which
  cancels catastrophically when |mean| >> std.

Axes convention: channels are axis 1 (``[N, C, ...]``) for batch/instance
norm and lrn; layer norm normalises the trailing axes from ``axis`` on, so
``gamma``/``beta`` have shape ``x.shape[axis:]`` (the last axis by default).
"""
from __future__ import annotations

import numpy as np

from ..dims import shape_str
from ..types import FLOATS, ShapeError, norm_axis, np_dtype, same_dtype
from .norm_grad import as_rows, standardise, stats_dtype
from .reduction import count_of
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import INT64_MAX, i64


# -- layer norm --------------------------------------------------------------------------
@register
class LayerNorm(Op):
    """``layer_norm(x, gamma, beta, axis=-1, eps=1e-5)``: normalise over the axes ``axis``..end
    to zero mean and unit (population) variance, then scale by gamma and shift by beta."""

    name, family = "layer_norm", "norm"
    inputs = ("x", "gamma", "beta")
    attrs = {"axis": Attr("int", -1, doc="first normalised axis"), "eps": Attr("float", 1e-5)}
    samples = [Sample((Arg((2, 3, 4)), Arg((4,)), Arg((4,)))),
               Sample((Arg((2, 3, 4)), Arg((3, 4)), Arg((3, 4))), {"axis": 1}),
               Sample((Arg((5,)), Arg((5,)), Arg((5,))), note="one vector"),
               Sample((Arg((3, 1)), Arg((1,)), Arg((1,))), note="one element: y = beta")]

    def shape(self, x, gamma, beta, axis, eps):
        dtype = same_dtype("layer_norm", x, gamma, beta)
        if dtype not in FLOATS:
            raise ShapeError(f"`layer_norm` needs float tensors, got {x}")
        if x.rank == 0:
            raise ShapeError("`layer_norm` needs a tensor of rank >= 1, got a scalar")
        a = norm_axis(axis, x.rank)
        for name, t in (("gamma", gamma), ("beta", beta)):
            if t.shape != x.shape[a:]:
                raise ShapeError(f"{name} of `layer_norm` must have shape {shape_str(x.shape[a:])} "
                                 f"(the normalised dims of {x}), got {shape_str(t.shape)}")
        if eps < 0:
            raise ShapeError(f"`layer_norm` needs eps >= 0, got {eps}")
        return x

    def kernel(self, x, gamma, beta, axis, eps):
        xhat, _ = standardise(as_rows(x.astype(stats_dtype(x), copy=False), norm_axis(axis, x.ndim)), eps)
        xhat = xhat.reshape(x.shape)
        if xhat.dtype == np.result_type(xhat, gamma, beta):  # the affine part in place too
            np.multiply(xhat, gamma, out=xhat)
            xhat += beta
            return xhat.astype(x.dtype, copy=False)
        return (xhat * gamma + beta).astype(x.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, axis, eps):
        x, gamma, _ = inputs
        dy = cts[0]
        dx, dgamma_rows = b.layer_norm_grad(dy, x, gamma, axis=axis, eps=eps)  # compiler/ops/norm_grad.py
        return [dx, dgamma_rows, dy]  # the driver sums gamma's and beta's over the batch

    def onnx(self, e, ins, outs, axis, eps):
        e.node("LayerNormalization", ins, outs, axis=norm_axis(axis, e.in_types[0].rank), epsilon=float(eps))


# -- batch norm and instance norm ---------------------------------------------------------
def _per_channel(b, v, rank: int, axis: int):
    """A [C] vector shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    trailing = rank - axis - 1
    return b.reshape(v, shape=b.type(v).shape + (1,) * trailing) if trailing else v


def _check_channels(b, op: str, x, axis: int, named: dict) -> None:
    t = b.type(x)
    if t.dtype not in FLOATS:
        raise b.error("E0103", f"`{op}` needs a float tensor, got {t}")
    channels = (t.shape[axis],)
    for name, v in named.items():
        vt = b.type(v)
        if vt.shape != channels or vt.dtype != t.dtype:
            raise b.error("E0104", f"shape mismatch in `{op}`: {name} must be {t.dtype}{shape_str(channels)} "
                                   f"(one per channel of axis {axis} of {t}), got {vt}")


@register
class BatchNorm(Composite):
    """``batch_norm(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5, axis=1)``
    → (y, new_running_mean, new_running_var).

    Train mode: statistics over every axis but ``axis``; the running statistics
    move as ``(1 - momentum) * old + momentum * batch`` (the running variance
    takes the unbiased batch variance, as PyTorch does).  Eval mode: the running
    statistics normalise, and come back unchanged."""

    name, family = "batch_norm", "norm"
    inputs = ("x", "gamma", "beta", "running_mean", "running_var")
    outputs = ("y", "new_running_mean", "new_running_var")
    attrs = {"momentum": Attr("float", 0.1), "eps": Attr("float", 1e-5), "axis": Attr("int", 1)}
    samples = [Sample((Arg((4, 3, 2, 2)), Arg((3,)), Arg((3,)), Arg((3,)), Arg((3,), "positive"))),
               Sample((Arg((6, 5)), Arg((5,)), Arg((5,)), Arg((5,)), Arg((5,), "positive")), {"momentum": 0.5}),
               Sample((Arg((2, 3, 4)), Arg((4,)), Arg((4,)), Arg((4,)), Arg((4,), "positive")), {"axis": -1},
                      note="channels last")]

    def expand(self, b, x, gamma, beta, running_mean, running_var, momentum, eps, axis):
        rank = b.type(x).rank
        if rank < 2:
            raise b.error("E0104", f"`batch_norm` needs a tensor of rank >= 2, got {b.type(x)}")
        a = norm_axis(axis, rank)
        _check_channels(b, "batch_norm", x, a, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                                                "running_var": running_var})
        if not 0.0 <= momentum <= 1.0:
            raise b.error("E0110", f"`batch_norm` needs momentum in [0, 1], got {momentum}")
        if b.mode != "train":
            y = _normalise(b, x, running_mean, running_var, gamma, beta, eps, a)
            return y, running_mean, running_var
        others = tuple(i for i in range(rank) if i != a)
        mean = b.mean(x, axes=others)
        xc = b.sub(x, _per_channel(b, mean, rank, a))
        var = b.mean(b.mul(xc, xc), axes=others)
        scale = b.mul(gamma, b.div(1.0, b.sqrt(b.add(var, eps))))
        y = b.add(b.mul(xc, _per_channel(b, scale, rank, a)), _per_channel(b, beta, rank, a))
        n = count_of(b, x, others)
        if isinstance(n, float):
            unbiased = b.mul(var, n / (n - 1)) if n > 1 else var
        else:  # a symbolic batch: n / max(n - 1, 1) at run time
            unbiased = b.mul(var, b.div(n, b.maximum(b.sub(n, 1.0), 1.0)))
        new_mean = b.add(b.mul(running_mean, 1.0 - momentum), b.mul(mean, momentum))
        new_var = b.add(b.mul(running_var, 1.0 - momentum), b.mul(unbiased, momentum))
        return y, new_mean, new_var


def _normalise(b, x, mean, var, gamma, beta, eps: float, a: int):
    """(x - mean) * gamma / sqrt(var + eps) + beta with [C] statistics along axis ``a``."""
    rank = b.type(x).rank
    scale = b.mul(gamma, b.div(1.0, b.sqrt(b.add(var, eps))))
    xc = b.sub(x, _per_channel(b, mean, rank, a))
    return b.add(b.mul(xc, _per_channel(b, scale, rank, a)), _per_channel(b, beta, rank, a))


@register
class InstanceNorm(Composite):
    """``instance_norm(x, gamma, beta, eps=1e-5)``: normalise each sample and channel
    of ``[N, C, ...]`` over its spatial axes 2..; gamma and beta are per channel."""

    name, family = "instance_norm", "norm"
    inputs = ("x", "gamma", "beta")
    attrs = {"eps": Attr("float", 1e-5)}
    samples = [Sample((Arg((2, 3, 4, 4)), Arg((3,)), Arg((3,)))), Sample((Arg((2, 3, 5)), Arg((3,)), Arg((3,))))]

    def expand(self, b, x, gamma, beta, eps):
        rank = b.type(x).rank
        if rank < 3:
            raise b.error("E0104", f"`instance_norm` needs [N, C, spatial...] (rank >= 3), got {b.type(x)}")
        _check_channels(b, "instance_norm", x, 1, {"gamma": gamma, "beta": beta})
        spatial = tuple(range(2, rank))
        xc = b.sub(x, b.mean(x, axes=spatial, keepdims=True))
        inv = b.div(1.0, b.sqrt(b.add(b.mean(b.mul(xc, xc), axes=spatial, keepdims=True), eps)))
        return b.add(b.mul(b.mul(xc, inv), _per_channel(b, gamma, rank, 1)), _per_channel(b, beta, rank, 1))


# -- local response normalisation ----------------------------------------------------------
def _window(size: int) -> tuple[int, int]:
    """Channels (before, after) in the window of ``size`` centred on a channel, as ONNX LRN."""
    lo = (size - 1) // 2
    return lo, size - 1 - lo


def _np_window_sum(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    pads = [(0, 0)] * t.ndim
    pads[1] = (lo, hi)
    p = np.pad(t, pads)
    c = t.shape[1]
    return sum(p[:, k:k + c] for k in range(lo + hi + 1))


def _window_sum(b, t, lo: int, hi: int):
    """Graph nodes summing ``t`` over channels c - lo .. c + hi (zero outside)."""
    rank = b.type(t).rank
    pads = ((0, 0), (lo, hi)) + ((0, 0),) * (rank - 2)
    p = b.pad(t, pads=pads)
    total = None
    for k in range(lo + hi + 1):
        stop = k - (lo + hi)  # negative: counts from the end, so C may be symbolic
        part = b.slice(p, starts=(k,), stops=(stop if stop else None,), axes=(1,))
        total = part if total is None else b.add(total, part)
    return total


@register
class LRN(Op):
    """``lrn(x, size=5, alpha=1e-4, beta=0.75, bias=1.0)``: local response normalisation
    across channels (axis 1): y = x / (bias + alpha/size * Σ_window x²)^beta."""

    name, family = "lrn", "norm"
    attrs = {"size": Attr("int", 5), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
             "bias": Attr("float", 1.0)}
    samples = [Sample((Arg((2, 6, 3, 3)),), {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 2.0}),
               Sample((Arg((2, 4, 5)),), {"size": 2, "alpha": 0.3}, note="rank 3, even size"),
               Sample((Arg((1, 3, 2, 2)),), note="window wider than the channels"),
               Sample((Arg((2, 5, 2, 2, 2)),), {"size": 5, "alpha": 1.0, "beta": 0.5}, note="rank 5")]

    def shape(self, x, size, alpha, beta, bias):
        if x.dtype not in FLOATS or x.rank < 3:
            raise ShapeError(f"`lrn` needs a float tensor [N, C, spatial...] (rank >= 3), got {x}")
        if size < 1 or bias <= 0 or alpha < 0:
            raise ShapeError(f"`lrn` needs size >= 1, bias > 0 and alpha >= 0, got size={size}, "
                             f"bias={bias}, alpha={alpha}")
        return x

    def kernel(self, x, size, alpha, beta, bias):
        xs = x.astype(stats_dtype(x), copy=False)
        d = bias + (alpha / size) * _np_window_sum(xs * xs, *_window(size))
        return (xs * d ** -beta).astype(x.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, size, alpha, beta, bias):
        x, (y,), dy = inputs[0], outputs, cts[0]
        lo, hi = _window(size)
        d = b.add(b.mul(_window_sum(b, b.mul(x, x), lo, hi), alpha / size), bias)
        # y_c = x_c d_c^-β; d_c depends on x_j for j in c's window, so the back sum runs the
        # mirrored window: dx_j = dy_j d_j^-β - (2αβ/size) x_j Σ_{c ∋ j} dy_c y_c / d_c
        back = _window_sum(b, b.div(b.mul(dy, y), d), hi, lo)
        direct = b.mul(dy, b.pow(d, -beta))
        return [b.sub(direct, b.mul(b.mul(x, back), 2.0 * alpha * beta / size))]

    def onnx(self, e, ins, outs, size, alpha, beta, bias):
        if size % 2 == 0 or e.in_types[0].dtype != "f32":  # onnxruntime's LRN: odd sizes, f32 only
            _onnx_lrn(e, ins[0], outs, size, alpha, beta, bias)
            return
        attrs = {"size": size, "alpha": float(alpha), "beta": float(beta), "bias": float(bias)}
        if e.in_types[0].rank == 4:
            e.node("LRN", ins, outs, **attrs)
            return
        # onnxruntime's LRN takes rank 4 only: fold the spatial axes into one
        (flat,) = e.node("Reshape", [ins[0], i64(e, (0, 0, -1, 1))], 1)
        (y,) = e.node("LRN", [flat], 1, **attrs)
        e.node("Reshape", [y, e.node("Shape", ins, 1)[0]], outs)


def _onnx_lrn(e, x: str, outs, size: int, alpha: float, beta: float, bias: float) -> None:
    """LRN as Pad, Slice, Add, Pow and Mul nodes (for what onnxruntime's LRN refuses)."""
    rank, dt = e.in_types[0].rank, np_dtype(e.in_types[0].dtype)
    lo, hi = _window(size)
    (sq,) = e.node("Mul", [x, x], 1)
    pads = [0] * (2 * rank)
    pads[1], pads[rank + 1] = lo, hi
    (p,) = e.node("Pad", [sq, i64(e, pads)], 1, mode="constant")
    total = None
    for k in range(size):
        stop = k - (lo + hi) if k < lo + hi else INT64_MAX
        (part,) = e.node("Slice", [p, i64(e, [k]), i64(e, [stop]), i64(e, [1])], 1)
        total = part if total is None else e.node("Add", [total, part], 1)[0]
    (d,) = e.node("Mul", [total, e.const(np.asarray(alpha / size, dt))], 1)
    (d,) = e.node("Add", [d, e.const(np.asarray(bias, dt))], 1)
    (d,) = e.node("Pow", [d, e.const(np.asarray(-beta, dt))], 1)
    e.node("Mul", [x, d], outs)


# -- vector normalisation and penalties ---------------------------------------------------------
@register
class L2Normalize(Composite):
    """``l2_normalize(x, axis=-1, eps=1e-12)``: x / sqrt(max(Σ x², eps)) along ``axis``;
    a zero vector stays zero (and its gradient finite)."""

    name, family = "l2_normalize", "norm"
    attrs = {"axis": Attr("int", -1), "eps": Attr("float", 1e-12)}
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((3, 4, 2)),), {"axis": 1}),
               Sample((np.zeros((2, 3)),), grad=False, note="zero vectors")]

    def expand(self, b, x, axis, eps):
        a = norm_axis(axis, b.type(x).rank)
        squares = b.sum(b.mul(x, x), axes=(a,), keepdims=True)
        return b.div(x, b.sqrt(b.maximum(squares, eps)))


@register
class L1(Composite):
    """``l1(x, scale=0.01)``: the weight penalty scale * Σ |x| (a scalar)."""

    name, family = "l1", "norm"
    attrs = {"scale": Attr("float", 0.01)}
    samples = [Sample((Arg((3, 4)),)), Sample((Arg(()),), {"scale": 2.0})]

    def expand(self, b, x, scale):
        return b.mul(b.sum(b.abs(x)), scale)


@register
class L2(Composite):
    """``l2(x, scale=0.01)``: the weight penalty scale * ½ Σ x² (a scalar), whose gradient
    is scale * x — the weight-decay convention, and the train block's ``l2(strength)``."""

    name, family = "l2", "norm"
    attrs = {"scale": Attr("float", 0.01)}
    samples = [Sample((Arg((3, 4)),)), Sample((Arg(()),), {"scale": 2.0})]

    def expand(self, b, x, scale):
        return b.mul(b.sum(b.mul(x, x)), 0.5 * scale)

"""Losses and metrics.

Every loss takes ``reduction`` = ``"mean"`` (default), ``"sum"`` or
``"none"`` (one value per example).  Classification losses take logits, not
probabilities: the fused ``softmax_xent`` primitive has the stable gradient
``softmax(logits) - one_hot(labels)`` and never forms log(0).
"""
from __future__ import annotations

import numpy as np

from ..types import FLOATS, INTS, ShapeError, TensorType, norm_axis
from .registry import Arg, Attr, Composite, Op, Sample, register
from .rows import max_keepdims, sum_keepdims
from .shape import i64

_REDUCTION = Attr("str", "mean", ("mean", "sum", "none"))


def reduce_loss(b, per_example, reduction: str):
    if reduction == "mean":
        return b.mean(per_example)
    if reduction == "sum":
        return b.sum(per_example)
    return per_example


@register
class SoftmaxXent(Op):
    """``softmax_xent(logits[..., C], labels[...])``: per-example
    ``logsumexp(logits) - logits[label]`` (labels are integer class ids)."""

    name, family = "softmax_xent", "loss"
    inputs = ("logits", "labels")

    def index_bound(self, in_types, slot):
        return in_types[0].shape[-1] if slot == 1 else None  # labels are class ids
    samples = [Sample((Arg((4, 3)), Arg((4,), "int", 0, 3))),
               Sample((Arg((2, 3, 5)), Arg((2, 3), "int", 0, 5)))]

    def shape(self, logits, labels):
        if logits.dtype not in FLOATS or labels.dtype not in INTS:
            raise ShapeError(f"needs float logits and integer labels, got {logits} and {labels}")
        if logits.rank < 1 or labels.shape != logits.shape[:-1]:
            raise ShapeError(f"labels {labels} must have the shape of logits {logits} without its class axis")
        if not isinstance(logits.shape[-1], int):
            raise ShapeError(f"the class axis of {logits} must be a fixed size")
        return TensorType(logits.dtype, labels.shape)

    def kernel(self, logits, labels):
        z = logits - max_keepdims(logits, -1)
        lse = np.log(sum_keepdims(np.exp(z), -1))[..., 0]
        picked = np.take_along_axis(z, labels[..., None].astype(np.int64), axis=-1)[..., 0]
        return lse - picked

    def grad(self, b, inputs, outputs, cts):
        logits, labels = inputs
        t = b.type(logits)
        diff = b.sub(b.softmax(logits, axis=-1), b.one_hot(labels, depth=t.shape[-1], dtype=t.dtype))
        return [b.mul(diff, b.unsqueeze(cts[0], axes=[-1])), None]

    def onnx(self, e, ins, outs):
        (logp,) = e.node("LogSoftmax", [ins[0]], 1, axis=-1)
        (idx,) = e.node("Unsqueeze", [ins[1], i64(e, [-1])], 1)
        if e.in_types[1].dtype != "i64":
            (idx,) = e.node("Cast", [idx], 1, to=e.onnx_dtype("i64"))
        (picked,) = e.node("GatherElements", [logp, idx], 1, axis=-1)
        (sq,) = e.node("Squeeze", [picked, i64(e, [-1])], 1)
        e.node("Neg", [sq], outs)


@register
class CrossEntropy(Composite):
    """``cross_entropy(logits, labels, reduction="mean", axis=-1, weights=None)``:
    integer labels use the fused ``softmax_xent``; float labels of the logits'
    shape are soft targets.  ``axis`` is the class axis (``1`` for NCHW
    segmentation logits, labels ``[N, H, W]``); ``weights``, one number per
    class, scale each example's loss by its class's weight, and the mean then
    divides by the total weight of the labels (as PyTorch)."""

    name, family = "cross_entropy", "loss"
    inputs = ("logits", "labels")
    attrs = {"reduction": _REDUCTION, "axis": Attr("int", -1, doc="the class axis"),
             "weights": Attr("any", None, doc="a list of one weight per class")}
    samples = [Sample((Arg((4, 3)), Arg((4,), "int", 0, 3))),
               Sample((Arg((4, 3)), Arg((4, 3), "unit")), {"reduction": "sum"}),
               Sample((Arg((2, 3, 4, 5)), Arg((2, 4, 5), "int", 0, 3)), {"axis": 1}, note="NCHW logits"),
               Sample((Arg((5, 3)), Arg((5,), "int", 0, 3)), {"weights": (0.2, 1.0, 3.0)}),
               Sample((Arg((2, 3, 4)), Arg((2, 4), "int", 0, 3)), {"axis": 1, "weights": (1.0, 0.5, 2.0),
                                                                    "reduction": "none"}),
               Sample((Arg((2, 3, 4)), Arg((2, 3, 4), "unit")), {"axis": 1, "weights": (1.0, 0.5, 2.0)},
                      note="soft targets")]

    def expand(self, b, logits, labels, reduction, axis, weights):
        t = b.type(logits)
        axis = norm_axis(axis, t.rank)
        soft = b.type(labels).dtype in FLOATS
        if axis != t.rank - 1:  # the class axis last, where softmax_xent reads it
            perm = (*(a for a in range(t.rank) if a != axis), axis)
            logits = b.transpose(logits, perm=perm)
            if soft:
                labels = b.transpose(labels, perm=perm)
        classes = t.shape[axis]
        w = None
        if weights is not None:
            if not isinstance(weights, (tuple, list)) or len(weights) != classes \
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights):
                raise ShapeError(f"`weights` must be a list of {classes} numbers, one per class, got {weights!r}")
            w = b.const(np.asarray(weights, dtype=np.float64), t.dtype)
        if soft:
            logp = b.log_softmax(logits, axis=-1)
            per = b.neg(b.sum(b.mul(labels, logp if w is None else b.mul(logp, w)), axes=-1))
            return reduce_loss(b, per, reduction)
        per = b.softmax_xent(logits, labels)
        if w is None:
            return reduce_loss(b, per, reduction)
        picked = b.gather(w, labels, axis=0)  # each example's class weight
        per = b.mul(per, picked)
        if reduction == "mean":
            return b.div(b.sum(per), b.sum(picked))
        return reduce_loss(b, per, reduction)


@register
class SigmoidXent(Op):
    """``sigmoid_xent(logits, targets)``: elementwise binary cross-entropy of
    sigmoid(logits), as relu(x) - x t + softplus(-|x|); its gradient is the
    fused ``sigmoid(x) - t``, exact at x = 0 where the pieces have kinks."""

    name, family = "sigmoid_xent", "loss"
    inputs = ("logits", "targets")
    samples = [Sample((Arg((4, 1)), Arg((4, 1), "unit"))), Sample((np.zeros((3,)), Arg((3,), "unit")))]

    def shape(self, x, t):
        from ..types import broadcast_shapes, same_dtype

        dtype = same_dtype("sigmoid_xent", x, t)
        if dtype not in FLOATS:
            raise ShapeError(f"`sigmoid_xent` needs float tensors, got {x}")
        return TensorType(dtype, broadcast_shapes(x.shape, t.shape))

    def kernel(self, x, t):
        return np.maximum(x, 0) - x * t + np.logaddexp(np.zeros((), x.dtype), -np.abs(x))

    def grad(self, b, inputs, outputs, cts):
        x, t = inputs
        return [b.mul(cts[0], b.sub(b.sigmoid(x), t)), b.neg(b.mul(cts[0], x))]

    def onnx(self, e, ins, outs):
        x, t = ins
        (relu,) = e.node("Relu", [x], 1)
        (xt,) = e.node("Mul", [x, t], 1)
        (lin,) = e.node("Sub", [relu, xt], 1)
        (ab,) = e.node("Abs", [x], 1)
        (neg,) = e.node("Neg", [ab], 1)
        (sp,) = e.node("Softplus", [neg], 1)
        e.node("Add", [lin, sp], outs)


@register
class BceWithLogits(Composite):
    """``bce_with_logits(logits, targets, reduction="mean")``: binary cross-entropy
    of sigmoid(logits) through the fused ``sigmoid_xent``."""

    name, family = "bce_with_logits", "loss"
    inputs = ("logits", "targets")
    attrs = {"reduction": _REDUCTION}
    samples = [Sample((Arg((4, 1)), Arg((4, 1), "unit")))]

    def expand(self, b, x, t, reduction):
        return reduce_loss(b, b.sigmoid_xent(x, t), reduction)


@register
class BinaryCrossEntropy(Composite):
    """``binary_cross_entropy(p, targets, reduction="mean", eps=1e-7)`` on
    probabilities, clipped to [eps, 1-eps]; prefer ``bce_with_logits``."""

    name, family = "binary_cross_entropy", "loss"
    inputs = ("p", "targets")
    attrs = {"reduction": _REDUCTION, "eps": Attr("float", 1e-7)}
    samples = [Sample((Arg((4, 2), "unit"), Arg((4, 2), "unit")))]

    def expand(self, b, p, t, reduction, eps):
        p = b.clip(p, lo=eps, hi=1.0 - eps)
        per = b.neg(b.add(b.mul(t, b.log(p)), b.mul(b.sub(1.0, t), b.log(b.sub(1.0, p)))))
        return reduce_loss(b, per, reduction)


@register
class Mse(Composite):
    """``mse(pred, target, reduction="mean")``: squared error, averaged over every element."""

    name, family = "mse", "loss"
    inputs = ("pred", "target")
    attrs = {"reduction": _REDUCTION}
    samples = [Sample((Arg((4, 3)), Arg((4, 3)))), Sample((Arg((4, 1)), Arg((4, 1))), {"reduction": "none"})]

    def expand(self, b, pred, target, reduction):
        d = b.sub(pred, target)
        return reduce_loss(b, b.mul(d, d), reduction)


@register
class L1Loss(Composite):
    """``l1_loss(pred, target, reduction="mean")``: absolute error."""

    name, family = "l1_loss", "loss"
    inputs = ("pred", "target")
    attrs = {"reduction": _REDUCTION}
    samples = [Sample((Arg((4, 3)), Arg((4, 3))))]

    def expand(self, b, pred, target, reduction):
        return reduce_loss(b, b.abs(b.sub(pred, target)), reduction)


@register
class Nll(Composite):
    """``nll(logprobs[..., C], labels[...], reduction="mean")``: -logprobs[label]."""

    name, family = "nll", "loss"
    inputs = ("logprobs", "labels")
    attrs = {"reduction": _REDUCTION}
    samples = [Sample((Arg((4, 3)), Arg((4,), "int", 0, 3)))]

    def expand(self, b, logp, labels, reduction):
        t, lt = b.type(logp), b.type(labels)
        if t.rank < 1 or t.dtype not in FLOATS or lt.dtype not in INTS or lt.shape != t.shape[:-1] \
                or not isinstance(t.shape[-1], int):
            raise b.error("E0104", f"shape mismatch in `nll`: needs float log-probabilities with a fixed class axis "
                                   f"last and integer labels of their shape without it, got {t} and {lt}")
        mask = b.one_hot(labels, depth=t.shape[-1], dtype=t.dtype)
        return reduce_loss(b, b.neg(b.sum(b.mul(logp, mask), axes=-1)), reduction)


@register
class KlNormal(Composite):
    """``kl_normal(mu, logvar, reduction="mean")``: KL(N(mu, exp(logvar)) ‖ N(0, 1)),
    summed over the last axis (the VAE regulariser)."""

    name, family = "kl_normal", "loss"
    inputs = ("mu", "logvar")
    attrs = {"reduction": _REDUCTION}
    samples = [Sample((Arg((4, 3)), Arg((4, 3))))]

    def expand(self, b, mu, logvar, reduction):
        inner = b.sub(b.sub(b.add(logvar, 1.0), b.mul(mu, mu)), b.exp(logvar))
        return reduce_loss(b, b.mul(b.sum(inner, axes=-1), -0.5), reduction)


@register
class Accuracy(Composite):
    """``accuracy(logits, labels)``: the fraction of argmax predictions equal to labels."""

    name, family = "accuracy", "loss"
    inputs = ("logits", "labels")
    samples = [Sample((Arg((6, 3)), Arg((6,), "int", 0, 3)), grad=False)]

    def expand(self, b, logits, labels):
        hit = b.eq(b.argmax(logits, axis=-1), b.cast(labels, dtype="i64"))
        return b.mean(b.cast(hit, dtype=b.type(logits).dtype))


@register
class BinaryAccuracy(Composite):
    """``binary_accuracy(logits, targets)``: fraction with (logits > 0) == (targets > 0.5)."""

    name, family = "binary_accuracy", "loss"
    inputs = ("logits", "targets")
    samples = [Sample((Arg((6, 1)), Arg((6, 1), "unit")), grad=False)]

    def expand(self, b, logits, targets):
        t = b.type(logits).dtype
        tgt = b.gt(b.cast(targets, dtype=t), 0.5)
        hit = b.eq(b.cast(b.gt(logits, 0.0), dtype="i64"), b.cast(tgt, dtype="i64"))
        return b.mean(b.cast(hit, dtype=t))

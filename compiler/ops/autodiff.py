"""Ops that steer differentiation: ``stop_gradient``.

``grad(y, x)`` itself is not an op: it is lowered (compiler/lower/autodiff.py)
into the gradient nodes of ``y`` with respect to ``x``, ordinary nodes of the
graph that later passes differentiate again.
"""
from __future__ import annotations

from .registry import Arg, Op, Sample, register


@register
class StopGradient(Op):
    """``stop_gradient(x)``: x itself in the forward pass; no gradient flows through it
    (to any order).  ONNX: ``Identity``."""

    name, family = "stop_gradient", "autodiff"
    differentiable = False  # backprop treats its input as a constant
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((2,), kind="int", high=5),))]

    def shape(self, x):
        return x

    def kernel(self, x):
        return x

    def onnx(self, e, ins, outs):
        e.node("Identity", ins, outs)

"""share_layer_norm_stats: a layer norm's x̂ and 1/σ computed once for its forward and its
gradient, bit for bit the layer_norm and layer_norm_grad kernels they replace."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.ops.registry import get_op
from dlc.compiler.passes.dce import dce
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.passes.share_layer_norm_stats import share_layer_norm_stats
from dlc.compiler.types import ShapeError, TensorType
from dlc.runtime.interpreter import Plan
from dlc.runtime.trainer import build_steps

from op_harness import graph_input


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(g.op(n) for n in g.nodes())


def _graph(dtype="f32", shape=(4, 8, 16)):
    g = Graph("t")
    b = Builder(g)
    x, dy, dz = (graph_input(g, n, TensorType(dtype, shape)) for n in ("x", "dy", "dz"))
    gamma, beta = (graph_input(g, n, TensorType(dtype, shape[-1:])) for n in ("gamma", "beta"))
    g.set_output("y", b.layer_norm(x, gamma, beta))
    dx, dgamma = b.layer_norm_grad(dy, x, gamma)
    g.set_output("dx", dx)
    g.set_output("dgamma", dgamma)
    g.set_output("alone", b.layer_norm_grad(dz, dz, gamma)[0])  # no forward of dz: stays
    return g


def _feeds(dtype, shape=(4, 8, 16)):
    rng = np.random.default_rng(0)
    f = {n: (rng.standard_normal(shape) * 3 + 1).astype(dtype) for n in ("x", "dy", "dz")}
    f.update({n: rng.standard_normal(shape[-1:]).astype(dtype) for n in ("gamma", "beta")})
    return f


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_layer_norm_and_its_gradient_share_the_statistics_bit_for_bit(dtype):
    g = _graph(dtype)
    feeds = _feeds(np.float32 if dtype == "f32" else np.float64)
    want = Plan(g).run(feeds, {})
    assert share_layer_norm_stats(g) == 1
    dce(g)
    g.verify()
    counts = ops(g)
    assert counts["layer_norm_stats"] == 1 and counts["layer_norm_grad_stats"] == 1
    assert counts["layer_norm"] == 0 and counts["layer_norm_grad"] == 1  # the one of dz
    got = Plan(g).run(feeds, {})
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_float16_layer_norms_are_left_alone():
    g = _graph("f16")
    assert share_layer_norm_stats(g) == 0 and ops(g)["layer_norm"] == 1


def test_the_stats_ops_compute_what_layer_norm_grad_computes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1024, 128)).astype(np.float32).reshape(16, 64, 128)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma = rng.standard_normal(128).astype(np.float32)
    xhat, inv = get_op("layer_norm_stats").kernel(x, axis=-1, eps=1e-5)
    assert inv.shape == (16, 64, 1)
    np.testing.assert_allclose(xhat, (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True), atol=1e-4)
    want = get_op("layer_norm_grad").kernel(dy, x, gamma, axis=-1, eps=1e-5)
    got = get_op("layer_norm_grad_stats").kernel(dy, xhat, inv, gamma, axis=-1)
    for w, o in zip(want, got):
        np.testing.assert_array_equal(o, w)
    np.testing.assert_array_equal(xhat, get_op("layer_norm_stats").kernel(x, axis=-1, eps=1e-5)[0])  # unchanged
    with pytest.raises(ShapeError, match="1/σ must have shape"):
        get_op("layer_norm_grad_stats").shape(*(TensorType("f32", s) for s in ((2, 3), (2, 3), (2, 3), (3,))), axis=-1)


def test_a_training_steps_layer_norms_share_their_statistics():
    m = dlc.load("specs/tiny_bert.dl", mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    before = ops(step.graph)["layer_norm_grad"]
    g = optimize(step.graph, 2, "numpy", check=True)
    assert before >= 2 and ops(g)["layer_norm_grad_stats"] == before and ops(g)["layer_norm_grad"] == 0
    assert ops(optimize(step.graph, 2, "onnx"))["layer_norm_stats"] == 0  # onnxruntime gets the primitives

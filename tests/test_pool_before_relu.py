"""pool_before_relu: max_pool(relu(z)) → relu(max_pool(z)), forward and gradient, exactly."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlc
from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.ops.registry import get_op
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.passes.pool_before_relu import pool_before_relu
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan
from dlc.runtime.trainer import build_steps

from op_harness import graph_input


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(g.op(n) for n in g.nodes())


def pooled_graph(shape, act="relu", train=True, **window):
    """``y = max_pool2d(act(z))`` and, with ``train``, ``dz`` of ``sum(y * dy)``."""
    g = Graph("t")
    b = Builder(g)
    z = graph_input(g, "z", TensorType("f32", shape))
    y = b.apply("max_pool2d", b.apply(act, z), **window)
    g.set_output("y", y)
    if train:
        dy = graph_input(g, "dy", b.type(y))
        loss = b.sum(b.mul(y, dy))
        g.set_output("dz", backprop(g, loss, [z])[z])
    return g


def run(g, **feeds):
    return Plan(g).run(feeds, {})


def test_the_forward_pool_and_relu_swap():
    g = pooled_graph((1, 2, 4, 4), train=False, kernel=2)
    assert pool_before_relu(g) == 1
    g.verify()
    assert ops(g) == {"input": 1, "max_pool2d": 1, "relu": 1}
    (y,) = [n for n in g.nodes() if g.op(n) == "relu"]
    assert g.outputs["y"].node == y and g.op(g[y].inputs[0].node) == "max_pool2d"
    assert g[g[y].inputs[0].node].inputs[0].node == g.inputs[0]  # the pool reads z itself


def test_the_gradient_swaps_too():
    g = pooled_graph((1, 2, 4, 4), kernel=2)
    before = ops(g)
    assert before["relu"] == 1 and before["relu_grad"] == 1 and before["max_pool2d_grad"] == 1
    assert pool_before_relu(g) == 1
    g.verify()
    assert ops(g) == before  # the same ops, on other tensors
    grad = g[g.outputs["dz"].node]
    assert grad.op == "max_pool2d_grad" and grad.inputs[0].node == g.inputs[0]  # the argmax over z
    mask = g[grad.inputs[1].node]
    assert mask.op == "relu_grad" and g.type_of(grad.inputs[1]).shape == (1, 2, 2, 2)  # a quarter of the elements
    assert g[mask.inputs[1].node].op == "relu" and mask.inputs[1] == g.outputs["y"]
    assert pool_before_relu(g) == 0  # nothing left to swap


@pytest.mark.parametrize("act", ["leaky_relu", "tanh", "sigmoid"])
def test_other_monotone_activations_stay(act):
    g = pooled_graph((1, 1, 4, 4), act, kernel=2)
    assert pool_before_relu(g) == 0


def test_a_relu_read_elsewhere_or_a_padded_pool_stays():
    g = Graph("t")
    b = Builder(g)
    z = graph_input(g, "z", TensorType("f32", (1, 1, 4, 4)))
    r = b.relu(z)
    g.set_output("y", b.apply("max_pool2d", r, kernel=2))
    g.set_output("r", r)  # the relu is an output too
    assert pool_before_relu(g) == 0
    g = pooled_graph((1, 1, 4, 4), kernel=3, stride=1, padding=1)
    assert pool_before_relu(g) == 0
    g = pooled_graph((1, 1, 5, 5), kernel=2, ceil_mode=True)
    assert pool_before_relu(g) == 0


WINDOWS = [({"kernel": 2}, (2, 3, 4, 6)),  # tiled: the mask kernels
           ({"kernel": 2, "stride": 1}, (1, 2, 5, 4)),  # overlapping: argmax + bincount
           ({"kernel": 3, "stride": 2}, (1, 2, 7, 5)),
           ({"kernel": 2, "dilation": 2, "stride": 1}, (1, 1, 6, 5)),
           ({"kernel": (1, 3)}, (1, 2, 3, 6))]


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(range(len(WINDOWS))), data=st.data())
def test_values_and_gradients_equal_the_unswapped_graph(which, data):
    # few distinct values: windows full of ties, of zeros and of negatives (relu ties them all)
    window, shape = WINDOWS[which]
    pick = st.sampled_from([-2.0, -1.0, -0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 3.0, float("nan")])
    size = int(np.prod(shape))
    z = np.array(data.draw(st.lists(pick, min_size=size, max_size=size)), np.float32).reshape(shape)
    g = pooled_graph(shape, **window)
    out_shape = g.type_of(g.outputs["y"]).shape
    dy = np.array(data.draw(st.lists(st.sampled_from([-1.5, 1.0, 2.0, 0.25]), min_size=int(np.prod(out_shape)),
                                     max_size=int(np.prod(out_shape)))), np.float32).reshape(out_shape)
    want = run(g, z=z, dy=dy)
    o = g.copy()
    assert pool_before_relu(o) == 1
    got = run(o, z=z, dy=dy)
    for k in want:  # equal as values (NaN where NaN); the sign of a zero may differ
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_a_leaky_relu_swap_would_move_the_gradient():
    # why leaky_relu is not swapped: alpha·z rounds two negatives to one float (here both
    # underflow to -0), a tie the activated window has and z does not, so the first maximum
    # before the swap is not the first maximum of z
    z = np.array([[[[-1e-44, -3e-45], [-4e-45, -2e-44]]]], np.float32)
    leaky, pool_grad = get_op("leaky_relu"), get_op("max_pool2d_grad")
    a = leaky.kernel(z, alpha=0.01)
    assert (a == 0).all()
    dy = np.ones((1, 1, 1, 1), np.float32)
    window = {"kernel": (2,)}
    unswapped = pool_grad.kernel(a, dy, **window) * 0.01  # routed by leaky(z), then leaky's slope
    swapped = pool_grad.kernel(z, dy * np.float32(0.01), **window)  # slope at the max, routed by z
    assert unswapped[0, 0, 0, 0] != 0 and swapped[0, 0, 0, 1] != 0
    assert not np.array_equal(unswapped, swapped)


@pytest.mark.parametrize("path, fires", [("benchmarks/specs/lenet5.dl", 2), ("specs/cnn.dl", 2),
                                         ("specs/inception.dl", 0), ("specs/resnet.dl", 0), ("specs/lenet.dl", 0)])
def test_where_it_fires(path, fires):
    m = dlc.load(path, mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    for backend in ("numpy", "onnx"):
        report = []
        o = optimize(step.graph, 1, backend, report=report, check=True)
        assert dict(report)["pool_before_relu"] == fires
    relus = [n for n in o.nodes() if o.op(n) == "relu"]
    assert sum(o.op(o[n].inputs[0].node) == "max_pool2d" for n in relus) == fires

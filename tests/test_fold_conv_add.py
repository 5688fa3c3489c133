"""fold_conv_add: add(conv(x, w), c) → conv_add(x, w, c), bit-identical, on every conv path."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.ops import conv_kernels
from dlc.compiler.passes.dce import dce
from dlc.compiler.passes.fold_conv_add import fold_conv_add
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan
from dlc.runtime.trainer import build_steps

from op_harness import graph_input, graph_param


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(g.op(n) for n in g.nodes())


def biased_convs(xs, ws, conv_attrs):
    """Outputs: a biased conv (folds), one read twice and one with an enlarging c (neither folds)."""
    g = Graph("t")
    b = Builder(g)
    x = graph_input(g, "x", TensorType("f32", xs))
    w = graph_param(g, "w", TensorType("f32", ws))
    bias = graph_param(g, "b", TensorType("f32", (ws[0],) + (1,) * (len(xs) - 2)))
    g.set_output("y", b.add(b.apply("conv2d", x, w, **conv_attrs), bias))  # folds
    shared = b.apply("conv2d", x, w, **conv_attrs)
    g.set_output("shared", b.add(shared, bias))  # the conv is read twice: no
    g.set_output("also", shared)
    g.set_output("grown", b.add(b.apply("conv2d", x, w, **conv_attrs), b.unsqueeze(bias, axes=(0, 1))))  # enlarges
    return g


# LeNet's convs: the first chunked im2col (5 window columns off the first axis), the second by rows
@pytest.mark.parametrize("xs, ws, conv_attrs", [((40, 1, 28, 28), (6, 1, 5, 5), {"padding": 2}),
                                                ((3, 6, 14, 14), (16, 6, 5, 5), {}),
                                                ((2, 4, 7, 6), (6, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 2})])
def test_a_biased_conv_folds_and_gives_the_same_bits(xs, ws, conv_attrs):
    g = biased_convs(xs, ws, conv_attrs)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(xs).astype(np.float32)}
    params = {"w": rng.standard_normal(ws).astype(np.float32),
              "b": rng.standard_normal((ws[0],) + (1,) * (len(xs) - 2)).astype(np.float32)}
    want = Plan(g).run(feeds, params)
    assert fold_conv_add(g) == 1
    dce(g)
    g.verify()
    assert ops(g)["conv2d_add"] == 1 and g[g.outputs["y"].node].op == "conv2d_add"
    got = Plan(g).run(feeds, params)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(got["y"], want["shared"])  # the unfolded conv + bias, bit for bit


def test_the_chunked_conv_adds_the_term_to_every_chunk(monkeypatch):
    # one example per chunk: each chunk's add lands on its own rows (a full-shaped c checks the slicing)
    monkeypatch.setattr(conv_kernels, "IM2COL_CHUNK_BYTES", 1)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    c = rng.standard_normal((3, 4, 4, 4))
    y = conv_kernels.conv_np(x, w, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    np.testing.assert_array_equal(conv_kernels.conv_np(x, w, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, c=c), y + c)


def test_lenet_training_step_folds_both_biases():
    m = dlc.load("benchmarks/specs/lenet5.dl", mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    report = []
    o = optimize(step.graph, 2, "numpy", report=report, check=True)
    assert dict(report)["fold_conv_add"] == 2
    assert ops(o)["conv2d_add"] == 2 and ops(o)["conv2d"] == 0
    onnx = []
    optimize(step.graph, 2, "onnx", report=onnx)
    assert "fold_conv_add" not in dict(onnx)  # exports keep Conv + Add

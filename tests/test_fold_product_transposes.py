"""fold_product_transposes and matmul_permuted: a batched product written straight into
its transposed layout (attention's heads merged back without a copy), bit for bit the
product and transpose it replaces."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.ops.registry import get_op
from dlc.compiler.passes.dce import dce
from dlc.compiler.passes.fold_product_transposes import fold_product_transposes
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.types import ShapeError, TensorType
from dlc.runtime.interpreter import Plan
from dlc.runtime.trainer import build_steps

from op_harness import graph_input


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(g.op(n) for n in g.nodes())


def test_a_heads_merge_after_a_batched_product_becomes_one_node():
    g = Graph("t")
    b = Builder(g)
    p = graph_input(g, "p", TensorType("f32", (2, 3, 4, 4)))
    v = graph_input(g, "v", TensorType("f32", (2, 3, 4, 5)))
    w = graph_input(g, "w", TensorType("f32", (5, 6)))
    g.set_output("ctx", b.reshape(b.transpose(b.matmul(p, v), perm=(0, 2, 1, 3)), shape=(2, 4, 15)))
    shared = b.matmul(p, v)  # read twice: stays
    g.set_output("shared_t", b.transpose(shared, perm=(0, 2, 1, 3)))
    g.set_output("shared", shared)
    g.set_output("swapped", b.transpose(b.matmul(p, v), perm=(0, 1, 3, 2)))  # moves the last axis: stays
    g.set_output("rows", b.transpose(b.matmul(v, w), perm=(1, 0, 2, 3)))  # a matrix operand: stays
    rng = np.random.default_rng(0)
    feeds = {"p": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
             "v": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
             "w": rng.standard_normal((5, 6)).astype(np.float32)}
    want = Plan(g).run(feeds, {})
    assert fold_product_transposes(g) == 1
    dce(g)
    g.verify()
    assert ops(g)["matmul_permuted"] == 1 and ops(g)["transpose"] == 3
    node = g[g[g.outputs["ctx"].node].inputs[0].node]
    assert node.op == "matmul_permuted" and node.attrs == {"ta": False, "tb": False, "perm": (0, 2, 1, 3)}
    got = Plan(g).run(feeds, {})
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_permuted_is_matmul_t_transposed_bit_for_bit_on_attention_views(ta, tb):
    rng = np.random.default_rng(1)
    heads = lambda: rng.standard_normal((16, 64, 128)).astype(np.float32).reshape(16, 64, 4, 32).transpose(0, 2, 1, 3)
    scores = rng.standard_normal((16, 4, 64, 64)).astype(np.float32)
    a = scores.transpose(0, 1, 3, 2) if ta else scores  # (what ta swaps back)
    v = heads()  # [16, 4, 64, 32], strided like split heads
    b = v.transpose(0, 1, 3, 2) if tb else v
    want = np.transpose(get_op("matmul_t").kernel(a, b, ta=ta, tb=tb), (0, 2, 1, 3))
    got = get_op("matmul_permuted").kernel(a, b, ta=ta, tb=tb, perm=(0, 2, 1, 3))
    assert got.flags.c_contiguous and got.shape == (16, 64, 4, 32)
    np.testing.assert_array_equal(got, want)
    assert np.shares_memory(got.reshape(16, 64, 128), got)  # the heads merge is a view now


def test_matmul_permuted_shape_rule():
    op = get_op("matmul_permuted")
    a, b = TensorType("f32", (2, 3, 4, 5)), TensorType("f32", (2, 3, 5, 6))
    assert op.shape(a, b, ta=False, tb=False, perm=(0, 2, 1, 3)).shape == (2, 4, 3, 6)
    assert op.shape(a, b, ta=False, tb=False, perm=(-4, -2, -3, -1)).shape == (2, 4, 3, 6)
    with pytest.raises(ShapeError, match="last axis last"):
        op.shape(a, b, ta=False, tb=False, perm=(0, 1, 3, 2))
    with pytest.raises(ShapeError):
        op.shape(TensorType("f32", (4, 5)), TensorType("f32", (5, 6)), ta=False, tb=False, perm=(1, 0))


def test_attention_heads_are_merged_by_the_products_in_a_training_step():
    m = dlc.load("specs/tiny_bert.dl", mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    g = optimize(step.graph, 2, "numpy", check=True)
    # the forward's weights @ v, and the gradients of q and v (k's moves the last axis)
    assert ops(g)["matmul_permuted"] >= 3
    assert ops(optimize(step.graph, 2, "onnx"))["matmul_permuted"] == 0  # onnxruntime gets primitives


def test_a_transposed_product_read_by_a_reduction_keeps_its_layout():
    """At -O0 the transpose is a strided view and ``sum`` adds in memory order; a C-order
    ``matmul_permuted`` would add in another order (1 ulp on this loss).  Only a reshape
    merging the last two axes (a C-order copy at -O0) lets the product be folded."""
    m = dlc.compile("""
model m() {
    input x: f32[B, 1, 3, 4]
    param P: [2, 4, 5] = normal(1.0)
    param Q: [2, 4, 5] = normal(1.0)
    a = transpose(x @ P, [0, 2, 1, 3])
    output view = a
    output loss = sum(a * a)
    output merged = reshape(transpose(x @ Q, [0, 2, 1, 3]), [B, 3, 10])
}
""")
    x = np.random.default_rng(0).standard_normal((3, 1, 3, 4)).astype(np.float32)
    m.opt_level = 0
    want = m.run({"x": x})
    m.opt_level = 2
    got = m.run({"x": x})
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert want["loss"] == np.sum(want["view"] * want["view"])  # a strided sum, as NumPy adds it
    g = optimize(m.graph, 2, "numpy", check=True)
    assert ops(g)["matmul_permuted"] == 1  # the heads-merge pattern still folds

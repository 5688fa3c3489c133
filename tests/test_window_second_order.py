"""Second derivatives through the window ops of every rank (issue 10's `grad()`
needs them): the gradient of a loss that contains a first gradient — g(p) =
sum(c * d/dx <y(x, w), r>) — against float64 central differences, for each
convolution, transposed convolution and pooling op.  The first backward pass
emits conv{k}d_grad_input/grad_weight, max_pool{k}d_grad and avg_pool{k}d_grad;
the second differentiates those (their own rules: a conv, a grad-weight, the
pick, the pool), and the result is run in the interpreter."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan

from op_harness import graph_param

CASES = [
    ("conv1d", (2, 3, 7), (4, 3, 3), {"stride": 2, "padding": 1}),
    ("conv2d", (2, 2, 5, 6), (3, 2, 3, 2), {"stride": (2, 1), "padding": ((0, 1), (1, 0)), "dilation": (1, 2)}),
    ("conv2d", (1, 4, 5, 5), (4, 2, 3, 3), {"groups": 2, "padding": "same"}),
    ("conv3d", (1, 2, 4, 3, 4), (2, 2, 2, 2, 3), {"padding": 1, "stride": 2}),
    ("conv_transpose2d", (1, 2, 3, 3), (2, 3, 3, 2), {"stride": 2, "padding": 1, "output_padding": 1}),
    ("conv_transpose1d", (2, 2, 4), (2, 3, 3), {"stride": 2}),
    ("max_pool2d", (2, 2, 5, 5), None, {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_pool3d", (1, 2, 4, 4, 3), None, {"kernel": 2, "stride": 1}),
    ("avg_pool2d", (1, 2, 5, 6), None, {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ("avg_pool1d", (2, 2, 7), None, {"kernel": 2, "ceil_mode": True}),
]


def _build(op, xs, ws, attrs, seed):
    """The graph of g(x, w) = sum(c * (d/dx sum(y(x, w)^2 * r))) (x and w params)."""
    rng = np.random.default_rng(seed)
    g = Graph(op)
    b = Builder(g, mode="train")
    x = graph_param(g, "x", TensorType("f64", xs))
    params = {"x": rng.standard_normal(xs)}
    inputs = [x]
    if ws is not None:
        inputs.append(graph_param(g, "w", TensorType("f64", ws)))
        params["w"] = rng.standard_normal(ws)
    y = b.apply(op, *inputs, **attrs)
    r = b.const(rng.standard_normal(tuple(b.type(y).shape)), "f64")
    inner = b.sum(b.mul(b.mul(y, y), r))          # y squared: the first gradient depends on x and w
    dx = backprop(g, inner, [x], builder=b)[x]
    c = b.const(rng.standard_normal(xs), "f64")
    outer = b.sum(b.mul(dx, c))
    grads = backprop(g, outer, sorted(params), builder=b)
    g.set_outputs({"loss": outer, **{f"d{k}": grads[k] for k in sorted(params)}})
    g.verify()
    return g, params


@pytest.mark.parametrize("op, xs, ws, attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_second_derivatives_match_finite_differences(op, xs, ws, attrs):
    g, params = _build(op, xs, ws, attrs, seed=len(xs) * 7 + len(op))
    backward_ops = {g.op(n) for n in g.nodes()}
    assert any(o.endswith("_grad") or "grad_" in o for o in backward_ops)  # the first pass's backward ops
    symbolic = Plan(g, compute_dtype=np.float64).run({}, params)
    loss = Plan(g, ["loss"], compute_dtype=np.float64)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name, base in params.items():
        for i in rng.choice(base.size, min(base.size, 24), replace=False):
            idx = np.unravel_index(i, base.shape)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            numeric = (loss.run({}, {**params, name: hi})["loss"] - loss.run({}, {**params, name: lo})["loss"]) / (2 * eps)
            np.testing.assert_allclose(symbolic[f"d{name}"][idx], numeric, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{op} d/d{name} at {idx}")

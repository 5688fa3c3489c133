"""Second derivatives of every differentiable op against float64 finite differences.

For each op and sample (the registry's, as in test_ops.py): the first-order
gradients g_i = d L / d p_i of ``L = sum_k sum(y_k * w_k)`` are built
symbolically, then ``L2 = sum_i sum(g_i * u_i)`` (fixed random ``u``) is
differentiated again and compared with central differences of L2.  That
exercises the gradient rule of every node a first-order rule emits
(``sum_to``, ``gather_grad``, ``slice_grad``, ``where``, ...), which is what
``grad(...)`` inside a loss needs.
"""
from __future__ import annotations

import numpy as np
import pytest
from dlc.compiler.passes.backprop import backprop
from dlc.runtime.interpreter import Plan

from op_harness import cases, gradient_cases, materialise, one_op_graph, seed_of, weighted_sum

CASES = gradient_cases(cases())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_second_derivative_matches_finite_differences(case):
    case_id, cls, _, sample = case
    arrays = materialise(sample, np.float64, seed_of(case_id))
    g, b, outs, params, feeds = one_op_graph(cls, sample, arrays)
    if not params:
        pytest.skip("no float inputs")
    rng = np.random.default_rng(seed_of(case_id) + 2)
    loss = weighted_sum(b, outs, rng)
    if loss is None:
        pytest.skip("no float outputs")
    names = sorted(params)
    first = backprop(g, loss, names, builder=b)
    loss2 = weighted_sum(b, [first[n] for n in names], rng)
    second = backprop(g, loss2, names, builder=b)
    g.set_outputs({"loss2": loss2, **{f"d{n}": second[n] for n in names}})
    g.verify()
    symbolic = Plan(g, compute_dtype=np.float64).run(feeds, params)
    loss_plan = Plan(g, ["loss2"], compute_dtype=np.float64)
    eps = 1e-6
    for n in names:
        base = params[n]
        picks = range(base.size) if base.size <= 48 else rng.choice(base.size, 48, replace=False)
        got = symbolic[f"d{n}"]
        assert got.shape == base.shape
        for i in picks:
            idx = np.unravel_index(int(i), base.shape)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            numeric = (loss_plan.run(feeds, {**params, n: hi})["loss2"]
                       - loss_plan.run(feeds, {**params, n: lo})["loss2"]) / (2 * eps)
            np.testing.assert_allclose(got[idx], numeric, rtol=1e-4, atol=1e-6,
                                       err_msg=f"d2 / d {n}{list(idx)} for {case_id}")

"""Generic op tests generated from the registry's samples.

For every op and sample: the shape rule agrees with the kernel's actual
output (float32 and float64), and every gradient rule agrees with float64
central differences.  A registry test lists every op that lacks a part.
"""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.dims import is_static
from dlc.compiler.ops.registry import missing_parts
from dlc.compiler.passes.backprop import backprop
from dlc.runtime.interpreter import Plan

from op_harness import cases, gradient_cases, materialise, one_op_graph, seed_of, weighted_sum

ALL = cases()
IDS = [c[0] for c in ALL]


def test_registry_has_every_part():
    gaps = {op: parts for op, parts in missing_parts().items() if parts}
    assert not gaps, "ops lacking parts:\n" + "\n".join(f"  {op}: {', '.join(p)}" for op, p in gaps.items())


@pytest.mark.parametrize("float_dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_shape_rule_matches_kernel(case, float_dtype):
    case_id, cls, _, sample = case
    arrays = materialise(sample, float_dtype, seed_of(case_id))
    g, b, outs, params, feeds = one_op_graph(cls, sample, arrays)
    results = Plan(g).run(feeds, params)
    for j, v in enumerate(outs):
        t = g.type_of(v)
        got = results[f"y{j}"]
        assert is_static(t.shape), f"static sample gave symbolic type {t}"
        assert tuple(got.shape) == tuple(t.shape), f"output {j}: rule says {t}, kernel gave {got.shape}"
        assert got.dtype == np.dtype({"f16": np.float16, "f32": np.float32, "f64": np.float64,
                                      "i32": np.int32, "i64": np.int64, "bool": np.bool_}[t.dtype]), \
            f"output {j}: rule says {t.dtype}, kernel gave {got.dtype}"


GRAD_CASES = gradient_cases(ALL)


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradient_matches_finite_differences(case):
    case_id, cls, _, sample = case
    arrays = materialise(sample, np.float64, seed_of(case_id))
    g, b, outs, params, feeds = one_op_graph(cls, sample, arrays)
    if not params:
        pytest.skip("no float inputs")
    rng = np.random.default_rng(seed_of(case_id) + 1)
    # loss = sum_k sum(y_k * w_k) with fixed random weights: exercises every output's cotangent
    loss = weighted_sum(b, outs, rng)
    if loss is None:
        pytest.skip("no float outputs")
    names = sorted(params)
    grads = backprop(g, loss, names, builder=b)
    g.set_outputs({"loss": loss, **{f"d{n}": grads[n] for n in names}})
    plan = Plan(g, compute_dtype=np.float64)
    symbolic = plan.run(feeds, params)
    loss_plan = Plan(g, ["loss"], compute_dtype=np.float64)
    eps = 1e-6
    for n in names:
        base = params[n]
        numeric = np.zeros_like(base)
        flat_idx = range(base.size) if base.size <= 64 else rng.choice(base.size, 64, replace=False)
        for i in flat_idx:
            idx = np.unravel_index(i, base.shape)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            f_hi = loss_plan.run(feeds, {**params, n: hi})["loss"]
            f_lo = loss_plan.run(feeds, {**params, n: lo})["loss"]
            numeric[idx] = (f_hi - f_lo) / (2 * eps)
        got = symbolic[f"d{n}"]
        assert got.shape == base.shape
        mask = np.zeros(base.size, bool)
        mask[list(flat_idx)] = True
        mask = mask.reshape(base.shape)
        np.testing.assert_allclose(got[mask], numeric[mask], rtol=1e-4, atol=1e-6,
                                   err_msg=f"d loss / d {n} for {case_id}")

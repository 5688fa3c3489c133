"""No silent wrong results: gradients through unselected branches, squeeze of a
symbolic dim bound to 1, the interpreter's type check, initial values, budgets."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.compiler import budget
from dlc.compiler.onnx_export import export_graph
from dlc.compiler.passes.backprop import gradient_graph
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

V = np.array([-2.0, -0.5, 0.0, 0.25, 4.0], np.float32)
# expression of v -> its true gradient at V
SELECTED = {
    "where(v > 0.0, sqrt(v), v)": lambda v: np.where(v > 0, 0.5 / np.sqrt(np.maximum(v, 1e-30)), 1.0),
    "where(v > 0.0, log(v), v)": lambda v: np.where(v > 0, 1 / np.where(v > 0, v, 1), 1.0),
    "where(v > 0.0, v ** 0.5, v)": lambda v: np.where(v > 0, 0.5 / np.sqrt(np.maximum(v, 1e-30)), 1.0),
    "where(v > 1.0, 1.0 / (v - 1.0), v)": lambda v: np.where(v > 1, -1 / np.where(v > 1, v - 1, 1) ** 2, 1.0),
    "where(v < 1.0, v, exp(v * 300.0))": lambda v: np.where(v < 1, 1.0, 300 * np.exp(np.minimum(v * 300, 80))),
}


def _grad_both_backends(expr: str, v: np.ndarray):
    m = dlc.compile(f"model m() {{ input x: f32[1]\n param v: [{v.size}] = zeros()\n output loss = sum({expr}) }}")
    params = {"v": v}
    g, grads = gradient_graph(m.graph, "loss", "eval")
    g.set_outputs({"dv": grads["v"]})
    numpy = Plan(g).run({"x": np.zeros(1, np.float32)}, params)["dv"]
    ort = OrtSession(export_graph(g, params=params, name="m")).run({"x": np.zeros(1, np.float32)})["dv"]
    return numpy, ort


@pytest.mark.parametrize("expr", [e for e in SELECTED if "exp" not in e])
def test_the_unselected_branch_gives_no_nan(expr):
    """The double-where trap: the branch `where` did not pick contributes 0, not NaN, on both backends."""
    want = SELECTED[expr](V.astype(np.float64))
    for got in _grad_both_backends(expr, V):
        assert np.all(np.isfinite(got)), (expr, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=expr)


def test_exp_overflow_in_the_unselected_branch():
    v = np.array([-1.0, 0.5, 0.9], np.float32)  # exp(300 v) overflows f32 where not selected only when v >= 1
    big = np.array([-1.0, 2.0], np.float32)
    for got in _grad_both_backends("where(v < 1.0, v, exp(v * 300.0))", v):
        np.testing.assert_allclose(got, [1.0, 1.0, 1.0])
    for got in _grad_both_backends("where(v < 1.0, v, -v)", big):
        np.testing.assert_allclose(got, [1.0, -1.0])


def test_std_of_a_constant_row_has_a_finite_gradient():
    for got in _grad_both_backends("sqrt(mean((v - mean(v)) ** 2.0))", np.ones(4, np.float32)):
        np.testing.assert_array_equal(got, np.zeros(4))


def test_relu_gradient_is_a_multiply_by_its_mask():
    """docs/guarantees.md: a finite cotangent gives exactly 0 at v <= 0 (sqrt(relu) included, as
    sqrt's gradient at 0 is 0); an infinite one (relu(v) ** 0.5 at 0) stays non-finite there."""
    for got in _grad_both_backends("relu(v) * 3.0", V):
        np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 3.0, 3.0])
    for got in _grad_both_backends("leaky_relu(v, alpha = 0.25) * 2.0", V):
        np.testing.assert_array_equal(got, [0.5, 0.5, 0.5, 2.0, 2.0])
    for got in _grad_both_backends("sqrt(relu(v))", V):
        np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 1.0, 0.25])
    for got in _grad_both_backends("relu(v) ** 0.5", V):
        assert np.isnan(got[:3]).all() and np.isfinite(got[3:]).all(), got


def test_squeeze_of_a_symbolic_dim_bound_to_one_follows_the_declared_type():
    m = dlc.compile("model m() { input x: f32[B, 3]\n output y = squeeze(x) }")
    for backend in ("numpy", "onnxruntime"):
        assert m.run({"x": np.ones((1, 3), np.float32)}, backend=backend)["y"].shape == (1, 3), backend
    assert m.outputs["y"].shape[1] == 3 and m.outputs["y"].rank == 2
    fixed = dlc.compile("model m() { input x: f32[1, 3]\n output y = squeeze(x) }")
    assert fixed.run({"x": np.ones((1, 3), np.float32)})["y"].shape == (3,)


def test_debug_mode_catches_a_kernel_that_breaks_its_type(monkeypatch):
    from dlc.compiler.ops.registry import get_op

    m = dlc.compile("model m() { input x: f32[B, 3]\n output y = tanh(x) }")
    op = get_op("tanh")
    monkeypatch.setattr(type(op), "kernel", lambda self, x: np.tanh(x)[:, :2])
    with pytest.raises(DlcError) as e:
        Plan(m.graph, check_types=True).run({"x": np.ones((2, 3), np.float32)})
    assert e.value.code == "E0401" and "f32[2, 2]" in e.value.message and "f32[2, 3]" in e.value.message
    Plan(m.graph, check_types=False).run({"x": np.ones((2, 3), np.float32)})  # off: not checked


def test_nonfinite_initial_values_are_refused():
    m = dlc.compile("model m() { input x: f32[2, 4]\n param W: [4, 4] = normal(1e300)\n output y = x @ W }")
    with pytest.raises(DlcError) as e:
        _ = m.params
    assert e.value.code == "E0110" and "`W`" in e.value.message and "inf" in e.value.message


def test_large_parameters_draw_the_same_values_chunk_by_chunk():
    from dlc.compiler.ops import init

    for name, kw in (("normal", {"std": 0.5}), ("glorot_uniform", {}), ("he_normal", {}), ("uniform", {})):
        shape = (init.CHUNK // 512 + 3, 1024)
        chunked = init.initialize(name, kw, shape, "f32", np.random.default_rng(3))
        whole = init._TABLE[name][0](shape, np.random.default_rng(3), **init._bind(name, init._TABLE[name][1], kw))
        np.testing.assert_array_equal(chunked, whole.astype(np.float32))
        assert chunked.dtype == np.float32


def test_the_budget_names_the_value_its_size_and_the_budget():
    budget.set_budget(budget.parse_size("64M"))
    try:
        m = dlc.compile("model m() { input x: f32[2, 8192]\n param W: [8192, 4096] = zeros()\n output y = x @ W }")
        with pytest.raises(DlcError) as e:
            _ = m.params
        assert e.value.code == "E0003"
        assert "`W`" in e.value.message and "128.0 MiB" in e.value.message and "64.0 MiB" in e.value.message
    finally:
        budget.set_budget(None)
    assert budget.parse_size("1.5GiB") == int(1.5 * 2**30) and budget.parse_size("512M") == 512 * 2**20
    with pytest.raises(DlcError):
        budget.parse_size("lots")


def test_planned_peak_refuses_before_running():
    budget.set_budget(budget.parse_size("16M"))
    try:
        m = dlc.compile("model m() { input x: f32[B, 4]\n output y = sum(x @ transpose(x)) }")
        with pytest.raises(DlcError) as e:
            m.run({"x": np.ones((4000, 4), np.float32)})  # 64 MB for the product
        assert e.value.code == "E0003" and "B=4000" in e.value.message and "`matmul" in e.value.message
        with pytest.raises(DlcError):
            m.run({"x": np.ones((4000, 4), np.float32)}, backend="onnxruntime")
        assert m.run({"x": np.ones((100, 4), np.float32)})["y"] == pytest.approx(100 * 100 * 4)
    finally:
        budget.set_budget(None)

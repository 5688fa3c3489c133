"""`grad(y, x)` and `stop_gradient(x)` in the language: values on both backends,
second order (a loss containing `grad` trains), through layers and scans, and
the coded errors of bad calls."""
from __future__ import annotations

import numpy as np
import pytest
from dlc.grammar.errors import DlcError
from dlc.runtime.gradcheck import gradcheck

import dlc

BACKENDS = ["numpy", "onnxruntime"]
X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]], np.float32)

POWERS = """
model m() {
    input x: f32[B, 3]
    output d1 = grad(sum(x ** 3), x)
    output d2 = grad(sum(grad(sum(x ** 3), x)), x)
    output d3 = grad(sum(grad(sum(grad(sum(x ** 3), x)), x)), x)
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_sum_of_cubes_is_three_x_squared(backend):
    out = dlc.compile(POWERS).run({"x": X}, backend=backend)
    np.testing.assert_allclose(out["d1"], 3 * X ** 2, rtol=1e-6)
    np.testing.assert_allclose(out["d2"], 6 * X, rtol=1e-6)
    np.testing.assert_allclose(out["d3"], np.full_like(X, 6.0), rtol=1e-6)


NET = """
model m() {
    input x: f32[B, 3]
    param W: [3, 4] = glorot_uniform()
    h = tanh(x @ W)
    ws, xs = grad(sum(h), [W, x])
    output dW = grad(sum(h), W)
    output dh = grad(sum(h * h), h)           # w.r.t. a binding
    output dx = xs
    output same = sum(abs(ws - grad(sum(h), W)))
    output cut = grad(sum(stop_gradient(h) * h), h)   # h, not 2h
    output frozen = grad(sum(stop_gradient(h)), W)
    output none = grad(sum(x), W)             # y does not depend on W: zeros
    output loss = mean(grad(sum(h), x) ** 2)
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_with_respect_to_params_bindings_and_inputs(backend):
    m = dlc.compile(NET)
    m.graph.verify()
    W = m.params["W"].astype(np.float64)
    out = m.run({"x": X}, backend=backend)
    h = np.tanh(X.astype(np.float64) @ W)
    np.testing.assert_allclose(out["dW"], X.T @ (1 - h ** 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["dh"], 2 * h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["dx"], (1 - h ** 2) @ W.T, rtol=1e-5, atol=1e-6)
    assert float(out["same"]) == 0.0
    np.testing.assert_allclose(out["cut"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["frozen"], np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(out["none"], np.zeros((3, 4), np.float32))


def test_stop_gradient_is_the_identity_forward():
    out = dlc.compile(NET).run({"x": X})
    h = np.tanh(X @ dlc.compile(NET).params["W"])
    np.testing.assert_allclose(out["cut"], h, rtol=1e-5)


def test_a_loss_containing_grad_has_correct_second_order_gradients():
    worst = gradcheck(dlc.compile(NET, mode="train"), loss="loss", echo=lambda *_: None)
    assert worst and max(worst.values()) < 1e-4, worst


SCAN = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H] = glorot_uniform()
    param Wh: [H, H] = orthogonal()
    n = tanh(x @ Wx + h @ Wh)
    return n + 0.1 * grad(sum(n * n), h)      # grad inside the scanned cell
}
model m(hidden: int = 3) {
    input xs: f32[B, T, 2]
    hs, h_last = scan cell over xs axis 1 init (zeros([B, hidden]))
    saliency = grad(sum(h_last * h_last), xs) # grad through the whole scan (BPTT)
    output sal = saliency
    output loss = mean(saliency ** 2) + mean(h_last)
}
"""


def test_grad_through_and_inside_a_scan_trains_second_order():
    m = dlc.compile(SCAN, mode="train")
    m.graph.verify()
    worst = gradcheck(m, echo=lambda *_: None)
    assert set(worst) == {"hs.Wx", "hs.Wh"} and max(worst.values()) < 1e-4, worst


def test_grad_through_a_scan_matches_on_both_backends_and_finite_differences():
    m = dlc.compile(SCAN)
    xs = np.random.default_rng(0).standard_normal((2, 4, 2)).astype(np.float32)
    a, b = m.run({"xs": xs}), m.run({"xs": xs}, backend="onnxruntime")
    np.testing.assert_allclose(a["sal"], b["sal"], rtol=1e-4, atol=1e-6)
    plan = dlc.compile(SCAN.replace("output sal = saliency", "output y = sum(h_last * h_last)"))
    eps, i = 1e-3, (1, 2, 0)
    hi, lo = xs.astype(np.float64).copy(), xs.astype(np.float64).copy()
    hi[i] += eps
    lo[i] -= eps
    num = (plan.run({"xs": hi.astype(np.float32)})["y"] - plan.run({"xs": lo.astype(np.float32)})["y"]) / (2 * eps)
    assert abs(float(a["sal"][i]) - float(num)) < 2e-2 * max(1.0, abs(float(num)))


@pytest.mark.parametrize("body, code, words", [
    ("output g = grad(x, x)", "E0301", "differentiates a float scalar"),
    ("output g = grad(sum(x), n)", "E0301", "only float values have gradients"),
    ("output g = grad(sum(x))", "E0102", "takes 2 arguments"),
    ("output g = grad(sum(x), x, order = 2)", "E0102", "no argument `order`"),
    ("output g = grad(3, x)", "E0103", "must be a tensor"),
    ("output g = grad(sum(x), 2)", "E0103", "with respect to a tensor"),
])
def test_bad_grad_calls_are_coded_errors(body, code, words):
    src = f"model m() {{\n    input x: f32[B, 3]\n    input n: i64[B]\n    {body}\n}}\n"
    with pytest.raises(DlcError) as e:
        dlc.compile(src)
    assert e.value.code == code and words in e.value.message
    assert e.value.loc is not None and e.value.loc.line == 4


def test_missing_gradient_rules_are_reported_together_with_their_lines(monkeypatch):
    """Should an op on the path lack a rule, grad(...) names every such op at once, each at
    the line that applied it (every registered op has one today: tests/test_ops.py)."""
    from dlc.compiler.ops.registry import get_op
    from dlc.grammar.errors import DlcErrors

    for op in ("tanh", "sigmoid"):
        cls = type(get_op(op))
        monkeypatch.setattr(cls, "has", classmethod(lambda c, part: part != "grad"))
    src = "model m() {\n    input x: f32[B, 3]\n    a = tanh(x)\n    b = sigmoid(x)\n    output g = grad(sum(a * b), x)\n}\n"
    with pytest.raises(DlcErrors) as e:
        dlc.compile(src)
    found = sorted((err.loc.line, err.message) for err in e.value.errors)
    assert found == [(3, "no gradient rule for `tanh`"), (4, "no gradient rule for `sigmoid`")]

"""Lowering: numbers against plain NumPy, parameter naming, scan graph size, modes."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError


def test_mlp_matches_plain_numpy():
    m = dlc.load("specs/mlp.dl")
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4])
    out = m.run({"x": x, "y": y})
    p = m.params
    h = np.maximum(x @ p["h.W"] + p["h.b"], 0)
    logits = h @ p["logits.W"] + p["logits.b"]
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    np.testing.assert_allclose(out["probs"], probs, rtol=1e-5, atol=1e-6)
    loss = -np.mean(np.log(probs[np.arange(5), y]))
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)


def test_lstm_graph_size_does_not_depend_on_the_sequence_length():
    text = open("specs/lstm.dl").read().replace('use "lib/nn.dl"', open("specs/lib/nn.dl").read())
    sizes = [len(dlc.compile(text.replace("f32[B, T, 2]", f"f32[B, {t}, 2]")).graph) for t in (5, 500)]
    assert sizes[0] == sizes[1]
    assert len(dlc.load("specs/lstm.dl").graph) == sizes[0]


def test_lstm_runs_with_symbolic_batch_and_length():
    m = dlc.load("specs/lstm.dl")
    for b, t in ((2, 3), (4, 11)):
        out = m.run({"xs": np.zeros((b, t, 2), np.float32), "y": np.zeros(b, np.int64)})
        assert out["probs"].shape == (b, 2)


def test_scan_matches_a_python_loop():
    m = dlc.load("specs/rnn.dl")
    xs = np.random.default_rng(1).standard_normal((3, 6, 2)).astype(np.float32)
    out = m.run({"xs": xs, "y": np.zeros(3, np.int64)})
    p = m.params
    h = np.zeros((3, 32), np.float32)
    for t in range(6):
        h = np.tanh(xs[:, t] @ p["hs.Wx"] + h @ p["hs.Wh"] + p["hs.b"])
    logits = h @ p["logits.W"] + p["logits.b"]
    z = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(out["probs"], z / z.sum(-1, keepdims=True), rtol=1e-4, atol=1e-5)


STACK = """
layer block(x: f32[B, D]) {
    param W: [D, D] = orthogonal()
    return x + relu(x @ W)
}
layer head(x: f32[B, D], E: f32[V, D]) {
    return x @ transpose(E)
}
model stack(width: int = 8, vocab: int = 5) {
    input ids: i64[B]
    param E: [vocab, width] = normal(0.02)
    x = embedding(ids, E)
    h = repeat 3 block(x)
    tied = h @ transpose(E)
    again = h @ transpose(h.1.W)
    output logits = head(h, E)
    output same = tied - logits
    output other = again
}
"""


def test_repeat_scopes_and_explicit_sharing():
    m = dlc.compile(STACK)
    assert sorted(m.params) == ["E", "h.0.W", "h.1.W", "h.2.W"]
    out = m.run({"ids": np.array([0, 3, 4])})
    assert out["logits"].shape == (3, 5)
    np.testing.assert_array_equal(out["same"], 0)
    W = m.params["h.1.W"]
    np.testing.assert_allclose(W @ W.T, np.eye(8), atol=1e-5)  # orthogonal initialiser


def test_bindings_are_order_independent():
    a = dlc.compile("model m() { input x: f32[N, 2]  output y = h * 2.0  h = x + 1.0 }")
    np.testing.assert_allclose(a.run({"x": np.ones((1, 2), np.float32)})["y"], 4.0)


def test_same_seed_same_parameters_and_different_seed_different():
    a, b, c = dlc.load("specs/mlp.dl"), dlc.load("specs/mlp.dl"), dlc.load("specs/mlp.dl", seed=1)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["h.W"], c.params["h.W"])


def test_dropout_differs_between_modes():
    text = "model m() { input x: f32[N, 100]  output y = dropout(x, 0.5) }"
    x = np.ones((4, 100), np.float32)
    assert np.array_equal(dlc.compile(text).run({"x": x})["y"], x)
    y = dlc.compile(text, mode="train").run({"x": x}, seed=3)["y"]
    assert set(np.unique(y)) == {0.0, 2.0}
    assert np.array_equal(y, dlc.compile(text, mode="train").run({"x": x}, seed=3)["y"])


def test_hyperparameters_can_be_overridden():
    m = dlc.load("specs/mlp.dl", hidden=16)
    assert m.params["h.W"].shape == (64, 16)
    with pytest.raises(DlcError) as e:
        dlc.load("specs/mlp.dl", hiden=16)
    assert "did you mean `hidden`" in e.value.render()


def test_gradients_api_matches_finite_differences():
    m = dlc.load("specs/xor.dl")
    feeds = {"x": np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
             "y": np.array([[0], [1], [1], [0]], np.float32)}
    g = m.gradients(feeds)
    p = m.params["logit.b"]
    base = float(m.run(feeds)["loss"])
    m.params["logit.b"] = p + 1e-3
    up = float(m.run(feeds, outputs=["loss"])["loss"])
    assert g["logit.b"][0] == pytest.approx((up - base) / 1e-3, rel=1e-2)

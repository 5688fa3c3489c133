"""The scan op: NumPy semantics, BPTT gradients against finite differences,
graph size independent of the sequence length."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import Graph, Value
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.passes.hoist_scan_invariants import hoist_scan_invariants
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from op_harness import graph_input, graph_param

B, T = Sym.var("B"), Sym.var("T")



def rnn_graph(dtype="f64", reverse=False, I=3, H=4):
    """hs, h_last = scan (h' = tanh(x Wx + h Wh)) over xs axis 1, plus loss."""
    body = Graph("cell")
    bb = Builder(body)
    h = graph_input(body, "h", TensorType(dtype, (B, H)))
    x = graph_input(body, "x", TensorType(dtype, (B, I)))
    wx = graph_input(body, "Wx", TensorType(dtype, (I, H)))
    wh = graph_input(body, "Wh", TensorType(dtype, (H, H)))
    h2 = bb.tanh(bb.add(bb.matmul(x, wx), bb.matmul(h, wh)))
    body.set_outputs({"carry0": h2, "y0": bb.mul(h2, 2.0)})

    g = Graph("rnn")
    b = Builder(g)
    xs = graph_input(g, "xs", TensorType(dtype, (B, T, I)))
    h0 = graph_input(g, "h0", TensorType(dtype, (B, H)))
    Wx = graph_param(g, "Wx", TensorType(dtype, (I, H)))
    Wh = graph_param(g, "Wh", TensorType(dtype, (H, H)))
    hs, h_last = b.apply("scan", h0, xs, Wx, Wh, body=body, n_carry=1, axis=1, reverse=reverse)
    loss = b.add(b.sum(b.mul(hs, hs)), b.sum(h_last))
    g.set_outputs({"hs": hs, "h_last": h_last, "loss": loss})
    return g, b, loss


def reference(xs, h0, Wx, Wh, reverse=False):
    h = h0
    hs = [None] * xs.shape[1]
    steps = range(xs.shape[1] - 1, -1, -1) if reverse else range(xs.shape[1])
    for t in steps:
        h = np.tanh(xs[:, t] @ Wx + h @ Wh)
        hs[t] = 2 * h
    return np.stack(hs, axis=1), h


def _data(Tn=5, Bn=2, I=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    return ({"xs": rng.standard_normal((Bn, Tn, I)), "h0": rng.standard_normal((Bn, H))},
            {"Wx": rng.standard_normal((I, H)) * 0.5, "Wh": rng.standard_normal((H, H)) * 0.5})


def numeric_param_grads(plan, output, feeds, params, names, eps=1e-6):
    """Central finite differences of `plan`'s scalar `output` in each parameter of `names`."""
    grads = {}
    for name in names:
        num = np.zeros_like(params[name])
        for idx in np.ndindex(*params[name].shape):
            hi, lo = params[name].copy(), params[name].copy()
            hi[idx] += eps
            lo[idx] -= eps
            num[idx] = (plan.run(feeds, {**params, name: hi})[output]
                        - plan.run(feeds, {**params, name: lo})[output]) / (2 * eps)
        grads[name] = num
    return grads


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_a_python_loop(reverse):
    g, _, _ = rnn_graph(reverse=reverse)
    feeds, params = _data()
    out = Plan(g).run(feeds, params)
    hs, h_last = reference(feeds["xs"], feeds["h0"], params["Wx"], params["Wh"], reverse)
    np.testing.assert_allclose(out["hs"], hs, rtol=1e-12)
    np.testing.assert_allclose(out["h_last"], h_last, rtol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_scan_binds_its_body_once_and_reads_strided_captures(monkeypatch, reverse):
    g, _, _ = rnn_graph(reverse=reverse)
    feeds, params = _data(Tn=6)
    binds = []
    original = Plan.bind

    def bind(self, *args, **kwargs):
        binds.append(self.graph.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Plan, "bind", bind)
    plan = Plan(g)
    strided = {"Wx": params["Wx"], "Wh": np.asfortranarray(params["Wh"])}  # a transposed view's layout
    first = plan.run(feeds, strided)
    assert binds == ["cell"]  # once per scan call, not once per step
    hs, h_last = reference(feeds["xs"], feeds["h0"], params["Wx"], params["Wh"], reverse)
    np.testing.assert_allclose(first["hs"], hs, rtol=1e-12)
    np.testing.assert_allclose(first["h_last"], h_last, rtol=1e-12)
    kept = first["hs"].copy()
    plan.run({**feeds, "xs": feeds["xs"] + 1.0}, params)  # each call stacks into buffers of its own
    np.testing.assert_array_equal(first["hs"], kept)


def test_a_bound_plan_checks_its_feeds_once_and_equals_run():
    g, _, _ = rnn_graph()
    (scan,) = [n for n in g.nodes() if g.op(n) == "scan"]
    body = g[scan].attrs["body"]
    plan = Plan(body)
    rng = np.random.default_rng(1)
    feeds = {"h": rng.standard_normal((2, 4)), "x": rng.standard_normal((2, 3)),
             "Wx": rng.standard_normal((3, 4)), "Wh": rng.standard_normal((4, 4))}
    names = [body[n].attrs["name"] for n in body.inputs]
    step = plan.bind(feeds, {})
    got = step([feeds[k] for k in names])
    want = plan.run(feeds)
    assert len(got) == len(body.outputs)
    for name, value in zip(body.outputs, got):
        np.testing.assert_array_equal(value, want[name])
    with pytest.raises(DlcError, match="E0401|f32|float32"):
        plan.bind({**feeds, "h": feeds["h"].astype(np.float32)}, {})
    with pytest.raises(DlcError, match="shape"):
        plan.bind({**feeds, "Wx": feeds["Wx"][:2]}, {})


@pytest.mark.parametrize("hoist", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_bptt_matches_finite_differences(reverse, hoist):
    g, b, loss = rnn_graph(reverse=reverse)
    grads = backprop(g, loss, ["Wx", "Wh"], builder=b)
    xs_node = g.input_node("xs")
    dxs = backprop(g, loss, [Value(xs_node)], builder=b)[Value(xs_node)]
    g.set_outputs({**g.outputs, "dWx": grads["Wx"], "dWh": grads["Wh"], "dxs": dxs})
    if hoist:  # weight gradients as GEMMs after the loop, x @ Wx before it
        hoist_scan_invariants(g)
        g.verify()
        back = [n for n in g.nodes() if g.op(n) == "scan" and g[n].role == "backward"]
        assert all(g[n].attrs["n_carry"] == 1 for n in back)  # only dh is carried
    feeds, params = _data()
    out = Plan(g).run(feeds, params)
    loss_plan = Plan(g, ["loss"])
    eps = 1e-6
    for name, num in numeric_param_grads(loss_plan, "loss", feeds, params, ("Wx", "Wh"), eps).items():
        np.testing.assert_allclose(out["d" + name], num, rtol=1e-5, atol=1e-7)
    num = np.zeros_like(feeds["xs"])
    for idx in np.ndindex(*feeds["xs"].shape):
        hi, lo = feeds["xs"].copy(), feeds["xs"].copy()
        hi[idx] += eps
        lo[idx] -= eps
        num[idx] = (loss_plan.run({**feeds, "xs": hi}, params)["loss"]
                    - loss_plan.run({**feeds, "xs": lo}, params)["loss"]) / (2 * eps)
    np.testing.assert_allclose(out["dxs"], num, rtol=1e-5, atol=1e-7)


def test_graph_size_does_not_depend_on_length():
    g, b, loss = rnn_graph()
    backprop(g, loss, ["Wx", "Wh"], builder=b)
    size = len(g)
    for Tn in (5, 50):
        feeds, params = _data(Tn=Tn)
        out = Plan(g).run(feeds, params)
        assert out["hs"].shape == (2, Tn, 4)
    assert len(g) == size  # running never grows the graph; T stays symbolic
    assert g.type_of(g.outputs["hs"]).shape == (B, T, 4)


DROPOUT_RNN = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H] = glorot_uniform()
    param Wh: [H, H] = orthogonal()
    return tanh(dropout(x, 0.5) @ Wx + h @ Wh)
}
model m() {
    input xs: f32[B, T, 4]
    input y: f32[B, 3]
    hs, h = scan cell over xs axis 1 init (zeros([B, 3]))
    output loss = mse(h, y)
    output states = hs
}
train m { data = "d.npz"  loss = loss  epochs = 1  batch = 4 }
"""


def test_random_ops_in_a_cell_draw_per_step_and_backprop_through_the_same_masks(tmp_path):
    import dlc
    from dlc.runtime.gradcheck import gradcheck
    from step_parity import check_training_step

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", xs=rng.standard_normal((8, 5, 4)).astype(np.float32),
             y=rng.standard_normal((8, 3)).astype(np.float32))
    (tmp_path / "rnn.dl").write_text(DROPOUT_RNN)
    m = dlc.load(tmp_path / "rnn.dl", mode="train")
    feeds = {"xs": np.ones((2, 5, 4), np.float32), "y": np.zeros((2, 3), np.float32)}
    hs = m.run(feeds, seed=1)["states"]
    assert not np.allclose(hs[:, 1], hs[:, 2])  # a fresh mask every step (the input is the same)
    np.testing.assert_allclose(m.run(feeds, seed=1, backend="onnxruntime")["states"], hs, atol=1e-6)
    assert max(gradcheck(m, echo=lambda s: None).values()) < 1e-6  # BPTT sees the forward pass's masks
    check_training_step(m, {**feeds, "__rng": np.int64(3)}, label="dropout rnn")
    assert np.array_equal(dlc.load(tmp_path / "rnn.dl").run(feeds)["states"],
                          dlc.load(tmp_path / "rnn.dl").run(feeds)["states"])  # eval mode: no dropout

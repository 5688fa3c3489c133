"""scan forms for seq2seq and attention (issue 9, item 4): `over` any postfix
expression (the precedence trap parses as written), several per-step outputs
before the carries, `steps N` without a sequence, per-example `lengths`, and
the errors for a missing `init`.  Each against a Python loop, on both
backends, with gradients against finite differences and the exported
training step against the interpreter's."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.runtime.gradcheck import gradcheck
from step_parity import check_training_step

SPEC = """
layer rnn(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H]
    param Wh: [H, H] = orthogonal()
    return tanh(x @ Wx + h @ Wh)
}

layer attend(x: f32[B, I], h: f32[B, H], mem: f32[B, S, H]) {
    param Wx: [I, H]
    scores = sum(mem * reshape(h, [B, 1, H]), axis = -1)      # [B, S]
    a = softmax(scores, axis = -1)
    ctx = sum(mem * reshape(a, [B, S, 1]), axis = 1)           # [B, H]
    h2 = tanh(x @ Wx + ctx)
    return h2, a, h2                                           # two per-step outputs, one carry
}

layer free(h: f32[B, H]) {
    param W: [H, H] = orthogonal()
    return tanh(h @ W + 0.5)
}

model m(hidden: int = 4) {
    input src: i64[B, T]
    input xs: f32[B, T, 3]
    input lens: i64[B]
    input y: f32[B, 4]
    param E: [6, 3]
    h0 = zeros([B, hidden])
    es, e_last = scan rnn over embedding(src, E) init (h0)             # over a call
    ws, w_last = scan rnn over E[src] init (h0)                         # over an index
    mem = es
    hs, weights, a_last = scan attend(mem = mem) over xs init (h0)
    gs, g_last = scan free steps 5 init (h0)                            # no sequence
    ls, l_last = scan rnn over xs init (h0) lengths lens
    rs, r_last = scan rnn over xs init (h0) lengths lens reverse
    first = scan rnn over xs[:, 0:2] init (h0)                          # parsed as written
    output attn = weights
    output steps = gs
    output padded = ls
    output last = e_last + w_last + a_last + g_last + l_last + r_last + first[1]
    output loss = mse(e_last + a_last + g_last + l_last + r_last, y)
}
train m { data = "d.npz"  loss = loss  epochs = 1  batch = 4 }
"""


def _rnn(p, xs, h, lens=None, reverse=False):
    t_all = xs.shape[1]
    outs = np.zeros((xs.shape[0], t_all, h.shape[1]))
    for t in (range(t_all - 1, -1, -1) if reverse else range(t_all)):
        h2 = np.tanh(xs[:, t] @ p["Wx"] + h @ p["Wh"])
        if lens is not None:
            live = (t < lens)[:, None]
            h2 = np.where(live, h2, h)
            outs[:, t] = np.where(live, h2, 0.0)
        else:
            outs[:, t] = h2
        h = h2
    return outs, h


def _reference(params, f):
    p = {k.split(".", 1)[1]: v.astype(np.float64) for k, v in params.items() if "." in k}
    group = lambda name: {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(name + ".")}
    emb = params["E"][f["src"]]
    h0 = np.zeros((f["src"].shape[0], 4))
    es, e_last = _rnn(group("es"), emb, h0)
    _, w_last = _rnn(group("ws"), emb, h0)
    wx = group("hs")["Wx"]
    h, attn = h0, []
    for t in range(f["xs"].shape[1]):
        scores = (es * h[:, None]).sum(-1)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        h = np.tanh(f["xs"][:, t] @ wx + (es * a[:, :, None]).sum(1))
        attn.append(a)
    g, gs = h0, []
    for _ in range(5):
        g = np.tanh(g @ group("gs")["W"] + 0.5)
        gs.append(g)
    ls, l_last = _rnn(group("ls"), f["xs"], h0, f["lens"])
    _, r_last = _rnn(group("rs"), f["xs"], h0, f["lens"], reverse=True)
    _, first = _rnn(group("first"), f["xs"][:, 0:2], h0)
    del p
    return {"attn": np.stack(attn, 1), "steps": np.stack(gs, 1), "padded": ls,
            "last": e_last + w_last + h + g + l_last + r_last + first}


def _feeds(batch=3, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"src": rng.integers(0, 6, size=(batch, t)).astype(np.int64),
            "xs": rng.standard_normal((batch, t, 3)).astype(np.float32),
            "lens": np.array([t, 2, 0, 4, 1][:batch], np.int64),
            "y": rng.standard_normal((batch, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    f = _feeds(8, 6, seed=9)
    np.savez(d / "d.npz", **{k: np.resize(v, (8,) + v.shape[1:]) for k, v in f.items()})
    (d / "m.dl").write_text(SPEC)
    return dlc.load(d / "m.dl", mode="train")


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_scan_forms_match_python_loops(model, backend):
    assert model.outputs["attn"].shape[1:] == model.inputs["src"].shape[1:] + model.inputs["src"].shape[1:]
    assert model.outputs["steps"].shape[1] == 5
    for batch, t in ((3, 6), (2, 4)):
        f = _feeds(batch, t, seed=t)
        got = model.run(f, backend=backend)
        for k, want in _reference(model.params, f).items():
            np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5, err_msg=k)


def test_scan_forms_gradients_and_training_step(model):
    assert max(gradcheck(model, echo=lambda s: None).values()) < 1e-5
    check_training_step(model, _feeds(3, 5, seed=2), label="scan forms")


def test_lengths_keep_the_final_state_of_each_example():
    f = _feeds(3, 6)
    m = dlc.compile(SPEC)
    out = m.run(f)
    g = {k.split(".", 1)[1]: v for k, v in m.params.items() if k.startswith("ls.")}
    for b, n in enumerate(f["lens"]):  # the final state is the state after the example's own last step
        _, h = _rnn(g, f["xs"][b:b + 1, :n], np.zeros((1, 4))) if n else (None, np.zeros((1, 4)))
        np.testing.assert_allclose(out["padded"][b, n - 1] if n else np.zeros(4), h[0], rtol=1e-5, atol=1e-6)


CELL = """
layer cell(x: f32[B, 3], h: f32[B, 4], c: f32[B, 4]) { return h + c, c }
model m {
    input xs: f32[B, T, 3]
    input n: i64[B]
    SCAN
}
"""


@pytest.mark.parametrize("scan, message, hint", [
    ("output y = scan cell over xs", "needs `h`, `c`, but the scan passes only 1 sequence slice and 0 carried",
     "init (h0, c0)"),
    ("output y = scan cell over xs init (zeros([B, 4]))", "needs `c`", "init (h0, c0)"),
    ("output y = scan cell steps 0 init (zeros([B, 4]))", "positive integer", None),
    ("output y = scan cell over xs init (zeros([B, 4]), zeros([B, 4])) lengths xs", "1-D integer", None),
    ("output y = scan cell over xs init (zeros([4]), zeros([4])) lengths n", "batch as its first axis", None),
])
def test_scan_errors(scan, message, hint):
    with pytest.raises(DlcError, match=message) as info:
        dlc.compile(CELL.replace("SCAN", scan))
    if hint:
        assert hint in (info.value.hint or "")


TIME_MAJOR = """
layer rnn(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H]
    param Wh: [H, H] = orthogonal()
    return tanh(x @ Wx + h @ Wh)
}

layer acc(x: f32[], s: f32[]) {
    return s * 0.5 + x
}

model m(hidden: int = 4) {
    input xs: f32[T, B, 3]
    input lens: i64[B]
    input v: f32[T]
    h0 = zeros([B, hidden])
    gs, g_last = scan rnn over xs axis 0 init (h0)
    ls, l_last = scan rnn over xs axis 0 init (h0) lengths lens
    vs, v_last = scan acc over v axis 0 init (zeros([]))
    output steps = gs
    output padded = ls
    output last = g_last + l_last
    output running = vs
    output total = v_last
}
"""


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_time_major_scans_and_scans_over_a_vector(tmp_path, backend):
    """`axis 0`: each step's slice of a 1-D sequence (the hidden step index of `lengths`, or an
    `f32[T]` input) is a 0-d array; the results equal a Python loop on both backends."""
    (tmp_path / "m.dl").write_text(TIME_MAJOR)
    m = dlc.load(tmp_path / "m.dl")
    rng = np.random.default_rng(4)
    xs, v = rng.standard_normal((5, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    lens = np.array([5, 2, 0], np.int64)
    got = m.run({"xs": xs, "lens": lens, "v": v}, backend=backend)
    wx, wh = m.params["gs.Wx"], m.params["gs.Wh"]
    h, hs = np.zeros((3, 4), np.float32), []
    for t in range(5):
        h = np.tanh(xs[t] @ wx + h @ wh)
        hs.append(h)
    np.testing.assert_allclose(got["steps"], np.stack(hs), rtol=1e-5, atol=1e-6)
    s, run = np.float32(0), []
    for t in range(5):
        s = s * np.float32(0.5) + v[t]
        run.append(s)
    np.testing.assert_allclose(got["running"], run, rtol=1e-6)
    np.testing.assert_allclose(got["total"], run[-1], rtol=1e-6)
    assert got["padded"].shape == (5, 3, 4)


LOW_RANK_STEPS = """
layer energy(x: f32[B, I], h: f32[B, I]) {
    param w: [I] = ones()
    h2 = tanh(h + x * w)
    return sum(h2 * h2), h2                # a scalar per-step output, then the carry
}

layer level(x: f32[B, I], s: f32[]) {
    param w: [I] = ones()
    return tanh(s + sum(x * w))            # a scalar carry
}

layer decode(h: f32[B, I]) {
    param W: [I, I] = orthogonal()
    h2 = tanh(h @ W)
    return sum(h2), h2
}

model m {
    input xs: f32[B, T, 3]
    input y:  f32[B, 3]
    es, e_last = scan energy over xs init (zeros([B, 3]))
    ls, l_last = scan level over xs init (zeros([]))
    ds, d_last = scan decode steps 4 init (e_last)
    output loss = mse(d_last * l_last, y) + 0.1 * sum(es) + 0.1 * sum(ls) + 0.1 * sum(ds)
}
train m { data = "d.npz"  loss = loss  epochs = 1  batch = 4 }
"""


def _gradchecked(tmp_path, text: str, y_width: int, seed: int):
    """The train-mode model of ``text`` with a 4-example data file beside it (``xs`` [4, 5, 3],
    ``y`` [4, y_width]), its gradients checked against finite differences; (model, feeds)."""
    rng = np.random.default_rng(seed)
    f = {"xs": rng.standard_normal((4, 5, 3)).astype(np.float32),
         "y": rng.standard_normal((4, y_width)).astype(np.float32)}
    np.savez(tmp_path / "d.npz", **f)
    (tmp_path / "m.dl").write_text(text)
    m = dlc.load(tmp_path / "m.dl", mode="train")
    assert max(gradcheck(m, echo=lambda s: None).values()) < 1e-5
    return m, f


def test_per_step_values_of_rank_below_the_axis_backpropagate(tmp_path):
    """Over `axis 1`, a scalar per-step output or carry is stacked as [T] (its steps last):
    BPTT fed its cotangent (or the carry's residual) to the reversed scan as a sequence
    over axis 1, which a rank-1 tensor has not (E0104 building the gradient).  Gradients
    against finite differences, at -O0 and -O2, and the exported training step."""
    m, f = _gradchecked(tmp_path, LOW_RANK_STEPS, y_width=3, seed=3)
    m.opt_level = 0
    want = m.gradients(f)
    assert set(want) == {"es.w", "ls.w", "ds.W"} and all(np.abs(g).sum() > 0 for g in want.values())
    m.opt_level = 2
    m._plans.clear()
    for k, g in m.gradients(f).items():
        np.testing.assert_allclose(g, want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    check_training_step(m, {**f, "__rng": np.int64(0)}, label="low-rank steps")


PENALTY_THROUGH_RNN = """
layer rnn(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H]
    param Wh: [H, H] = orthogonal()
    return tanh(x @ Wx + h @ Wh)
}

model m {
    input xs: f32[B, T, 3]
    input y:  f32[B, 4]
    hs, h = scan rnn over xs init (zeros([B, 4]))
    gx = grad(sum(h * h), xs)                 # BPTT inside the loss: the loss's gradient is second order
    output loss = mse(h, y) + mean(gx * gx)
}
train m { data = "d.npz"  loss = loss  epochs = 1  batch = 4 }
"""


def test_a_gradient_penalty_through_a_scan_exports(tmp_path):
    """Differentiating BPTT's reversed scan makes it stack residuals of its own; they were
    named `res0`.. like that body's inputs, and the ONNX export of the training step failed
    (E0501: two values named `.../body/res0`)."""
    m, f = _gradchecked(tmp_path, PENALTY_THROUGH_RNN, y_width=4, seed=4)
    for level in (0, 2):
        m.opt_level = level
        check_training_step(m, {**f, "__rng": np.int64(0)}, label=f"penalty -O{level}")

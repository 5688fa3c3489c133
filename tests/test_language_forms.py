"""The language forms of issue 9 end to end, on both backends: `//` and `%` on
ints, dims and tensors; `...` in subscripts; constant tensor literals; the
positional ops (arange, eye, tril, triu, cumsum, flip, reverse_sequence) over
symbolic sizes; cross_entropy's class axis and class weights; padding forms."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError

FORMS = """
model forms(k: int = 7) {
    input x: f32[B, T, 4]
    input lens: i64[B]
    input n: i64[B]
    output a = x[..., 0]                                  # [B, T]
    output b = x[1, ...]                                  # [T, 4]
    output c = x[..., 1:3] * [1.0, 2.0]                   # a constant tensor literal
    output d = cumsum(x, axis = 1) + tril(ones([T, 4])) + eye(T, 4)
    output r = reverse_sequence(x, lens)
    output f = flip(x, 1) + cast(arange(4), f32) + [[0.5, 0.5, 0.5, 0.5]]
    output q = n // 3 + n % 3 * 10 + k // 2 + k % 4       # ints: 3 + 3
    output z = zeros([B, T // 2 + T % 2]) + cast(arange(T // 2 + T % 2), f32)
    output u = triu(ones([4, T]), 1) + cumsum(ones([B, 1, T]), exclusive = true, reverse = true)
}
"""


def _feeds(batch, t, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, t, 4)).astype(np.float32),
            "lens": rng.integers(0, t + 1, size=batch).astype(np.int64),
            "n": rng.integers(-20, 20, size=batch).astype(np.int64)}


def _reference(f):
    x, lens, n = f["x"], f["lens"], f["n"]
    t = x.shape[1]
    rev = x.copy()
    for i, m in enumerate(lens):
        rev[i, :m] = x[i, :m][::-1]
    half = t // 2 + t % 2
    return {"a": x[..., 0], "b": x[1], "c": x[..., 1:3] * [1.0, 2.0],
            "d": np.cumsum(x, 1) + np.tril(np.ones((t, 4))) + np.eye(t, 4), "r": rev,
            "f": x[:, ::-1] + np.arange(4) + 0.5, "q": n // 3 + n % 3 * 10 + 6,
            "z": np.zeros((x.shape[0], half)) + np.arange(half),
            "u": np.triu(np.ones((4, t)), 1) + (t - 1 - np.arange(t)) * np.ones((x.shape[0], 1, 1))}


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_forms_match_numpy_at_several_sizes(backend):
    m = dlc.compile(FORMS)
    for batch, t in ((2, 5), (3, 8)):
        f = _feeds(batch, t, seed=t)
        got = m.run(f, backend=backend)
        for k, want in _reference(f).items():
            np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5, err_msg=k)
    assert str(m.outputs["z"].shape[1]) == "T - T//2"


def test_int_and_dim_floor_division_at_compile_time():
    m = dlc.compile("""
model m {
    input x: f32[B, H]
    output y = zeros([B, H // 4, 7 // 2, -7 // 2 + 5, -7 % 3])
}""")
    shape = m.outputs["y"].shape
    assert str(shape[1]) == "H//4" and shape[2:] == (3, 1, 2)


@pytest.mark.parametrize("src, message", [
    ("output y = x[..., 0, ...]", "at most one `...`"),
    ("output y = x + [[1.0, 2.0], [3.0]]", "rectangular"),
    ("output y = x + [1.0, 2.0, 3.0]", "shape mismatch"),
    ("output y = n + [1.5, 2.0]", "non-whole"),
    ("output y = zeros([B, 4 // B])", "fixed integer"),
])
def test_form_errors(src, message):
    text = "model m {\n input x: f32[B, 2]\n input n: i64[B]\n " + src + "\n}"
    with pytest.raises(DlcError, match=message):
        dlc.compile(text)


def _xent(logits, labels, weights=None, axis=1):
    z = np.moveaxis(logits, axis, -1).astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    per = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    if weights is None:
        return per.mean()
    w = np.asarray(weights)[labels]
    return (per * w).sum() / w.sum()


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_cross_entropy_over_nchw_logits_with_class_weights(backend):
    m = dlc.compile("""
model seg {
    input logits: f32[B, 3, H, W]
    input y: i64[B, H, W]
    output plain = cross_entropy(logits, y, axis = 1)
    output weighted = cross_entropy(logits, y, axis = 1, weights = [0.2, 1.0, 3.0])
}""")
    rng = np.random.default_rng(1)
    for h, w in ((4, 5), (6, 3)):
        f = {"logits": rng.standard_normal((2, 3, h, w)).astype(np.float32),
             "y": rng.integers(0, 3, size=(2, h, w)).astype(np.int64)}
        got = m.run(f, backend=backend)
        np.testing.assert_allclose(got["plain"], _xent(f["logits"], f["y"]), rtol=1e-5)
        np.testing.assert_allclose(got["weighted"], _xent(f["logits"], f["y"], [0.2, 1.0, 3.0]), rtol=1e-5)


def test_cross_entropy_weights_must_match_the_classes():
    with pytest.raises(DlcError, match="list of 3 numbers"):
        dlc.compile("model m {\n input z: f32[B, 3]\n input y: i64[B]\n"
                    " output l = cross_entropy(z, y, weights = [1.0, 2.0])\n}")


PADDING = """
model pads {
    input x: f32[B, 2, H, W]
    param K: [3, 2, 3, 3] = he_normal()
    output same  = conv2d(x, K, padding = "same")
    output valid = conv2d(x, K, padding = "valid")
    output asym  = conv2d(x, K, padding = [[0, 1], [2, 0]], stride = 2)
    output pool  = max_pool2d(x, 3, stride = 2, padding = 1, ceil_mode = true)
    output avg   = avg_pool2d(x, 2, ceil_mode = true, count_include_pad = false)
    output avg2  = avg_pool2d(x, 3, stride = 2, padding = 1, ceil_mode = true)
}
"""


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_padding_forms_keep_their_sizes_at_any_image_size(backend):
    m = dlc.compile(PADDING)
    assert str(m.outputs["asym"].shape[2]) == "H//2" and str(m.outputs["same"].shape[2]) == "H"
    rng = np.random.default_rng(2)
    k = m.params["K"]
    for h, w in ((6, 7), (9, 4)):
        x = rng.standard_normal((2, 2, h, w)).astype(np.float32)
        got = m.run({"x": x}, backend=backend)
        other = m.run({"x": x}, backend="numpy")
        for name in got:
            np.testing.assert_allclose(got[name], other[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert got["same"].shape == (2, 3, h, w) and got["valid"].shape == (2, 3, h - 2, w - 2)
        xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (2, 0)))
        ho, wo = (h + 1 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        want = np.zeros((2, 3, ho, wo))
        for i in range(ho):
            for j in range(wo):
                want[:, :, i, j] = np.einsum("ncij,ocij->no", xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], k)
        np.testing.assert_allclose(got["asym"], want, rtol=1e-4, atol=1e-5)
        assert got["pool"].shape == (2, 2, h // 2 + 1, w // 2 + 1)
        cols = -(-w // 2)
        assert got["avg"].shape == (2, 2, -(-h // 2), cols)
        np.testing.assert_allclose(got["avg"][..., -1, -1], x[..., (h - 1) // 2 * 2:, (w - 1) // 2 * 2:].mean((-1, -2)),
                                   rtol=1e-5)


STAGE = """
layer block(x: f32[B, C, H, W], out: int, stride: int = 1) {
    param K: [out, C, 3, 3] = he_normal()
    param P: [out, C, 1, 1] = he_normal()
    return relu(conv2d(x, K, stride = stride, padding = 1) + conv2d(x, P, stride = stride))
}
model m {
    input x: f32[B, 3, H, W]
    output y = repeat 3 block(x, 8, stride = first(2, 1))     # the first block strides and projects
}
"""


def test_repeat_with_a_first_block_that_differs():
    m = dlc.compile(STAGE)
    assert m.params["y.0.P"].shape == (8, 3, 1, 1) and m.params["y.2.P"].shape == (8, 8, 1, 1)
    assert str(m.outputs["y"].shape[2]) == "(H + 1)//2"
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5)).astype(np.float32)
    conv = lambda v, k, s, p: __import__("dlc").compiler.ops.registry.get_op("conv2d").kernel(
        v, k, stride=(s,), padding=p, dilation=(1,), groups=1)
    h = x
    for i, s in enumerate((2, 1, 1)):
        h = np.maximum(conv(h, m.params[f"y.{i}.K"], s, 1) + conv(h, m.params[f"y.{i}.P"], s, 0), 0)
    for backend in ("numpy", "onnxruntime"):
        np.testing.assert_allclose(m.run({"x": x}, backend=backend)["y"], h, rtol=1e-4, atol=1e-5)


def test_repeat_copies_after_the_first_keep_the_type():
    with pytest.raises(DlcError, match="copy 1 of `block`"):
        dlc.compile(STAGE.replace("stride = first(2, 1)", "stride = 2"))
    with pytest.raises(DlcError, match="two values"):
        dlc.compile(STAGE.replace("first(2, 1)", "first(2)"))


def test_first_outside_repeat_points_at_repeat():
    with pytest.raises(DlcError, match="unknown name `first`") as info:
        dlc.compile("model m {\n input x: f32[B, 2]\n output y = x * first(2.0, 1.0)\n}")
    assert "repeat" in info.value.hint


LAYER_HYPER = """
layer block(x: f32[B, I], act: layer = tanh) {
    param W: [I, I]
    return act(x @ W)
}
model m(act: layer = tanh, other = relu) {
    input x: f32[B, 4]
    output y = block(x, act) + other(x)
}
"""


def test_set_passes_a_layer_by_name():
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    m = dlc.compile(LAYER_HYPER, act="relu", other="sigmoid")
    want = np.maximum(x @ m.params["y.W"], 0) + 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-5)
    with pytest.raises(DlcError, match="takes a layer or an op") as info:
        dlc.compile(LAYER_HYPER, act="rleu")
    assert "relu" in info.value.hint

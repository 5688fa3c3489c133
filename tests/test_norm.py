"""Normalisation ops against plain NumPy references; batch norm in both modes,
its running statistics, and its ONNX export (train mode as primitives)."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import Graph, Value
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.types import TensorType, dtype_name
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

RNG = np.random.default_rng(0)
B = Sym.var("B")


def _graph(mode="train"):
    g = Graph("g")
    return g, Builder(g, mode=mode)


def _input(g, name, shape, dtype="f32"):
    n = g.add_node("input", (), {"name": name}, (TensorType(dtype, shape),))
    g.add_input(n)
    return Value(n)


def _inputs(g, arrays: dict, shapes: dict | None = None):
    shapes = shapes or {}
    return [_input(g, k, shapes.get(k, a.shape), dtype_name(a.dtype)) for k, a in arrays.items()]


def _run(build, arrays, mode="train", shapes=None):
    g, b = _graph(mode)
    out = build(b, *_inputs(g, arrays, shapes))
    for j, v in enumerate(out if isinstance(out, tuple) else (out,)):
        g.set_output(f"y{j}", v)
    return g, Plan(g).run(arrays)


def test_layer_norm_matches_reference_and_handles_f16():
    x = RNG.standard_normal((4, 3, 8)).astype(np.float32) * 3 + 10
    gamma, beta = RNG.standard_normal(8).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
    _, r = _run(lambda b, x, g, be: b.layer_norm(x, g, be), {"x": x, "g": gamma, "b": beta})
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(r["y0"], (x - m) / np.sqrt(v + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-4)
    h = {"x": x.astype(np.float16), "g": gamma.astype(np.float16), "b": beta.astype(np.float16)}
    _, r16 = _run(lambda b, x, g, be: b.layer_norm(x, g, be), h)
    assert r16["y0"].dtype == np.float16 and np.all(np.isfinite(r16["y0"]))


def _bn_ref(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    axes = (0, 2, 3)
    m, v = x.mean(axes), x.var(axes)
    n = x.size // x.shape[1]
    y = (x - m[:, None, None]) / np.sqrt(v[:, None, None] + eps) * gamma[:, None, None] + beta[:, None, None]
    return y, (1 - momentum) * rm + momentum * m, (1 - momentum) * rv + momentum * v * n / (n - 1)


def _bn_arrays(n=8):
    return {"x": (RNG.standard_normal((n, 3, 4, 4)) * 2 + 5).astype(np.float32),
            "gamma": RNG.standard_normal(3).astype(np.float32), "beta": RNG.standard_normal(3).astype(np.float32),
            "rm": RNG.standard_normal(3).astype(np.float32), "rv": RNG.uniform(0.5, 2, 3).astype(np.float32)}


def _bn(b, *vals):
    return b.batch_norm(*vals, momentum=0.1)


def test_batch_norm_train_uses_batch_stats_and_updates_running_stats():
    a = _bn_arrays()
    _, r = _run(_bn, a, "train")
    for got, want in zip((r["y0"], r["y1"], r["y2"]), _bn_ref(*a.values())):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batch_norm_eval_uses_running_stats_and_keeps_them():
    a = _bn_arrays()
    _, r = _run(_bn, a, "eval")
    x, gamma, beta, rm, rv = a.values()
    want = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(r["y0"], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(r["y1"], rm)
    np.testing.assert_array_equal(r["y2"], rv)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_norm_exports_as_primitives_with_a_symbolic_batch(mode):
    a = _bn_arrays()
    g, _ = _run(_bn, a, mode, shapes={"x": (B, 3, 4, 4)})
    model = export_graph(g, params={}, name="bn")
    verify(model, g)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops
    session, plan = OrtSession(model), Plan(g)
    for n in (2, 5):
        feeds = {**_bn_arrays(n)}
        ours, theirs = plan.run(feeds), session.run(feeds)
        for k in ours:
            np.testing.assert_allclose(theirs[k], ours[k], rtol=1e-4, atol=1e-5)
        if mode == "train":  # the unbiased factor n / (n - 1) is computed at run time
            np.testing.assert_allclose(ours["y2"], _bn_ref(*feeds.values())[2], rtol=1e-4)


def test_batch_norm_rejects_wrong_parameter_shapes():
    g, b = _graph()
    x = _input(g, "x", (4, 3, 2, 2))
    p3, p4 = _input(g, "p3", (3,)), _input(g, "p4", (4,))
    with pytest.raises(DlcError, match="running_var must be f32\\[3\\]"):
        b.batch_norm(x, p3, p3, p3, p4)


def test_instance_norm_matches_reference():
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    gamma, beta = RNG.standard_normal(3).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
    _, r = _run(lambda b, x, g, be: b.instance_norm(x, g, be), {"x": x, "g": gamma, "b": beta})
    m, v = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    want = (x - m) / np.sqrt(v + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(r["y0"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_lrn_matches_the_onnx_formula(size):
    x = RNG.standard_normal((2, 6, 3, 2))
    c = x.shape[1]
    want = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - (size - 1) // 2), min(c - 1, ch + size // 2)
        s = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        want[:, ch] = x[:, ch] / (2.0 + 0.3 / size * s) ** 0.75
    _, r = _run(lambda b, x: b.lrn(x, size=size, alpha=0.3, beta=0.75, bias=2.0), {"x": x})
    np.testing.assert_allclose(r["y0"], want, rtol=1e-12)


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_finite():
    x = RNG.standard_normal((4, 6))
    x[2] = 0.0
    g, b = _graph()
    n = g.add_node("param", (), {"name": "x", "init": ("zeros", {})}, (TensorType("f64", (4, 6)),))
    g.add_param("x", n)
    y = b.l2_normalize(Value(n))
    loss = b.sum(b.mul(y, b.const(RNG.standard_normal((4, 6)), "f64")))
    g.set_outputs({**g.outputs, "y": y, "dx": backprop(g, loss, ["x"], builder=b)["x"]})
    r = Plan(g).run({}, {"x": x})
    norms = np.linalg.norm(r["y"], axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3]], 1.0, rtol=1e-12)
    assert norms[2] == 0.0 and np.all(np.isfinite(r["dx"]))


def test_penalties():
    w = RNG.standard_normal((3, 4))
    _, r = _run(lambda b, w: (b.l1(w, scale=0.5), b.l2(w)), {"w": w})
    np.testing.assert_allclose(r["y0"], 0.5 * np.abs(w).sum())
    np.testing.assert_allclose(r["y1"], 0.01 * 0.5 * (w ** 2).sum())  # the weight-decay form: gradient 0.01 * w


@pytest.mark.parametrize("size,dtype", [(3, "f32"), (4, "f32"), (5, "f64"), (3, "f16")])
def test_lrn_exports_for_every_size_and_dtype(size, dtype):
    x = RNG.standard_normal((2, 6, 3)).astype(dtype.replace("f", "float"))
    g, ours = _run(lambda b, x: b.lrn(x, size=size, alpha=0.3), {"x": x})
    model = export_graph(g, params={}, name="lrn")
    verify(model, g)
    theirs = OrtSession(model).run({"x": x})
    np.testing.assert_allclose(theirs["y0"].astype(np.float64), ours["y0"].astype(np.float64),
                               rtol=2e-3 if dtype == "f16" else 1e-5)

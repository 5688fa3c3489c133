"""Counter-based random ops: determinism, independence of salts and keys,
distribution moments, and bit-identical results in NumPy and onnxruntime
(dropout masks, uniforms, raw bits), symbolic shapes included."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import RNG_INPUT, Graph, Value
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.ops.registry import get_op
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

KEY = np.array(12345, dtype=np.int64)
B = Sym.var("B")
N = 100_000


def bits(key, salt, shape=(N,)):
    return get_op("random_bits").kernel(np.array(key, dtype=np.int64), shape=shape, salt=salt)


def sample(kind, key=12345, salt=1, shape=(N,), dtype="f32", **params):
    op = get_op(f"random_{kind}")
    attrs = op.check_attrs({"shape": shape, "salt": salt, "dtype": dtype, **params})  # fills defaults
    return op.kernel(np.array(key, dtype=np.int64), **attrs)


def _input(g: Graph, name: str, t: TensorType) -> Value:
    n = g.add_node("input", (), {"name": name}, (t,))
    g.add_input(n)
    return Value(n)


# -- determinism and independence ---------------------------------------------------
def test_same_key_and_salt_give_the_same_values():
    np.testing.assert_array_equal(bits(7, 3), bits(7, 3))
    np.testing.assert_array_equal(sample("normal", 7, 3), sample("normal", 7, 3))


def test_a_prefix_does_not_depend_on_the_shape():
    # counters are flat element indices: the first elements agree whatever the total size
    np.testing.assert_array_equal(bits(7, 3, (10,)), bits(7, 3, (1000,))[:10])
    np.testing.assert_array_equal(bits(7, 3, (4, 5)).ravel(), bits(7, 3, (20,)))


@pytest.mark.parametrize("other", [(12345, 2), (12346, 1), (12345 + 2**31 - 1, 1), (-12345, 1)],
                         ids=["salt", "key", "key+P", "negated key"])
def test_other_salts_and_keys_give_unrelated_values(other):
    a, b = bits(12345, 1), bits(*other)
    assert np.mean(a == b) < 1e-3
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def test_bits_are_in_range_and_nearly_collision_free():
    x = bits(99, 5)
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < 2**31 - 1
    # a random function into 2**31 values repeats about N**2 / 2**32 ≈ 2.3 times here
    assert N - len(np.unique(x)) < 20


def test_extreme_keys_are_accepted():
    for key in (-2**63, 2**63 - 1, 0, -1):
        x = bits(key, 0, (1000,))
        assert x.min() >= 0 and x.max() < 2**31 - 1


# -- distributions ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_uniform_moments_and_range(dtype):
    u = sample("uniform", dtype=dtype)
    assert u.dtype == np.dtype(dtype.replace("f", "float"))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbours are not correlated
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((counts - N / 20) ** 2 / (N / 20)).sum()
    assert chi2 < 50  # 19 degrees of freedom: p ≈ 1e-4


def test_uniform_range_is_scaled():
    u = sample("uniform", low=-2.0, high=3.0)
    assert u.min() >= -2.0 and u.max() < 3.0
    assert abs(u.mean() - 0.5) < 0.03


def test_f16_uniform_stays_below_one():
    u = sample("uniform", dtype="f16")
    assert u.dtype == np.float16 and u.max() < 1.0 and u.min() >= 0.0


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_normal_moments(dtype):
    z = sample("normal", dtype=dtype)
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(z**3)) < 0.05 and abs(np.mean(z**4) - 3.0) < 0.1  # skew 0, kurtosis 3
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01


def test_normal_mean_and_std():
    z = sample("normal", mean=2.0, std=0.5)
    assert abs(z.mean() - 2.0) < 0.01 and abs(z.std() - 0.5) < 0.01


def test_normal_never_takes_log_of_zero():
    # the smallest first uniform is 2**-24, so |z| <= sqrt(2 * 24 * ln 2) ≈ 5.77
    z = sample("normal", shape=(1_000_000,))
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 5.8


# -- graphs: composites, modes ----------------------------------------------------------
def _graph(mode: str, shape=(64, 32)):
    g = Graph("g")
    b = Builder(g, mode=mode)
    x = _input(g, "x", TensorType("f32", shape))
    return g, b, x


def test_dropout_in_eval_mode_is_the_input_itself():
    g, b, x = _graph("eval")
    assert b.dropout(x, rate=0.5) == x
    assert RNG_INPUT not in g.input_names()


def test_dropout_in_train_mode_keeps_about_one_minus_rate_and_scales():
    g, b, x = _graph("train", (200, 500))
    g.set_output("y", b.dropout(x, rate=0.3))
    xs = np.ones((200, 500), np.float32)
    y = Plan(g).run({"x": xs, RNG_INPUT: KEY})["y"]
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)


def test_two_dropouts_in_one_graph_differ_and_a_new_key_changes_the_mask():
    g, b, x = _graph("train")
    g.set_output("a", b.dropout(x, rate=0.5))
    g.set_output("b", b.dropout(x, rate=0.5))
    plan = Plan(g)
    xs = np.ones((64, 32), np.float32)
    r1 = plan.run({"x": xs, RNG_INPUT: KEY})
    r2 = plan.run({"x": xs, RNG_INPUT: KEY + 1})
    assert np.mean((r1["a"] != 0) == (r1["b"] != 0)) < 0.6
    assert np.mean((r1["a"] != 0) == (r2["a"] != 0)) < 0.6
    np.testing.assert_array_equal(r1["a"], plan.run({"x": xs, RNG_INPUT: KEY})["a"])


def test_dropout_rejects_a_rate_of_one():
    g, b, x = _graph("train")
    with pytest.raises(DlcError, match="rate"):
        b.dropout(x, rate=1.0)


def test_bernoulli_mean_follows_p():
    g, b, x = _graph("train", (N,))
    g.set_output("y", b.bernoulli(x))
    p = np.linspace(0, 1, N, dtype=np.float32)
    y = Plan(g).run({"x": p, RNG_INPUT: KEY})["y"]
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert abs(y.mean() - 0.5) < 0.01
    assert y[: N // 10].mean() < 0.1 and y[-N // 10:].mean() > 0.9


# -- NumPy vs onnxruntime: bit for bit ------------------------------------------------------
def _both(g, feeds):
    ours = Plan(g).run(feeds)
    model = export_graph(g, params={}, name=g.name)
    verify(model, g)
    return ours, OrtSession(model).run(feeds), OrtSession(model, optimize=False).run(feeds)


@pytest.mark.parametrize("key", [12345, -7, 2**62 + 3])
def test_dropout_mask_is_bit_identical_in_onnxruntime(key):
    g = Graph("dropout")
    b = Builder(g, mode="train")
    x = _input(g, "x", TensorType("f32", (B, 37)))
    g.set_output("y", b.dropout(b.mul(x, 1.0), rate=0.4))
    xs = np.random.default_rng(0).standard_normal((50, 37)).astype(np.float32)
    ours, opt, noopt = _both(g, {"x": xs, RNG_INPUT: np.array(key, dtype=np.int64)})
    for theirs in (opt, noopt):
        np.testing.assert_array_equal(ours["y"] != 0, theirs["y"] != 0)
        np.testing.assert_array_equal(ours["y"], theirs["y"])


def test_symbolic_shape_uniform_and_bits_match_onnxruntime():
    g = Graph("sym")
    b = Builder(g, mode="train")
    x = _input(g, "x", TensorType("f32", (B, 3)))
    g.set_output("u", b.uniform(shape=(B, 2 * B, 3)))
    g.set_output("r", b.random_bits(b.rng_key(), shape=(B, 5), salt=77))
    g.set_output("z", b.rand_like(x, kind="normal"))
    for n in (1, 4):
        feeds = {"x": np.zeros((n, 3), np.float32), RNG_INPUT: KEY}
        ours, opt, noopt = _both(g, feeds)
        assert ours["u"].shape == (n, 2 * n, 3)
        for theirs in (opt, noopt):
            np.testing.assert_array_equal(ours["u"], theirs["u"])
            np.testing.assert_array_equal(ours["r"], theirs["r"])
            np.testing.assert_allclose(ours["z"], theirs["z"], rtol=1e-5, atol=1e-5)


def test_large_bits_match_onnxruntime():
    g = Graph("bits")
    b = Builder(g)
    g.set_output("r", b.random_bits(b.rng_key(), shape=(200_000,), salt=2**31 - 2))  # several kernel chunks
    model = export_graph(g, params={}, name="bits")
    session, plan = OrtSession(model), Plan(g)
    for key in (0, -1, 2**63 - 1, -2**63, 987654321987):
        feeds = {RNG_INPUT: np.array(key, dtype=np.int64)}
        np.testing.assert_array_equal(plan.run(feeds)["r"], session.run(feeds)["r"])

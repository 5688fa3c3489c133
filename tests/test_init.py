"""Parameter initialisers: fans, spreads, orthogonality, determinism, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dlc.compiler.ops.init import fans, init_names, init_params, initialize


def make(name, shape, kwargs=None, dtype="f64", seed=0):
    return initialize(name, kwargs or {}, shape, dtype, np.random.default_rng(seed))


def test_names_include_aliases():
    names = init_names()
    for n in ("zeros", "ones", "constant", "normal", "uniform", "glorot_uniform", "xavier_uniform",
              "glorot_normal", "xavier_normal", "he_normal", "kaiming_normal", "he_uniform", "kaiming_uniform",
              "lecun_normal", "orthogonal"):
        assert n in names
    assert names == sorted(names)


@pytest.mark.parametrize("shape,expected", [((), (1, 1)), ((7,), (7, 7)), ((3, 5), (3, 5)),
                                            ((8, 4, 3, 3), (36, 72)), ((6, 2, 5), (10, 30))])
def test_fans(shape, expected):
    assert fans(shape) == expected


def test_constants():
    assert np.all(make("zeros", (2, 3)) == 0) and np.all(make("ones", (2, 3), dtype="i64") == 1)
    c = make("constant", (4,), {"value": 2.5}, dtype="f32")
    assert c.dtype == np.float32 and np.all(c == 2.5)
    assert make("ones", (), dtype="f32").shape == ()


@pytest.mark.parametrize("name", [n for n in init_names()])
def test_deterministic_shaped_typed_and_writable(name):
    shape = (16, 8)
    a, b = make(name, shape, dtype="f32", seed=3), make(name, shape, dtype="f32", seed=3)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.writeable
    np.testing.assert_array_equal(a, b)
    if name not in ("zeros", "ones", "constant"):
        assert not np.array_equal(a, make(name, shape, dtype="f32", seed=4))
        # f32 and f64 draw the same numbers
        np.testing.assert_allclose(a, make(name, shape, dtype="f64", seed=3), rtol=1e-6)


def test_normal_and_uniform_moments():
    z = make("normal", (200, 500), {"mean": 1.0, "std": 0.5})
    assert abs(z.mean() - 1.0) < 0.01 and abs(z.std() - 0.5) < 0.01
    assert init_params("normal") == {"std": 1.0, "mean": 0.0}  # normal(0.02) means std 0.02
    u = make("uniform", (200, 500), {"low": -3.0, "high": 1.0})
    assert u.min() >= -3.0 and u.max() < 1.0 and abs(u.mean() + 1.0) < 0.02
    t = make("truncated_normal", (200, 500), {"std": 0.02})
    assert np.abs(t).max() <= 0.04 and abs(t.std() - 0.02 * 0.8796) < 0.001  # std of N(0,1) cut at ±2


# (name, kwargs, expected std) for W: [in=400, out=100]
FAN_IN, FAN_OUT = 400, 100
SPREAD = [
    ("glorot_uniform", {}, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("xavier_normal", {}, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("glorot_normal", {"gain": 2.0}, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", {}, math.sqrt(2 / FAN_IN)),
    ("kaiming_uniform", {}, math.sqrt(2 / FAN_IN)),
    ("he_normal", {"mode": "fan_out"}, math.sqrt(2 / FAN_OUT)),
    ("lecun_normal", {}, math.sqrt(1 / FAN_IN)),
    ("lecun_uniform", {}, math.sqrt(1 / FAN_IN)),
]


@pytest.mark.parametrize("name,kwargs,std", SPREAD, ids=[f"{n}-{k}" for n, k, _ in SPREAD])
def test_scaled_initialisers_have_the_standard_spread(name, kwargs, std):
    w = make(name, (FAN_IN, FAN_OUT), kwargs)
    assert abs(w.mean()) < 0.03 * std  # 6 standard errors
    assert abs(w.std() / std - 1) < 0.02


def test_uniform_bounds_are_sharp():
    w = make("glorot_uniform", (FAN_IN, FAN_OUT))
    limit = math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit


def test_conv_kernel_uses_the_receptive_field():
    w = make("he_normal", (64, 16, 3, 3))
    assert abs(w.std() / math.sqrt(2 / (16 * 9)) - 1) < 0.03


@pytest.mark.parametrize("shape", [(50, 20), (20, 50), (30, 30), (8, 3, 2, 2), (4, 3, 5)])
def test_orthogonal(shape):
    w = make("orthogonal", shape, {"gain": 1.5})
    m = w.reshape(shape[0], -1) / 1.5
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-10)


def test_orthogonal_needs_a_matrix():
    with pytest.raises(ValueError, match="rank >= 2"):
        make("orthogonal", (5,))


def test_empty_shapes():
    for name in init_names():
        if name != "orthogonal":
            assert make(name, (0, 4)).shape == (0, 4)
    assert make("orthogonal", (0, 4)).shape == (0, 4)


@pytest.mark.parametrize("name,kwargs,dtype,shape,match", [
    ("glorot", {}, "f32", (2, 2), "unknown initialiser `glorot`; did you mean `glorot_normal`"),
    ("normal", {"sigma": 1.0}, "f32", (2, 2), "has no argument `sigma` .it takes std, mean."),
    ("zeros", {"value": 1.0}, "f32", (2, 2), "takes no arguments"),
    ("normal", {"std": "big"}, "f32", (2, 2), "must be a number"),
    ("normal", {"std": -1.0}, "f32", (2, 2), "must be >= 0"),
    ("uniform", {"low": 2.0, "high": 1.0}, "f32", (2, 2), "empty range"),
    ("he_normal", {"mode": "fan_avg"}, "f32", (2, 2), "fan_in"),
    ("he_normal", {}, "i64", (2, 2), "random floats"),
    ("constant", {"value": 0.5}, "i32", (2, 2), "whole numbers"),
    ("normal", {}, "f8", (2, 2), "unknown dtype"),
    ("normal", {}, "f32", (2, -1), "non-negative ints"),
    ("normal", {"std": float("nan")}, "f32", (2, 2), "finite"),
])
def test_errors_are_clear(name, kwargs, dtype, shape, match):
    with pytest.raises(ValueError, match=match):
        initialize(name, kwargs, shape, dtype, np.random.default_rng(0))

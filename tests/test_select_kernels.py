"""The branch-free kernels behind `where` and relu's gradient give np.where's and the
formula's results bit for bit, for every dtype, broadcast, NaN, signed zero and buffer alias."""
from __future__ import annotations

import numpy as np
import pytest
from dlc.compiler.ops.activation import relu_grad
from dlc.compiler.ops.compare import SELECT_MIN_SIZE, select


def _same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                  np.ascontiguousarray(want).view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("shapes", [((64, 40), (64, 40), (64, 40)), ((64, 40), (40,), ()),
                                    ((64, 40), (), (64, 40)), ((64, 40), (64, 1), (40,)),
                                    ((8, 40), (8, 40), (8, 40)), ((64, 40), (1, 40), (64, 40))])
def test_select_is_np_where_bit_for_bit(dtype, shapes):
    rng = np.random.default_rng(0)
    cs, a_shape, b_shape = shapes
    c = rng.random(cs) < 0.5
    a = (rng.standard_normal(a_shape) * 50).astype(dtype)
    b = (rng.standard_normal(b_shape) * 50).astype(dtype)
    if np.dtype(dtype).kind == "f" and a.ndim:
        a.flat[0], a.flat[-1] = np.nan, -0.0
    for other in (b, np.zeros((), dtype), np.asarray(3, dtype)):
        _same_bits(select(c, a, other), np.where(c, a, other))
        _same_bits(select(c, other, a), np.where(c, other, a))


def test_select_on_strided_views_and_small_arrays():
    rng = np.random.default_rng(1)
    c = (rng.random((64, 2 * SELECT_MIN_SIZE)) < 0.5)[:, ::2]
    a = rng.standard_normal((SELECT_MIN_SIZE, 64)).astype(np.float32).T
    b = rng.standard_normal((64, SELECT_MIN_SIZE)).astype(np.float32)
    _same_bits(select(c, a, b), np.where(c, a, b))
    small = np.array([True, False])
    _same_bits(select(small, np.float32([1, 2]), np.float32(0)), np.where(small, np.float32([1, 2]), np.float32(0)))


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_relu_grad_into_any_buffer(alpha):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[0, :3] = [0.0, -0.0, np.nan]
    dy = rng.standard_normal((32, 16)).astype(np.float32)
    want = dy * np.where(x > 0, np.float32(1), np.float32(alpha))
    _same_bits(relu_grad(dy, x, alpha), want)
    for alias in ("dy", "x", "fresh"):
        d, v = dy.copy(), x.copy()
        out = {"dy": d, "x": v, "fresh": np.empty_like(d)}[alias]
        got = relu_grad(d, v, alpha, out=out)
        assert got is out
        _same_bits(got, want)
    assert relu_grad(np.float32([0.0]), np.float32([-1.0]))[0] == 0.0  # a zero cotangent stays zero

"""The last-axis row reductions of compiler/ops/rows.py and the kernels built on them
(softmax, log_softmax, layer_norm, sum over trailing axes)."""
from pathlib import Path

import numpy as np
import pytest

from dlc.compiler.ops.registry import get_op
from dlc.compiler.ops.rows import max_keepdims, row_sum, sum_keepdims


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _close_to_exact_sum(got, x, axis):
    """|got - Σx| within a few float32 ulps of Σ|x| (what any summation order guarantees)."""
    exact = np.sum(x.astype(np.float64), axis=axis, keepdims=got.ndim == x.ndim)
    scale = np.sum(np.abs(x.astype(np.float64)), axis=axis, keepdims=got.ndim == x.ndim)
    assert got.dtype == x.dtype and got.shape == exact.shape
    assert np.all(np.abs(got - exact) <= 4 * np.finfo(x.dtype).eps * scale + 1e-30)


def test_the_row_maximum_equals_np_max():
    for shape in [(16, 4, 64, 64), (2708, 7), (300, 13), (4, 5, 13), (64, 10), (512, 2), (3,),
                  (1024, 128), (100, 33), (200, 17)]:
        x = _rand(shape)
        x.flat[::97] = np.inf
        x.flat[5::89] = -0.0
        np.testing.assert_array_equal(max_keepdims(x, -1), np.max(x, axis=-1, keepdims=True), err_msg=str(shape))
    x = _rand((300, 13))
    x[7, 3] = np.nan
    got = max_keepdims(x, -1)
    assert np.isnan(got[7, 0]) and np.array_equal(got[8:], np.max(x, axis=-1, keepdims=True)[8:])
    np.testing.assert_array_equal(max_keepdims(x, 0), np.max(x, axis=0, keepdims=True))  # not the last axis
    strided = _rand((64, 8, 40)).transpose(1, 0, 2)  # not C-contiguous: halved as views
    np.testing.assert_array_equal(max_keepdims(strided, -1), np.max(strided, axis=-1, keepdims=True))


@pytest.mark.parametrize("shape", [(16, 4, 64, 64), (2708, 7), (1024, 128), (3, 2), (64, 2048)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_are_sums_within_rounding(shape, dtype):
    x = _rand(shape, dtype=dtype) + 0.5
    _close_to_exact_sum(row_sum(x), x, -1)
    _close_to_exact_sum(row_sum(x, keepdims=False), x, -1)
    _close_to_exact_sum(sum_keepdims(x, -1), x, -1)
    np.testing.assert_array_equal(row_sum(x), row_sum(x.copy()))  # the same bits for the same array


def test_row_sum_leaves_what_blas_cannot_take_to_numpy():
    assert row_sum(np.arange(12).reshape(3, 4)) is None  # integers
    assert row_sum(_rand((4, 6)).T) is None  # not C-contiguous
    assert row_sum(_rand((4, 1))) is None and row_sum(_rand((5,))) is None
    assert row_sum(_rand((4, 6), dtype=np.float16)) is None
    x = _rand((4, 6, 5))
    np.testing.assert_array_equal(sum_keepdims(x, 1), np.sum(x, axis=1, keepdims=True))  # not the last axis
    strided = x.transpose(0, 2, 1)
    np.testing.assert_array_equal(sum_keepdims(strided, -1), np.sum(strided, axis=-1, keepdims=True))


def test_the_sum_kernel_takes_trailing_axes_as_rows_and_the_rest_as_numpy():
    k = get_op("sum").kernel
    x = _rand((6, 5, 8)) - 0.25
    _close_to_exact_sum(k(x, axes=-1, keepdims=True), x, -1)
    _close_to_exact_sum(k(x, axes=[1, 2], keepdims=False), x, (1, 2))
    assert k(x, axes=[1, 2], keepdims=True).shape == (6, 1, 1)
    for axes in (0, [0, 1], None, [0, 2]):  # leading or non-trailing axes: np.sum's own bits
        np.testing.assert_array_equal(k(x, axes=axes, keepdims=False), np.sum(x, axis=None if axes is None else tuple(np.atleast_1d(axes))))
    ints = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(k(ints, axes=-1, keepdims=False), ints.sum(-1))
    for empty, axes in ((np.zeros((0, 4), np.float32), -1), (np.zeros((0, 3, 4), np.float32), [1, 2])):
        got = k(empty, axes=axes, keepdims=False)  # an empty batch: no rows to sum
        assert got.shape == (0,) and got.dtype == np.float32


def test_long_rows_are_summed_pairwise_not_sequentially():
    from dlc.compiler.ops.rows import ROW_MAX_LEN, dot_keepdims

    x = _rand((2, 1 << 16)) + 3.0  # rows far longer than ROW_MAX_LEN: np.sum's pairwise order
    assert row_sum(x) is None and x.shape[-1] > ROW_MAX_LEN
    np.testing.assert_array_equal(dot_keepdims(x, x, -1), np.sum(x * x, axis=-1, keepdims=True))
    y = get_op("layer_norm").kernel(x, np.ones(x.shape[-1], np.float32), np.zeros(x.shape[-1], np.float32),
                                    axis=-1, eps=0.0)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / x64.std(-1, keepdims=True)
    assert np.abs(y - want).max() < 1e-5  # a sequential float32 sum of 65536 squares was 1e-4 off


def _f64_softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(16, 4, 64, 64), (2708, 7), (3, 5)])
def test_softmax_and_log_softmax_match_float64(shape):
    x = _rand(shape) * 4
    ref = _f64_softmax(x.astype(np.float64))
    got = get_op("softmax").kernel(x, axis=-1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(get_op("log_softmax").kernel(x, axis=-1), np.log(ref), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("shape,axis", [((16, 64, 128), -1), ((4, 6, 5), 1), ((7,), -1), ((3, 1), -1)])
def test_layer_norm_matches_the_two_pass_float64_reference(shape, axis):
    x = _rand(shape) * 3 + 100.0  # |mean| >> std: a one-pass variance would cancel here
    norm = x.shape[axis:]
    gamma, beta = _rand(norm, seed=1), _rand(norm, seed=2)
    ax = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    xc = x64 - x64.mean(axis=ax, keepdims=True)
    ref = xc / np.sqrt((xc * xc).mean(axis=ax, keepdims=True) + 1e-5) * gamma + beta
    k = get_op("layer_norm").kernel
    got = k(x, gamma, beta, axis=axis, eps=1e-5)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(gamma).max() + 1e-6)
    if x.ndim > 1:  # a strided input takes NumPy's reductions: as close to the reference
        flipped = np.ascontiguousarray(x[::-1])[::-1]
        assert not flipped.flags.c_contiguous
        np.testing.assert_allclose(k(flipped, gamma, beta, axis=axis, eps=1e-5), ref,
                                   rtol=1e-4, atol=1e-4 * np.abs(gamma).max() + 1e-6)


def _ln_grad_reference(dy, x, gamma, axis):
    """layer_norm's (dx, dy * x̂) in float64, straight from the formula."""
    ax = tuple(range(axis % x.ndim, x.ndim))
    dy, x, gamma = (v.astype(np.float64) for v in (dy, x, gamma))
    xc = x - x.mean(axis=ax, keepdims=True)
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=ax, keepdims=True) + 1e-5)
    xhat = xc * inv
    g = dy * gamma
    dx = inv * (g - g.mean(axis=ax, keepdims=True) - xhat * (g * xhat).mean(axis=ax, keepdims=True))
    return dx, dy * xhat


@pytest.mark.parametrize("shape,axis", [((16, 64, 128), -1), ((4, 6, 5), 1), ((3, 1), -1)])
def test_layer_norm_grad_matches_its_formula(shape, axis):
    x = _rand(shape) * 2 + 3.0
    dy = _rand(shape, seed=3)
    gamma = _rand(x.shape[axis:], seed=4)
    k = get_op("layer_norm_grad").kernel
    want = _ln_grad_reference(dy, x, gamma, axis)
    broadcast = np.broadcast_to(dy[:, :1], dy.shape)  # a stride-0 cotangent, as a mean's gradient gives
    for d in (dy, broadcast):
        got = k(d, x, gamma, axis=axis, eps=1e-5)
        ref = _ln_grad_reference(d, x, gamma, axis)
        for g, r in zip(got, ref):
            assert g.dtype == np.float32 and g.shape == x.shape
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max() + 1e-7)
    half = k(dy.astype(np.float16), x.astype(np.float16), gamma.astype(np.float16), axis=axis, eps=1e-5)
    assert all(h.dtype == np.float16 for h in half)  # statistics in float32, results in float16
    np.testing.assert_allclose(half[0].astype(np.float32), want[0], rtol=2e-2, atol=2e-2 * np.abs(want[0]).max() + 1e-3)


def test_dot_keepdims_is_the_sum_of_the_product():
    from dlc.compiler.ops.rows import dot_keepdims

    a, b = _rand((16, 4, 64, 64)), _rand((16, 4, 64, 64), seed=1)
    got, prod = dot_keepdims(a, b, -1), a.astype(np.float64) * b
    assert got.dtype == np.float32 and got.shape == (16, 4, 64, 1)
    assert np.all(np.abs(got - prod.sum(-1, keepdims=True)) <= 8 * 2 ** -23 * np.abs(prod).sum(-1, keepdims=True))
    np.testing.assert_array_equal(dot_keepdims(a, b, 1), np.sum(a * b, axis=1, keepdims=True))  # not the last axis
    at = a.transpose(0, 1, 3, 2)  # strided: np.sum of the product
    np.testing.assert_array_equal(dot_keepdims(at, b, -1), np.sum(at * b, axis=-1, keepdims=True))


@pytest.mark.parametrize("shape,axis", [((16, 4, 64, 64), -1), ((2708, 7), -1), ((2, 3, 4), 1)])
def test_softmax_grad_is_the_softmax_jacobian_transposed(shape, axis):
    x = _rand(shape) * 3
    y = get_op("softmax").kernel(x, axis=axis)
    dy = _rand(shape, seed=5)
    y64 = y.astype(np.float64)
    want = y64 * (dy - np.sum(dy * y64, axis=axis, keepdims=True))
    got = get_op("softmax_grad").kernel(dy, y, axis=axis)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_backward_primitives_keep_examples_apart_on_data_parallel_shards():
    """layer_norm_grad and softmax_grad mix along their normalised axes only, so a worker's
    rows of the batch give its rows of their outputs (compiler/training/rowwise.py)."""
    import dlc
    from dlc.compiler.training.stages import batch_dims, classify
    from dlc.exports import grad_graph

    spec = Path(__file__).resolve().parent.parent / "specs" / "transformer.dl"
    g, _ = grad_graph(dlc.load(str(spec), mode="train"))
    cls, _ = classify(g, batch_dims(g))
    kinds = {}
    for v, c in cls.items():
        kinds.setdefault(g[v.node].op, set()).add(c)
    assert kinds["layer_norm_grad"] == {"sharded"} and kinds["softmax_grad"] == {"sharded"}


def test_the_layer_norm_grad_export_computes_float16_statistics_in_float32():
    """A float16 row whose sum overflows float16 (|mean| ~ 1000, 128 elements): the kernel's
    statistics are float32, and so are the exported ones (Casts around the formula), which
    the ONNX reference evaluator runs with float16 arithmetic where the graph asks for it."""
    from onnx.reference import ReferenceEvaluator

    from dlc.compiler.builder import Builder
    from dlc.compiler.graph import Graph
    from dlc.compiler.onnx_export import export_graph
    from dlc.compiler.types import TensorType
    from op_harness import graph_input

    g = Graph("ln_grad_f16")
    b = Builder(g)
    t = TensorType("f16", (4, 128))
    dy, x = graph_input(g, "dy", t), graph_input(g, "x", t)
    gamma = graph_input(g, "gamma", TensorType("f16", (128,)))
    dx, dgamma = b.layer_norm_grad(dy, x, gamma, axis=-1, eps=1e-5)
    g.set_outputs({"dx": dx, "dgamma_rows": dgamma})
    feeds = {"dy": _rand((4, 128), 1).astype(np.float16), "x": (_rand((4, 128)) * 0.5 + 1000).astype(np.float16),
             "gamma": _rand((128,), 2).astype(np.float16)}
    want = get_op("layer_norm_grad").kernel(feeds["dy"], feeds["x"], feeds["gamma"], axis=-1, eps=1e-5)
    got = ReferenceEvaluator(export_graph(g, params={}, name=g.name)).run(None, feeds)
    for w, r in zip(want, got):
        assert r.dtype == np.float16 and np.isfinite(r).all()
        np.testing.assert_allclose(r.astype(np.float32), w.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_softmax_skips_the_shift_only_where_no_row_can_overflow_or_vanish():
    from dlc.compiler.ops.activation import _exp_is_safe
    from dlc.compiler.ops.registry import get_op

    sm = get_op("softmax")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((16, 4, 64, 64)) * 8).astype(np.float32)
    assert _exp_is_safe(x)
    exact = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    exact /= exact.sum(-1, keepdims=True)
    got = sm.kernel(x, axis=-1)
    # as accurate as the shifted form (which rounds x - max before exp)
    shifted = np.exp(x - x.max(-1, keepdims=True))
    shifted /= shifted.sum(-1, keepdims=True)
    assert np.abs(got - exact).max() <= np.abs(shifted - exact).max() * 1.5
    np.testing.assert_allclose(got, exact, rtol=2e-6, atol=1e-9)
    # out of range, non-finite, or another dtype: the shifted path, stable as before
    for big in (np.float32(65.0), np.float32(-65.0), np.float32(1e4), np.float32(np.inf), np.float32(np.nan)):
        y = x.copy()
        y[3, 1, 7, 9] = big
        assert not _exp_is_safe(y)
    y = x.copy()
    y[0, 0, 0, 0] = 1e4  # a row that overflows exp unshifted
    out = sm.kernel(y, axis=-1)
    np.testing.assert_array_equal(out[0, 0, 0], np.eye(64, dtype=np.float32)[0])
    assert np.isfinite(out).all()
    assert not _exp_is_safe(x.astype(np.float16)) and not _exp_is_safe(np.float32(1.0))
    assert not _exp_is_safe(x[0, :2])  # small: the shifted form, its rounding unchanged
    z = x[0, :2] - max_keepdims(x[0, :2], -1)
    np.exp(z, out=z)
    np.testing.assert_array_equal(sm.kernel(x[0, :2], axis=-1), z / sum_keepdims(z, -1))
    for axis in (0, 1, 2):  # any axis
        np.testing.assert_allclose(sm.kernel(x, axis=axis), np.exp(x) / np.exp(x).sum(axis, keepdims=True),
                                   rtol=2e-6)

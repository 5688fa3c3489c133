"""The numba-compiled row kernels (compiler/ops/jit.py, the ``dlc[jit]`` extra) against the
NumPy formulations they replace: the same values within float rounding (the row sums add
in SIMD order), the same elementwise results where no sum is involved, NaN and infinities
propagated alike, and the switch (``DLC_JIT``, numba missing) that turns them off."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from dlc.compiler.ops import jit
from dlc.compiler.ops.registry import get_op

COMPILED = jit.kernels()
needs_numba = pytest.mark.skipif(COMPILED is None, reason="the dlc[jit] extra (numba) is not installed")
RTOL = {np.float32: 2e-6, np.float64: 1e-14}


def _both(monkeypatch, fn):
    """fn() with the compiled kernels (at every size), then with NumPy's."""
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(jit, "_kernels", COMPILED)
    fast = fn()
    monkeypatch.setattr(jit, "_kernels", None)
    return fast, fn()


def _close(fast, plain, dtype, scale: float = 1.0):
    """Equal within float rounding of values of magnitude ``scale`` (the inputs': a result
    that cancels to ~0 is rounding noise of that size) or of the result's own."""
    fast, plain = (fast,) if isinstance(fast, np.ndarray) else fast, (plain,) if isinstance(plain, np.ndarray) else plain
    for f, p in zip(fast, plain, strict=True):
        assert f.dtype == p.dtype and f.shape == p.shape and f.flags.c_contiguous
        size = max(scale, np.nanmax(np.abs(p)) if np.isfinite(p).any() else 1.0)
        np.testing.assert_allclose(f, p, rtol=RTOL[dtype], atol=RTOL[dtype] * 8 * size)


def _data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


SHAPES = [(4096, 64), (16, 64, 128), (3, 1), (2, 3, 4), (5, 300)]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_grad_matches_numpy(monkeypatch, shape, dtype):
    op = get_op("softmax_grad")
    y = get_op("softmax").kernel(_data(shape, dtype, 1), axis=-1)
    dy = _data(shape, dtype, 2)
    fast, plain = _both(monkeypatch, lambda: op.kernel(dy, y, axis=-1))
    _close(fast, plain, dtype)
    # a broadcast cotangent (a mean's gradient) and a non-last axis
    wide = np.broadcast_to(_data(shape[:-1] + (1,), dtype, 3), shape)
    _close(*_both(monkeypatch, lambda: op.kernel(wide, y, axis=-1)), dtype)
    if len(shape) > 1:
        _close(*_both(monkeypatch, lambda: op.kernel(dy, y, axis=0)), dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_kernels_match_numpy(monkeypatch, shape, dtype):
    x, dy = _data(shape, dtype, 4) * 3 + 5, _data(shape, dtype, 5)  # |mean| >> std: no cancellation either way
    gamma = _data(shape[-1:], dtype, 6)
    stats, grad, both = get_op("layer_norm_stats"), get_op("layer_norm_grad_stats"), get_op("layer_norm_grad")
    fast, plain = _both(monkeypatch, lambda: stats.kernel(x, axis=-1, eps=1e-5))
    _close(fast, plain, dtype)
    xhat, inv = plain
    _close(*_both(monkeypatch, lambda: grad.kernel(dy, xhat, inv, gamma, axis=-1)), dtype)
    _close(*_both(monkeypatch, lambda: both.kernel(dy, x, gamma, axis=-1, eps=1e-5)), dtype)
    wide = np.broadcast_to(_data(shape[:-1] + (1,), dtype, 7), shape)  # dy a broadcast view
    _close(*_both(monkeypatch, lambda: grad.kernel(wide, xhat, inv, gamma, axis=-1)), dtype)
    if len(shape) == 3:  # normalised over the last two axes: gamma [T, D], rows of T*D
        g2 = _data(shape[1:], dtype, 8)
        _close(*_both(monkeypatch, lambda: both.kernel(dy, x, g2, axis=1, eps=1e-5)), dtype)


@needs_numba
def test_the_products_with_dy_are_numpys_bits(monkeypatch):
    """dgamma = dy * x̂ involves no sum: the compiled kernel computes it as NumPy does."""
    dy, xhat = _data((64, 32), np.float32, 1), _data((64, 32), np.float32, 2)
    inv, gamma = np.abs(_data((64, 1), np.float32, 3)) + 0.5, _data((32,), np.float32, 4)
    fast, plain = _both(monkeypatch, lambda: get_op("layer_norm_grad_stats").kernel(dy, xhat, inv, gamma, axis=-1))
    np.testing.assert_array_equal(fast[1], plain[1])


@needs_numba
def test_nan_and_infinity_propagate_as_in_numpy(monkeypatch):
    x = _data((6, 16), np.float32)
    x[1, 3], x[2, 5], x[3, 7] = np.nan, np.inf, -np.inf
    dy = _data((6, 16), np.float32, 1)
    dy[4, 2] = np.nan
    for fn in (lambda: get_op("layer_norm_stats").kernel(x, axis=-1, eps=1e-5),
               lambda: get_op("layer_norm_grad").kernel(dy, x, np.ones(16, np.float32), axis=-1, eps=1e-5),
               lambda: get_op("softmax_grad").kernel(dy, np.abs(x), axis=-1)):
        with np.errstate(invalid="ignore"):  # NumPy's own inf - inf
            fast, plain = _both(monkeypatch, fn)
        for f, p in zip(*(((v,) if isinstance(v, np.ndarray) else v) for v in (fast, plain))):
            np.testing.assert_array_equal(np.isnan(f), np.isnan(p))
            np.testing.assert_array_equal(np.isinf(f), np.isinf(p))
            finite = np.isfinite(p)
            np.testing.assert_allclose(f[finite], p[finite], rtol=2e-6, atol=1e-6)


@needs_numba
def test_float16_goes_through_float32_statistics(monkeypatch):
    x, dy = _data((8, 40), np.float16), _data((8, 40), np.float16, 1)
    gamma = _data((40,), np.float16, 2)
    fast, plain = _both(monkeypatch, lambda: get_op("layer_norm_grad").kernel(dy, x, gamma, axis=-1, eps=1e-5))
    for f, p in zip(fast, plain):
        assert f.dtype == np.float16
        np.testing.assert_allclose(f.astype(np.float32), p.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_dlc_jit_numpy_or_no_numba_means_numpy_alone(monkeypatch):
    monkeypatch.setattr(jit, "_kernels", jit._UNSET)
    monkeypatch.setenv("DLC_JIT", "numpy")
    assert jit.kernels() is None and jit.jit_name() == "none (NumPy)"
    monkeypatch.setattr(jit, "_kernels", jit._UNSET)
    monkeypatch.setenv("DLC_JIT", "llvm")
    with pytest.warns(RuntimeWarning, match="DLC_JIT='llvm'"):
        assert (jit.kernels() is None) == (COMPILED is None)
    monkeypatch.setattr(jit, "_kernels", jit._UNSET)
    monkeypatch.delenv("DLC_JIT")
    import dlc.compiler.ops as ops_package

    monkeypatch.delattr(ops_package, "jit_kernels", raising=False)
    monkeypatch.delitem(sys.modules, "dlc.compiler.ops.jit_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    assert jit.kernels() is None
    x = _data((4, 8), np.float32)  # and the ops run their NumPy formulation
    xhat, inv = get_op("layer_norm_stats").kernel(x, axis=-1, eps=0.0)
    np.testing.assert_allclose(xhat * (1 / inv), x - x.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_small_kernels_stay_on_numpy():
    assert jit.for_size(jit.MIN_ELEMENTS - 1) is None
    assert jit.for_size(jit.MIN_ELEMENTS) is COMPILED


def test_compiling_and_checking_never_import_numba():
    """numba loads on the first call of a compiled kernel big enough for it, not with the
    ops' modules: compiling a model to its exported training step runs without it."""
    import subprocess

    code = ("import sys, dlc\nm = dlc.load('specs/transformer.dl', mode='train')\nm.to_onnx('train')\n"
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__import__("pathlib").Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


@needs_numba
def test_eps_zero_on_a_constant_row_gives_numpys_nan_not_an_exception(monkeypatch):
    """A division by zero inside a kernel is inf / NaN (numba's error_model="numpy")."""
    x = np.ones((256, 128), np.float32)
    dy = _data((256, 128), np.float32)
    for fn in (lambda: get_op("layer_norm_stats").kernel(x, axis=-1, eps=0.0),
               lambda: get_op("layer_norm_grad").kernel(dy, x, np.ones(128, np.float32), axis=-1, eps=0.0)):
        with np.errstate(all="ignore"):
            fast, plain = _both(monkeypatch, fn)
        for f, p in zip(fast, plain):
            np.testing.assert_array_equal(np.isnan(f), np.isnan(p))
            np.testing.assert_array_equal(np.isinf(f), np.isinf(p))
            assert np.isnan(p).any() or np.isinf(p).any()


@needs_numba
def test_rows_longer_than_the_blas_sums_keep_numpys_pairwise_sums(monkeypatch):
    from dlc.compiler.ops.rows import ROW_MAX_LEN

    x = _data((4, ROW_MAX_LEN + 1), np.float32) + 3
    calls = []
    monkeypatch.setattr(COMPILED, "layer_norm_stats_rows", lambda *a: calls.append(a))
    fast, plain = _both(monkeypatch, lambda: get_op("layer_norm_stats").kernel(x, axis=-1, eps=1e-5))
    assert not calls
    for f, p in zip(fast, plain):
        np.testing.assert_array_equal(f, p)


@needs_numba
def test_a_smaller_broadcasting_cotangent_is_spread_before_the_kernel(monkeypatch):
    y = get_op("softmax").kernel(_data((3, 4, 5), np.float32), axis=-1)
    dy = _data((1, 1, 5), np.float32)
    _close(*_both(monkeypatch, lambda: get_op("softmax_grad").kernel(dy, y, axis=-1)), np.float32, scale=1.0)


def test_kernels_that_fail_to_load_fall_back_with_a_warning(monkeypatch):
    import dlc.compiler.ops as ops_package

    monkeypatch.setattr(jit, "_kernels", jit._UNSET)
    monkeypatch.delenv("DLC_JIT", raising=False)
    monkeypatch.delattr(ops_package, "jit_kernels", raising=False)

    class Unloadable:
        def find_spec(self, name, path=None, target=None):
            if name == "dlc.compiler.ops.jit_kernels":
                raise RuntimeError("cannot cache function '_row_sum': no locator available")
            return None

    monkeypatch.delitem(sys.modules, "dlc.compiler.ops.jit_kernels", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Unloadable(), *sys.meta_path])
    with pytest.warns(RuntimeWarning, match="no locator available"):
        assert jit.kernels() is None

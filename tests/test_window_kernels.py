"""The fast NumPy window kernels agree with the general ones they stand in for:
the stride-1 wide col2im (``windows.fold_wide``) with ``windows.fold``, the
convolution gradients' fast paths with the adjoint identities, and the
tiling max-pool masks with the im2col argmax (ties included)."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.ops import nn  # noqa: F401  (registers the window ops)
from dlc.compiler.ops.nn import WGRAD_ONE_GEMM_COLUMNS, conv_np, deconv_np, wgrad_np
from dlc.compiler.ops.pool import Window, flat_argmax
from dlc.compiler.ops.pool_grad import max_grad_np, max_pick_np
from dlc.compiler.ops.windows import fold, fold_wide, widen

# (x shape, kernel, pads, dilation): 1-D, 2-D, 3-D; asymmetric pads, dilation
WIDE_ROWS = [((2, 3, 9), (3,), ((1, 2),), (2,)),
             ((2, 2, 7, 6), (3, 2), ((1, 1), (0, 2)), (1, 2)),
             ((1, 2, 5, 4, 6), (2, 3, 3), ((1, 0), (0, 1), (1, 1)), (1, 1, 2))]


@pytest.mark.parametrize("shape, kernel, pads, dilation", WIDE_ROWS)
def test_fold_wide_matches_fold(shape, kernel, pads, dilation):
    rng = np.random.default_rng(0)
    n, c, size = shape[0], shape[1], shape[2:]
    padded = tuple(m + a + b for m, (a, b) in zip(size, pads))
    out = tuple(p - d * (k - 1) for p, k, d in zip(padded, kernel, dilation))
    cols = rng.standard_normal((n, c, *kernel, *out))
    want = fold(cols, size, kernel, (1,) * len(size), pads, dilation, cols.dtype)
    # the wide layout of each kernel offset's [N, C, *out] slice
    wide = np.stack([widen(cols[(slice(None), slice(None), *off)], padded)
                     for off in np.ndindex(*kernel)], axis=2)
    np.testing.assert_allclose(fold_wide(wide, size, kernel, pads, dilation), want, rtol=1e-12)


def test_widen_puts_outputs_at_their_flat_positions_and_zeros_in_the_gaps():
    y = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3)
    wide = widen(y, (4, 5))  # rows of 5: outputs at 0..2 and 5..7, L = 8
    np.testing.assert_array_equal(wide[0, 0], [1, 2, 3, 0, 0, 4, 5, 6])


# (x shape, w shape, stride, pads, dilation, groups): stride 1 takes the wide col2im, stride 2 the
# general one; the last two have Cg*prod(k) >= WGRAD_ONE_GEMM_COLUMNS (the weight gradient as one GEMM)
CONV_ROWS = [((2, 16, 6, 7), (4, 8, 3, 3), (1, 1), ((1, 1), (1, 0)), (1, 1), 2),
             ((2, 9, 7, 6), (3, 9, 3, 3), (2, 1), ((0, 1), (1, 1)), (1, 2), 1),((2, 4, 9), (6, 2, 3), (1,), ((2, 1),), (2,), 2),
             ((2, 3, 7, 6), (4, 3, 3, 2), (1, 1), ((1, 1), (0, 1)), (1, 2), 1),
             ((2, 1, 8, 8), (3, 1, 5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), 1),
             ((2, 4, 4, 5, 4), (4, 1, 2, 3, 2), (1, 1, 1), ((1, 0), (1, 1), (0, 1)), (1, 1, 2), 4),
             ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), ((1, 1), (0, 1)), (1, 2), 1)]


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups", CONV_ROWS)
def test_conv_gradients_are_the_adjoints_of_the_conv(xs, ws, stride, pads, dilation, groups):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    assert (ws[1] * np.prod(ws[2:]) >= WGRAD_ONE_GEMM_COLUMNS) == (xs[1] in (16, 9))
    y = conv_np(x, w, stride, pads, dilation, groups)
    dy = rng.standard_normal(y.shape)
    dx = deconv_np(dy, w, xs[2:], stride, pads, dilation, groups)
    dw = wgrad_np(x, dy, ws[2:], stride, pads, dilation, groups)
    assert dx.shape == x.shape and dw.shape == w.shape
    # <conv(x, w), dy> = <x, grad_input(dy, w)> = <w, grad_weight(x, dy)>, and each is linear:
    # so each equals the conv's Jacobian-transpose product checked coordinate by coordinate
    inner = float((y * dy).sum())
    assert float((x * dx).sum()) == pytest.approx(inner, rel=1e-10)
    assert float((w * dw).sum()) == pytest.approx(inner, rel=1e-10)
    e = np.zeros_like(x)
    e.flat[5] = 1.0
    assert dx.flat[5] == pytest.approx(float((conv_np(e, w, stride, pads, dilation, groups) * dy).sum()), rel=1e-10)
    e = np.zeros_like(w)
    e.flat[3] = 1.0
    assert dw.flat[3] == pytest.approx(float((conv_np(x, e, stride, pads, dilation, groups) * dy).sum()), rel=1e-10)


# tiling windows of every rank, on data full of ties (rounded ReLU outputs: many windows all zero)
TILE_ROWS = [((2, 3, 8), (2,)), ((2, 3, 6, 4), (2,)), ((2, 2, 6, 9), (3,)), ((1, 2, 4, 6, 2), (2, 3, 1))]


@pytest.mark.parametrize("shape, kernel", TILE_ROWS)
def test_tiling_max_pool_gradient_matches_the_scatter_through_the_argmax(shape, kernel):
    rng = np.random.default_rng(2)
    x = np.maximum(np.round(rng.standard_normal(shape) * 2), 0).astype(np.float32)
    win = Window("max_pool", len(shape) - 2, shape[2:], kernel)
    assert win.tiles()
    dy = rng.standard_normal((*shape[:2], *win.out)).astype(np.float32)
    flat = flat_argmax(x, win).ravel()  # the general path's argmax (first maximum, row-major)
    want = np.bincount(flat, weights=dy.ravel(), minlength=x.size).reshape(x.shape)
    np.testing.assert_array_equal(max_grad_np(x, dy, win), want.astype(np.float32))
    t = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(max_pick_np(x, t, win), t.reshape(-1)[flat].reshape(dy.shape))

"""The fast NumPy window kernels agree with what they stand in for: the
stride-1 convolution input gradient by rows with the general col2im, every
conv gradient with the adjoint identities, and the tiling max-pool masks with
the im2col argmax (ties included)."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.ops import conv_kernels, nn  # noqa: F401  (nn registers the window ops)
from dlc.compiler.ops.conv_kernels import conv_np, deconv_np, deconv_rows_np, wgrad_np
from dlc.compiler.ops.pool import Window, flat_argmax, max_np
from dlc.compiler.ops.pool_grad import max_grad_np, max_pick_np
from dlc.compiler.ops.windows import fold, im2col, windows, windows_in_two_steps

# (x shape, w shape, stride, pads, dilation, groups): stride 1 takes the input gradient by rows,
# stride 2 the general col2im; the first two have Cg*prod(k) >= conv_kernels.WGRAD_ONE_GEMM_COLUMNS (the
# weight gradient as one GEMM over the batch)
CONV_ROWS = [((2, 16, 6, 7), (4, 8, 3, 3), (1, 1), ((1, 1), (1, 0)), (1, 1), 2),
             ((2, 9, 7, 6), (3, 9, 3, 3), (2, 1), ((0, 1), (1, 1)), (1, 2), 1),
             ((2, 4, 9), (6, 2, 3), (1,), ((2, 1),), (2,), 2),
             ((2, 3, 7, 6), (4, 3, 3, 2), (1, 1), ((1, 1), (0, 1)), (1, 2), 1),
             ((2, 1, 8, 8), (3, 1, 5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), 1),
             ((2, 4, 4, 5, 4), (4, 1, 2, 3, 2), (1, 1, 1), ((1, 0), (1, 1), (0, 1)), (1, 1, 2), 4),
             ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), ((1, 1), (0, 1)), (1, 2), 1)]
STRIDE_1 = [row for row in CONV_ROWS if set(row[2]) == {1}]


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups", CONV_ROWS)
@pytest.mark.parametrize("path", ["by rows", "a chunk of one example at a time"])
def test_the_conv_by_rows_or_by_chunks_equals_one_gemm_over_the_whole_im2col(xs, ws, stride, pads, dilation, groups,
                                                                               path, monkeypatch):
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    out = tuple((m + a + b - d * (k - 1) - 1) // s + 1 for m, (a, b), k, d, s in zip(xs[2:], pads, ws[2:], dilation, stride))
    cols = im2col(x, ws[2:], stride, pads, dilation, groups, out)
    want = np.matmul(w.reshape(groups, ws[0] // groups, -1), cols).reshape(xs[0], ws[0], *out)
    monkeypatch.setattr(conv_kernels, "ROWS_MIN_COLUMNS", 1 if path == "by rows" else 10 ** 9)
    monkeypatch.setattr(conv_kernels, "IM2COL_CHUNK_BYTES", 1)
    np.testing.assert_allclose(conv_np(x, w, stride, pads, dilation, groups), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups", CONV_ROWS)
def test_weight_gradient_as_one_gemm_over_the_batch_equals_the_sum_per_example(xs, ws, stride, pads, dilation,
                                                                                groups, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs)
    dy = rng.standard_normal(conv_np(x, np.zeros(ws), stride, pads, dilation, groups).shape)
    monkeypatch.setattr(conv_kernels, "WGRAD_ONE_GEMM_COLUMNS", 1)
    one = wgrad_np(x, dy, ws[2:], stride, pads, dilation, groups)
    monkeypatch.setattr(conv_kernels, "WGRAD_ONE_GEMM_COLUMNS", 10 ** 9)
    monkeypatch.setattr(conv_kernels, "IM2COL_CHUNK_BYTES", 1)  # and the im2col matrix one example at a time
    per_example = wgrad_np(x, dy, ws[2:], stride, pads, dilation, groups)
    assert one.shape == ws
    np.testing.assert_allclose(one, per_example, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups", STRIDE_1)
@pytest.mark.parametrize("batch_inside", [False, True])
def test_input_gradient_by_rows_matches_the_general_col2im(xs, ws, stride, pads, dilation, groups, batch_inside,
                                                           monkeypatch):
    # by rows with a batched GEMM per example, or with the batch inside one GEMM per group
    monkeypatch.setattr(conv_kernels, "DECONV_BATCH_INSIDE_ROWS", 1 if batch_inside else 10 ** 9)
    monkeypatch.setattr(conv_kernels.gemm, "goes_to_mkl", lambda *shape_and_dtype: True)  # (with MKL or without)
    rng = np.random.default_rng(4)
    w = rng.standard_normal(ws)
    out = tuple(m + a + b - d * (k - 1) for m, (a, b), k, d in zip(xs[2:], pads, ws[2:], dilation))
    dy = rng.standard_normal((xs[0], ws[0], *out))
    n, o, cg = xs[0], ws[0], ws[1]
    wt = w.reshape(groups, o // groups, -1).transpose(0, 2, 1)
    cols = np.matmul(wt, dy.reshape(n, groups, o // groups, -1)).reshape(n, groups * cg, *ws[2:], *out)
    want = fold(cols, xs[2:], ws[2:], stride, pads, dilation, dy.dtype)
    np.testing.assert_allclose(deconv_rows_np(dy, w, xs[2:], pads, dilation, groups), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups", CONV_ROWS)
def test_conv_gradients_are_the_adjoints_of_the_conv(xs, ws, stride, pads, dilation, groups):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
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
    x.flat[[1, 3, 4]] = np.nan  # a NaN is a window's maximum (np.argmax's rule), the first one wins
    win = Window("max_pool", len(shape) - 2, shape[2:], kernel)
    assert win.tiles()
    dy = rng.standard_normal((*shape[:2], *win.out)).astype(np.float32)
    flat = flat_argmax(x, win).ravel()  # the general path's argmax (first maximum, row-major)
    want = np.bincount(flat, weights=dy.ravel(), minlength=x.size).reshape(x.shape)
    np.testing.assert_array_equal(max_grad_np(x, dy, win), want.astype(np.float32))
    t = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(max_pick_np(x, t, win), t.reshape(-1)[flat].reshape(dy.shape))
    # the forward, one window axis at a time: the maximum of each window (NaN wins)
    np.testing.assert_array_equal(max_np(x, win), x.reshape(-1)[flat].reshape(dy.shape))


def test_tiling_max_pool_gradient_writes_plus_zero_off_the_maximum_whatever_dy_holds():
    """Not masks * dy: 0 * inf is NaN and 0 * -1 is -0 at positions that are not the maximum."""
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    win = Window("max_pool", 2, (2, 2), (2,))
    for d in (np.inf, -1.0, np.nan):
        got = max_grad_np(x, np.full((1, 1, 1, 1), d, np.float32), win)
        np.testing.assert_array_equal(got.ravel()[:3], [0, 0, 0])
        assert not np.signbit(got.ravel()[:3]).any()
        np.testing.assert_array_equal(got.ravel()[3], np.float32(d))


# (padded image shape, kernel, stride, dilation): 2-D and 3-D, strides and dilations per axis
TWO_STEP_ROWS = [((2, 3, 9, 8), (3, 2), (1, 1), (1, 1)),
                 ((2, 2, 11, 9), (3, 3), (2, 1), (1, 2)),
                 ((1, 2, 7, 8, 9), (2, 3, 2), (1, 2, 3), (2, 1, 2))]


@pytest.mark.parametrize("shape, kernel, stride, dilation", TWO_STEP_ROWS)
def test_windows_in_two_steps_copies_the_window_view_exactly(shape, kernel, stride, dilation):
    xp = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    out = tuple((n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(shape[2:], kernel, stride, dilation))
    got = windows_in_two_steps(xp, kernel, stride, dilation, out)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, windows(xp, kernel, stride, dilation, out))
    k = len(kernel)
    by_channel = windows_in_two_steps(xp, kernel, stride, dilation, out, by_channel=True)
    assert by_channel.flags.c_contiguous
    want = windows(xp, kernel, stride, dilation, out).transpose(1, *range(2, 2 + k), 0, *range(2 + k, 2 + 2 * k))
    np.testing.assert_array_equal(by_channel, want)  # [C, *kernel, N, *out]

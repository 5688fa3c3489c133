"""compiler/ops/blas_mkl.py (MKL's cblas ?gemm on NumPy buffers) and its place in
compiler/ops/gemm.py's rules: every layout and batch form computes the product on
both paths (each forced explicitly), deterministically; what MKL cannot take in
place stays on NumPy; ``DLC_BLAS=numpy`` and a missing library give NumPy alone;
threadpoolctl's limits (the training loop's ``DLC_THREADS``) bound MKL's threads."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dlc.compiler.ops import blas_mkl, gemm

MKL = blas_mkl.load()
needs_mkl = pytest.mark.skipif(MKL is None, reason="the dlc[mkl] extra (libmkl_rt) is not installed")


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _exact(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def _operand(shape, layout, seed, dtype):
    """A 2-D operand of ``shape`` stored C-order, transposed (F-order view), or as a
    row / column slice of a wider array (leading dimension > the row)."""
    r, c = shape
    if layout == "c":
        return _rand((r, c), seed, dtype)
    if layout == "t":
        return _rand((c, r), seed, dtype).T
    if layout == "c-slice":
        return _rand((r, c + 5), seed, dtype)[:, 2:2 + c]
    assert layout == "t-slice"
    return _rand((c, r + 3), seed, dtype)[:, 1:1 + r].T


LAYOUTS = ["c", "t", "c-slice", "t-slice"]
PATHS = ["numpy", "mkl"]


@pytest.fixture
def path(request, monkeypatch):
    """Force one path: NumPy's BLAS alone, or MKL for every product it supports."""
    if request.param == "mkl":
        if MKL is None:
            pytest.skip("the dlc[mkl] extra (libmkl_rt) is not installed")
        monkeypatch.setattr(gemm, "_MKL", MKL)
        monkeypatch.setattr(gemm, "_MKL_MIN_MKN", 0)
    else:
        monkeypatch.setattr(gemm, "_MKL", None)
    return request.param


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("la", LAYOUTS)
@pytest.mark.parametrize("lb", LAYOUTS)
def test_every_2d_layout_computes_the_product_on_both_paths(path, dtype, la, lb):
    for m, k, n in [(37, 29, 13), (1, 17, 9), (23, 1, 11), (19, 21, 1), (300, 200, 7)]:
        a, b = _operand((m, k), la, 1, dtype), _operand((k, n), lb, 2, dtype)
        if path == "mkl":
            assert MKL.supports(a, b)
        got = gemm.gemm_2d(a, b)
        assert got.shape == (m, n) and got.dtype == dtype and got.flags.c_contiguous
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, _exact(a, b), rtol=tol * 10, atol=tol * np.sqrt(k) * 10)
        np.testing.assert_array_equal(got, gemm.gemm_2d(a.copy(order="K"), b.copy(order="K")))  # same bits


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("tb", [False, True])
def test_batched_rows_times_a_matrix_on_both_paths(path, tb):
    x = _rand((4, 6, 10))
    w = _rand((12, 10), 1).T if tb else _rand((10, 12), 1)
    got = gemm.matmul(x, w)
    assert got.shape == (4, 6, 12) and got.flags.c_contiguous
    np.testing.assert_allclose(got, _exact(x, w), rtol=1e-5, atol=1e-5)
    # the weight gradient of that product: one 2-D GEMM on the collapsed rows (a transposed view)
    dy = _rand((4, 6, 12), 2)
    dw = gemm.matmul(x.reshape(-1, 10).T, dy.reshape(-1, 12))
    np.testing.assert_allclose(dw, np.einsum("btk,btn->kn", x.astype(np.float64), dy), rtol=1e-5, atol=1e-4)
    # batch @ batch stays NumPy's broadcast matmul on both paths
    y = _rand((4, 10, 3), 3)
    np.testing.assert_array_equal(gemm.matmul(x, y), np.matmul(x, y))


@needs_mkl
def test_what_mkl_cannot_take_in_place_stays_on_numpy(monkeypatch):
    monkeypatch.setattr(gemm, "_MKL_MIN_MKN", 0)
    a, b = _rand((8, 6)), _rand((6, 5), 1)
    assert MKL.supports(a[::2], b)  # every other row: a leading dimension of 2 rows
    np.testing.assert_allclose(gemm.gemm_2d(a[::2], b), _exact(a[::2], b), rtol=1e-5, atol=1e-5)
    cases = [(a, b[:, ::2]), (a[:, ::2], b[:3]), (a.astype(np.float16), b.astype(np.float16)),
             (a.astype(np.int64), b.astype(np.int64)), (a, b.astype(np.float64)),
             (np.broadcast_to(a[:1], (8, 6)), b), (a[:, :0], b[:0]), (a[::-1], b)]
    for x, y in cases:
        assert not MKL.supports(x, y)
        np.testing.assert_array_equal(gemm.gemm_2d(x, y), np.matmul(x, y))


@needs_mkl
def test_the_shape_rule_keeps_small_products_on_numpy_and_sends_big_ones_to_mkl(monkeypatch):
    calls = []
    real = MKL.gemm
    monkeypatch.setattr(MKL, "gemm", lambda a, b, **kw: calls.append(a.shape + b.shape[1:]) or real(a, b, **kw))
    monkeypatch.setattr(gemm, "_MKL", MKL)
    small_a, small_b = _rand((64, 512)), _rand((512, 10), 1)  # the MLP's last layer: NumPy is faster
    np.testing.assert_array_equal(gemm.gemm_2d(small_a, small_b), np.matmul(small_a, small_b))
    big_a, big_b = _rand((1100, 1000)), _rand((1000, 7), 2)  # the GCN's propagation: MKL, unpadded
    got = gemm.gemm_2d(big_a, big_b)
    assert calls == [(1100, 1000, 7)]
    np.testing.assert_allclose(got, _exact(big_a, big_b), rtol=1e-4, atol=1e-3)
    assert gemm.blas_name().startswith("MKL (libmkl_rt")


@needs_mkl
def test_a_narrow_product_with_a_transposed_operand_reads_it_in_stored_order(monkeypatch):
    calls = []
    real = MKL.gemm
    monkeypatch.setattr(MKL, "gemm", lambda a, b, **kw: calls.append((a.shape, b.shape)) or real(a, b, **kw))
    monkeypatch.setattr(gemm, "_MKL", MKL)
    stored, dy = _rand((1000, 1100)), _rand((1000, 7), 1)  # the GCN's A^T @ dY
    got = gemm.gemm_2d(stored.T, dy)
    assert calls == [((7, 1000), (1000, 1100))]  # (dy^T @ A)^T: A in its row order
    assert got.shape == (1100, 7) and got.flags.c_contiguous
    np.testing.assert_allclose(got, _exact(stored.T, dy), rtol=1e-4, atol=1e-3)
    wide = _rand((1000, 72), 2)  # wider than _SWAP_MAX_N: as written
    gemm.gemm_2d(stored.T, wide)
    assert calls[-1] == ((1100, 1000), (1000, 72))


@needs_mkl
def test_gemm_writes_into_or_accumulates_onto_a_given_buffer():
    a, b = _rand((7, 5)), _rand((5, 6), 1).T.copy().T  # b: a transposed view
    wide = _rand((7, 10), 2)
    into = wide[:, 3:9]  # rows of a wider array: a leading dimension of 10
    before = into.copy()
    assert MKL.gemm(a, b, out=into, beta=1.0) is into
    np.testing.assert_allclose(into, before + _exact(a, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(wide[:, :3], _rand((7, 10), 2)[:, :3])  # the rest untouched
    c = np.full((7, 6), np.nan, np.float32)
    assert MKL.gemm(a, b, out=c) is c  # beta = 0: out's old values (NaN here) are not read
    np.testing.assert_array_equal(c, MKL.gemm(a, b))
    assert MKL.gemm(a[:, ::2], b[::2]) is None  # no unit stride: nothing computed
    for bad in (np.empty((7, 6), np.float64), np.empty((6, 7), np.float32).T, np.empty((7, 5), np.float32)):
        with pytest.raises(ValueError, match="out must be"):
            MKL.gemm(a, b, out=bad)


@needs_mkl
def test_gemm_refuses_buffers_it_must_not_write_and_operands_it_cannot_read():
    a, b = _rand((7, 5)), _rand((5, 6), 1)
    frozen = np.zeros((7, 6), np.float32)
    frozen.flags.writeable = False
    immutable = np.frombuffer(bytes(7 * 6 * 4), np.float32).reshape(7, 6)  # a bytes object's memory
    for bad in (frozen, immutable, [[0.0] * 6] * 7):
        with pytest.raises(ValueError, match="out must be"):
            MKL.gemm(a, b, out=bad)
    assert not immutable.any()
    square = _rand((6, 6), 2)
    for alias in (square, square[:, :]):  # out = a, or a view of it: MKL would read its own writes
        with pytest.raises(ValueError, match="overlap"):
            MKL.gemm(square, _rand((6, 6), 3), out=alias, beta=1.0)
    assert MKL.gemm(a, _rand((4, 6), 4)) is None  # inner dims differ: nothing read past b

    class NotAnArray:  # array-like attributes, no NumPy array struct behind them
        dtype, ndim, shape, strides, itemsize, size = np.dtype(np.float32), 2, (5, 6), (24, 4), 4, 30

    assert MKL.gemm(a, NotAnArray()) is None and not MKL.supports(NotAnArray(), b)
    row = np.zeros(6, np.float32)
    assert MKL.gemm(a[:1], b, out=row[None, :]) is not None  # one row: its row stride is free
    np.testing.assert_allclose(row, _exact(a[:1], b)[0], rtol=1e-5, atol=1e-5)


def test_data_pointers_are_read_right_for_views():
    base = _rand((6, 8))
    for x in (base, base[2:, 3:], base.T, base[::2], _rand((3, 4), dtype=np.float64)[1:]):
        got = blas_mkl._pointer(x)
        assert getattr(got, "value", got) == x.ctypes.data


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_matmul_add_on_both_paths(path):
    a, b = _rand((9, 7)), _rand((7, 5), 1)
    rows = _rand((3, 9, 7), 2)
    for x, c in [(a, _rand((9, 5), 3)), (a, _rand((5,), 4)), (rows, _rand((3, 9, 5), 5)), (rows, _rand((9, 1), 6)),
                 (a, _rand((9, 12), 7)[:, 2:7])]:
        got = gemm.matmul_add(x, b, c)
        assert got.shape == x.shape[:-1] + (5,) and got.flags.c_contiguous
        np.testing.assert_allclose(got, _exact(x, b) + c, rtol=1e-5, atol=1e-5)
        if path == "numpy":  # the two ops' own computation
            np.testing.assert_array_equal(got, np.matmul(x, b) + c)


@needs_mkl
def test_mkl_gives_the_same_bits_whatever_the_buffer_alignment():
    a, b = _rand((257, 300)), _rand((300, 129), 1)
    want = MKL.gemm(a, b)
    for offset in range(1, 16):  # a copy starting `offset` floats into a fresh buffer
        buf_a = np.empty(a.size + offset, np.float32)
        buf_b = np.empty(b.size + offset, np.float32)
        a2 = buf_a[offset:].reshape(a.shape)
        b2 = buf_b[offset:].reshape(b.shape)
        a2[...] = a
        b2[...] = b
        np.testing.assert_array_equal(MKL.gemm(a2, b2), want)


def test_dlc_blas_numpy_and_a_missing_library_mean_numpy_alone(monkeypatch):
    monkeypatch.delenv("DLC_BLAS", raising=False)  # whatever the run's environment says
    installed = blas_mkl.load() is not None
    monkeypatch.setenv("DLC_BLAS", "numpy")
    assert blas_mkl.load() is None
    monkeypatch.setattr(gemm, "_MKL", None)
    assert gemm.blas_name() == "NumPy's BLAS"
    monkeypatch.setenv("DLC_BLAS", "openblas")
    with pytest.warns(RuntimeWarning, match="DLC_BLAS='openblas'"):
        assert (blas_mkl.load() is not None) == installed
    monkeypatch.delenv("DLC_BLAS")
    monkeypatch.setattr(blas_mkl, "library_path", lambda: None)
    assert blas_mkl.load() is None
    monkeypatch.setattr(blas_mkl, "library_path", lambda: "/nonexistent/libmkl_rt.so.3")
    assert blas_mkl.load() is None


@needs_mkl
def test_threadpoolctl_limits_bound_mkl_threads():
    """The training loop's ``threadpool_limits(training_threads(), "blas")`` reaches MKL:
    at 1 thread a big product spawns no thread and uses about one core."""
    from threadpoolctl import threadpool_info, threadpool_limits

    a = _rand((1500, 1500))
    with threadpool_limits(limits=1, user_api="blas"):
        mkl = [i for i in threadpool_info() if i["internal_api"] == "mkl"]
        assert mkl and all(i["num_threads"] == 1 for i in mkl)
        MKL.gemm(a, a)
        # OpenMP workers of an earlier multi-threaded call spin for KMP_BLOCKTIME (200 ms) before sleeping
        time.sleep(0.3)
        tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(3):
            MKL.gemm(a, a)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if tasks is not None:
            assert len(os.listdir("/proc/self/task")) == tasks
        assert cpu < 1.3 * wall
    with threadpool_limits(limits=2, user_api="blas"):
        assert all(i["num_threads"] == 2 for i in threadpool_info() if i["internal_api"] == "mkl")


def _gemm_cases():
    import test_ops

    return [c for c in test_ops.GRAD_CASES if c[1].__name__.lower().startswith("matmul") or c[0].startswith("matmul")]


@needs_mkl
@pytest.mark.parametrize("case", _gemm_cases(), ids=[c[0] for c in _gemm_cases()])
def test_matmul_gradients_match_finite_differences_on_mkl(case, monkeypatch):
    """The op-sample gradient checks of matmul / matmul_t with every product on MKL
    (the samples are below the shape rule's threshold, which would keep them on NumPy)."""
    import test_ops

    calls = []
    real = MKL.gemm
    monkeypatch.setattr(MKL, "gemm", lambda a, b, **kw: calls.append(1) or real(a, b, **kw))
    monkeypatch.setattr(gemm, "_MKL", MKL)
    monkeypatch.setattr(gemm, "_MKL_MIN_MKN", 0)
    test_ops.test_gradient_matches_finite_differences(case)
    if any(len(arg.shape) == 2 for arg in case[3].inputs):  # batch @ batch stays on NumPy's matmul
        assert calls  # the check really ran on MKL

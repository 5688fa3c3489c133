"""The formulation rules of compiler/ops/gemm.py (how matmul / matmul_t reach
BLAS) and the one-GEMM weight gradient of a batched ``x @ W``: every rule computes
the product it replaces (checked against float64), deterministically, and applies
exactly where its shape / stride condition holds."""
from __future__ import annotations

import collections

import numpy as np

from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.ops import gemm
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan

from op_harness import graph_input, graph_param


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _exact(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def test_a_batch_of_rows_times_a_matrix_is_one_gemm_on_the_collapsed_rows(monkeypatch):
    x, w = _rand((3, 5, 8)), _rand((6, 8), 1)
    seen = []
    real = gemm.gemm_2d
    monkeypatch.setattr(gemm, "gemm_2d", lambda a, b: seen.append((a.shape, b.shape)) or real(a, b))
    got = gemm.matmul(x, w.T)  # dy @ W^T: b a transposed view
    assert seen == [((15, 8), (8, 6))]
    assert got.shape == (3, 5, 6) and got.flags.c_contiguous
    np.testing.assert_allclose(got, _exact(x, w.T), rtol=1e-5, atol=1e-5)
    # a strided batch keeps NumPy's own broadcast matmul (a reshape would copy it)
    seen.clear()
    strided = np.swapaxes(_rand((5, 3, 8)), 0, 1)
    np.testing.assert_allclose(gemm.matmul(strided, w.T), _exact(strided, w.T), rtol=1e-5, atol=1e-5)
    assert seen == []


def test_batched_products_with_transposed_matrices_on_the_right_are_unchanged_by_the_copy(monkeypatch):
    q, k = _rand((2, 7, 3, 5)), _rand((2, 9, 3, 5), 1)  # [B, T, H, D]
    a, b = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1)  # q @ k^T, both views
    seen = []
    real = np.matmul
    monkeypatch.setattr(gemm.np, "matmul", lambda x, y: seen.append(y.flags.c_contiguous) or real(x, y))
    got = gemm.matmul(a, b)
    assert seen == [True]  # b's transposed matrices copied to C order first
    monkeypatch.setattr(gemm.np, "matmul", real)
    np.testing.assert_array_equal(got, np.matmul(a, b.copy()))
    np.testing.assert_allclose(got, _exact(a, b), rtol=1e-5, atol=1e-5)
    shared = np.broadcast_to(_rand((9, 5), 2).T, (2, 3, 5, 9))  # transposed, batch strides 0
    np.testing.assert_array_equal(gemm.matmul(a, shared), np.matmul(a, shared))  # a broadcast b: not copied


def test_few_output_columns_off_a_multiple_of_8_are_padded_on_big_products(monkeypatch):
    monkeypatch.setattr(gemm, "_MKL", None)  # NumPy's BLAS (with dlc[mkl], MKL takes these products: test_blas_mkl.py)
    a, b = _rand((1100, 1000)), _rand((1000, 7), 1)  # M*K >= 2**20
    got = gemm.gemm_2d(a, b)
    assert got.shape == (1100, 7) and got.flags.c_contiguous
    np.testing.assert_allclose(got, _exact(a, b), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got, gemm.gemm_2d(a, b))  # deterministic
    # a transposed operand (A^T @ dZ) is padded alike
    np.testing.assert_allclose(gemm.gemm_2d(a.T, _rand((1100, 7), 2)), _exact(a.T, _rand((1100, 7), 2)),
                               rtol=1e-4, atol=1e-3)
    # small products, multiples of 8 and integer matrices go straight to np.matmul, bit for bit
    small_a, small_b = _rand((64, 512)), _rand((512, 10), 3)
    np.testing.assert_array_equal(gemm.gemm_2d(small_a, small_b), np.matmul(small_a, small_b))
    b16 = _rand((1000, 16), 4)
    np.testing.assert_array_equal(gemm.gemm_2d(a, b16), np.matmul(a, b16))


def test_the_weight_gradient_of_a_batched_product_is_one_2d_gemm():
    g = Graph("t")
    b = Builder(g)
    x = graph_input(g, "x", TensorType("f32", (3, 5, 4)))
    w = graph_param(g, "w", TensorType("f32", (4, 2)))
    loss = b.sum(b.mul(b.matmul(x, w), b.matmul(x, w)))
    g.set_output("loss", loss)
    dw = backprop(g, loss, ["w"], builder=b)["w"]
    g.set_output("dw", dw)
    g.verify()
    # the two matmul uses of w (cse merges them later) each give one 2-D dW GEMM on reshaped rows
    grads = [n for n in g.nodes() if g.op(n) == "matmul" and g.type_of(g[n].inputs[0]).rank == 2]
    assert len(grads) == 2
    for n in grads:
        assert g.type_of(g[n].inputs[0]).shape == (4, 15) and g.type_of(g[n].inputs[1]).shape == (15, 2)
    xv, wv = _rand((3, 5, 4)), _rand((4, 2), 1)
    got = Plan(g).run({"x": xv}, {"w": wv})["dw"]
    y = xv.astype(np.float64) @ wv
    want = 2 * np.einsum("bmk,bmn->kn", xv.astype(np.float64), y)  # d sum(y*y) / dy = 2y
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # at -O2 each becomes one matmul_t(ta) on the reshaped rows, with no sum_to left
    opt = optimize(g, 2, "numpy", check=True)
    kinds = collections.Counter(opt.op(n) for n in opt.nodes())
    assert kinds["sum_to"] == 0 and kinds["matmul_t"] == 1 and kinds["reshape"] == 2
    np.testing.assert_array_equal(Plan(opt).run({"x": xv}, {"w": wv})["dw"], got)


def test_goes_to_mkl_answers_as_gemm_2d_chooses(monkeypatch):
    big = (30, 80, 64 * 140)  # LeNet's second conv input gradient with the batch inside
    assert not gemm.goes_to_mkl(6, 25, 784, np.float32)  # under the threshold
    assert not gemm.goes_to_mkl(*big, np.int32)  # MKL multiplies floats only
    assert gemm.goes_to_mkl(*big, np.float32) == (gemm._MKL is not None)
    if gemm._MKL is not None:  # the answer is gemm_2d's actual choice, below and above the threshold
        calls = []
        real = gemm._MKL.gemm
        monkeypatch.setattr(gemm._MKL, "gemm", lambda a, b, **kw: calls.append(a.shape) or real(a, b, **kw))
        for m, k, n in ((6, 25, 784), (128, 128, 128), (128, 128, 129), big):
            calls.clear()
            gemm.gemm_2d(np.ones((m, k), np.float32), np.ones((k, n), np.float32))
            assert bool(calls) == gemm.goes_to_mkl(m, k, n, np.float32), (m, k, n)
    monkeypatch.setattr(gemm, "_MKL", None)  # DLC_BLAS=numpy, or no dlc[mkl]
    assert not gemm.goes_to_mkl(*big, np.float32)

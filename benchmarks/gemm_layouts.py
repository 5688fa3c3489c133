"""NumPy GEMM formulations at the exact shapes of the mlp / transformer / gcn training
steps, against ``torch.matmul`` (when importable), on one thread.

    python benchmarks/gemm_layouts.py            # every case
    python benchmarks/gemm_layouts.py --only gcn --rounds 9

Each case is one product the NumPy training step computes (its operands in the
layout the interpreter hands the kernel); each variant is one way NumPy can compute
it, all with the same result.  The variants of a case run round-robin in short
bursts, so a noisy neighbour slows them alike; the table prints the fastest round
(µs) and its ratio to torch.  This is the evidence behind the rules in
compiler/ops/gemm.py (which formulation the matmul kernels pick, by shape and
strides, never by timing).  With the ``dlc[mkl]`` extra each 2-D case also times
MKL's ``cblas_sgemm`` on the same views (compiler/ops/blas_mkl.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _rng(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mkl():
    """compiler/ops/blas_mkl.py's binding, or None without the ``dlc[mkl]`` extra (or with DLC_BLAS=numpy)."""
    from dlc.compiler.ops import blas_mkl
    return blas_mkl.load()


MKL = _mkl()


def _swap(x):
    return np.swapaxes(x, -1, -2)


def two_d(m, k, n, ta=False, tb=False):
    """``op(a) @ op(b)`` for C-contiguous stored operands (a stored [k, m] when ta, b [n, k] when tb)."""
    a = _rng((k, m) if ta else (m, k))
    b = _rng((n, k) if tb else (k, n), 1)
    oa, ob = (a.T if ta else a), (b.T if tb else b)
    v = {"views a@b": lambda: oa @ ob,
         "(b'.T@a'.T).T": lambda: np.ascontiguousarray((ob.T @ oa.T).T),
         "copy op(a), op(b)": lambda: np.ascontiguousarray(oa) @ np.ascontiguousarray(ob)}
    if ta or tb:
        v["F-order copies"] = lambda: np.asfortranarray(oa) @ np.asfortranarray(ob)
    out = np.empty((m, n), np.float32)
    v["views, out="] = lambda: np.matmul(oa, ob, out=out)
    if MKL is not None:
        v["MKL cblas_sgemm (views)"] = lambda: MKL.gemm(oa, ob)
    return v, (oa, ob)


def batch_by_2d(bt, k, n, tb=False):
    """``x [B, T, K] @ op(w)``: broadcast matmul against one GEMM on the collapsed rows."""
    x = _rng(bt + (k,))
    w = _rng((n, k) if tb else (k, n), 1)
    ow = w.T if tb else w
    v = {"3-D matmul (broadcast)": lambda: x @ ow,
         "reshape to 2-D": lambda: (x.reshape(-1, k) @ ow).reshape(bt + (n,)),
         "einsum": lambda: np.einsum("btk,kn->btn", x, ow, optimize=True)}
    if MKL is not None:
        v["MKL on the 2-D rows"] = lambda: MKL.gemm(x.reshape(-1, k), ow).reshape(bt + (n,))
    return v, (x, ow)


def weight_grad(bt, m, n):
    """``dW = sum_b x[b].T @ dy[b]``: batched ta-matmul + sum against one GEMM with K = B*T."""
    x, dy = _rng(bt + (m,)), _rng(bt + (n,), 1)
    v = {"batched .T@ + sum(0)": lambda: (_swap(x) @ dy).sum(0),
         "reshape to 2-D, .T@": lambda: x.reshape(-1, m).T @ dy.reshape(-1, n),
         "einsum": lambda: np.einsum("btm,btn->mn", x, dy, optimize=True),
         "tensordot": lambda: np.tensordot(x, dy, axes=([0, 1], [0, 1]))}
    if MKL is not None:
        v["MKL on the 2-D rows, .T@"] = lambda: MKL.gemm(x.reshape(-1, m).T, dy.reshape(-1, n))
    return v, (x.reshape(-1, m).T, dy.reshape(-1, n))


def heads(shape_a, strides_a, shape_b, strides_b):
    """A batched 4-D product on strided views (the attention scores / context)."""
    def strided(shape, perm_from, seed):
        base = _rng(perm_from[0], seed)
        return np.transpose(base, perm_from[1])
    a, b = strided(shape_a, strides_a, 0), strided(shape_b, strides_b, 1)
    assert a.shape == shape_a and b.shape == shape_b
    lead = a.shape[:-2]

    def loop():
        out = np.empty(lead + (a.shape[-2], b.shape[-1]), np.float32)
        for idx in np.ndindex(*lead):
            np.matmul(a[idx], b[idx], out=out[idx])
        return out

    return ({"4-D matmul": lambda: a @ b,
             "reshape to 3-D": lambda: (a.reshape((-1,) + a.shape[-2:]) @ b.reshape((-1,) + b.shape[-2:])
                                        ).reshape(lead + (a.shape[-2], b.shape[-1])),
             "contiguous copies": lambda: np.ascontiguousarray(a) @ np.ascontiguousarray(b),
             "einsum": lambda: np.einsum("...ij,...jk->...ik", a, b, optimize=True),
             "loop of 2-D": loop}, (a, b))


def bias_grad(shape):
    g = _rng(shape)
    flat = g.reshape(-1, shape[-1])
    ones = np.ones(flat.shape[0], np.float32)
    return ({"sum(axis=0) on rows": lambda: flat.sum(0),
             "np.add.reduce(axes)": lambda: np.add.reduce(g, axis=tuple(range(g.ndim - 1))),
             "ones @ G (GEMV)": lambda: ones @ flat,
             "G.T @ ones (GEMV)": lambda: flat.T @ ones}, None)


# (workload, label, builder, args); batch-by-2-D shapes are B, T from the specs
T = ((16, 64),)
CASES = [
    ("mlp", "x@W1 64x784 @ 784x512", two_d, (64, 784, 512)),
    ("mlp", "h@W2 64x512 @ 512x512", two_d, (64, 512, 512)),
    ("mlp", "h@W3 64x512 @ 512x10", two_d, (64, 512, 10)),
    ("mlp", "dh = dy @ W3.T (tb) 64x10", two_d, (64, 10, 512, False, True)),
    ("mlp", "dh = dy @ W2.T (tb) 64x512", two_d, (64, 512, 512, False, True)),
    ("mlp", "dW1 = x.T @ dy (ta) 784x64 @ 64x512", two_d, (784, 64, 512, True)),
    ("mlp", "dW2 = h.T @ dy (ta) 512x64 @ 64x512", two_d, (512, 64, 512, True)),
    ("mlp", "dW3 = h.T @ dy (ta) 512x64 @ 64x10", two_d, (512, 64, 10, True)),
    ("gcn", "X@W1 2708x1433 @ 1433x16", two_d, (2708, 1433, 16)),
    ("gcn", "A@(XW) 2708x2708 @ 2708x16", two_d, (2708, 2708, 16)),
    ("gcn", "A@(HW) 2708x2708 @ 2708x7", two_d, (2708, 2708, 7)),
    ("gcn", "A.T@dZ2 (ta) 2708^2 @ 2708x7", two_d, (2708, 2708, 7, True)),
    ("gcn", "A.T@dZ1 (ta) 2708^2 @ 2708x16", two_d, (2708, 2708, 16, True)),
    ("gcn", "dW1 = X.T @ G (ta) 1433x2708 @ 2708x16", two_d, (1433, 2708, 16, True)),
    ("gcn", "dH = G @ W2.T (tb) 2708x7 @ 7x16", two_d, (2708, 7, 16, False, True)),
    ("transformer", "x@Wq [16,64,128] @ 128x128", batch_by_2d, (T[0], 128, 128)),
    ("transformer", "a@W1 [16,64,128] @ 128x512", batch_by_2d, (T[0], 128, 512)),
    ("transformer", "r@W2 [16,64,512] @ 512x128", batch_by_2d, (T[0], 512, 128)),
    ("transformer", "dr = dy @ W2.T [16,64,128] (tb)", batch_by_2d, (T[0], 128, 512, True)),
    ("transformer", "da = dy @ W1.T [16,64,512] (tb)", batch_by_2d, (T[0], 512, 128, True)),
    ("transformer", "dW1 = sum x.T @ dy, 128x512", weight_grad, (T[0], 128, 512)),
    ("transformer", "dW2 = sum r.T @ dy, 512x128", weight_grad, (T[0], 512, 128)),
    ("transformer", "dWq = sum x.T @ dy, 128x128", weight_grad, (T[0], 128, 128)),
    ("transformer", "scores q @ k.T [16,4,64,32]@[16,4,32,64]", heads,
     ((16, 4, 64, 32), ((16, 64, 4, 32), (0, 2, 1, 3)), (16, 4, 32, 64), ((16, 64, 4, 32), (0, 2, 3, 1)))),
    ("transformer", "ctx w @ v [16,4,64,64]@[16,4,64,32]", heads,
     ((16, 4, 64, 64), ((16, 4, 64, 64), (0, 1, 2, 3)), (16, 4, 64, 32), ((16, 64, 4, 32), (0, 2, 1, 3)))),
    ("transformer", "bias grad [16,64,512] -> 512", bias_grad, ((16, 64, 512),)),
    ("transformer", "bias grad [16,64,128] -> 128", bias_grad, ((16, 64, 128),)),
    ("mlp", "bias grad [64,512] -> 512", bias_grad, ((64, 512),)),
]


def _torch_variant(operands):
    """``torch.matmul`` on the same operands (``from_numpy`` keeps a view's strides), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    a, b = (torch.from_numpy(x) for x in operands)
    return lambda: torch.matmul(a, b)


def bench(variants: dict, rounds: int, burst_s: float) -> dict[str, float]:
    reps = {}
    for name, fn in variants.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(burst_s / max(time.perf_counter() - t0, 1e-6)))
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / reps[name])
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated workloads (mlp, transformer, gcn)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--burst", type=float, default=0.05, help="seconds per burst")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # MKL ignores OPENBLAS_NUM_THREADS; this table is one thread
        _table(args)


def _table(args) -> None:
    only = set(filter(None, args.only.split(",")))
    print("| workload | product | variant | µs (fastest round) | / torch |")
    print("|---|---|---|---:|---:|")
    for workload, label, builder, params in CASES:
        if only and workload not in only:
            continue
        variants, operands = builder(*params)
        ref = next(iter(variants.values()))()
        for name, fn in variants.items():  # every variant computes the same product
            np.testing.assert_allclose(fn(), ref, rtol=2e-3, atol=2e-3 * float(np.abs(ref).max()))
        if operands is not None:
            tv = _torch_variant(operands)
            if tv is not None:
                variants["torch.matmul"] = tv
        best = bench(variants, args.rounds, args.burst)
        torch_us = best.get("torch.matmul")
        fastest = min((v for k, v in best.items() if k != "torch.matmul"))
        for name, s in best.items():
            mark = " **" if s == fastest else ""
            ratio = f"{s / torch_us:.2f}×" if torch_us else "–"
            print(f"| {workload} | {label} | {name}{mark} | {s * 1e6:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()

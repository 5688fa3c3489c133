"""Compile-time cost against graph size: lowering and ``Model.gradients`` (backprop,
planning and one run) on ``repeat N`` stacks, N = 1k … 16k, with the fitted
exponent of time ~ N^k (1.0 is linear).

    python benchmarks/compile_cost.py [N ...]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import dlc


def spec(n: int) -> str:
    """``n`` tanh layers with a parameter each (repeat counts of at most 8000 chained)."""
    reps, prev, k = [], "x", 0
    while n > 0:
        c = min(n, 8000)
        reps.append(f"    h{k} = repeat {c} blk({prev})")
        prev, k, n = f"h{k}", k + 1, n - c
    return ("layer blk(x: f32[B, 4]) {\n    param w: [4] = ones()\n    return tanh(x * w)\n}\n"
            "model m() {\n    input x: f32[B, 4]\n" + "\n".join(reps) + f"\n    output loss = sum({prev})\n}}\n")


def fit(ns, ts) -> float:
    xs, ys = np.log(ns), np.log(ts)
    return float(np.polyfit(xs, ys, 1)[0])


def main(ns) -> None:
    rows = []
    print(f"{'N':>6} {'nodes':>7} {'lower s':>8} {'gradients s':>12}")
    for n in ns:
        t0 = time.perf_counter()
        m = dlc.compile(spec(n), mode="train")
        t1 = time.perf_counter()
        m.gradients({"x": np.ones((2, 4), np.float32)})
        t2 = time.perf_counter()
        rows.append((n, t1 - t0, t2 - t1))
        print(f"{n:>6} {len(m.graph):>7} {t1 - t0:>8.2f} {t2 - t1:>12.2f}", flush=True)
    ns_, lo, gr = zip(*rows)
    print(f"exponent: lowering {fit(ns_, lo):.2f}, gradients {fit(ns_, gr):.2f} (time ~ N^k)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 2000, 4000, 8000, 16000])

"""One change, measured in one process: a workload's NumPy training step with and without it.

    python benchmarks/ab.py lstm --drop-pass fuse_elementwise   # the step built without one NumPy pass
    python benchmarks/ab.py transformer --jit                   # compiled row kernels (dlc[jit]) on / off

The two variants run round-robin in short bursts (the order alternates each round),
so a machine that drifts slows both alike; the ratio "with / without" is the median
(and p25–p75) of the per-round ratios — what the closing notes quote for a change
too small for ``bench.py``'s comparison with PyTorch to resolve.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from threadpoolctl import threadpool_limits  # noqa: E402

import bench  # noqa: E402
from workloads import WORKLOADS  # noqa: E402


def ratios(step_with, step_without, rounds: int, burst: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per step of each variant, one entry per round."""
    with_, without = [], []
    for r in range(rounds):
        order = ((step_with, with_), (step_without, without)) if r % 2 else ((step_without, without), (step_with, with_))
        for step, out in order:
            t0 = time.perf_counter()
            for _ in range(burst):
                step()
            out.append((time.perf_counter() - t0) / burst)
    return np.array(with_), np.array(without)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=[w.name for w in WORKLOADS])
    change = ap.add_mutually_exclusive_group(required=True)
    change.add_argument("--drop-pass", metavar="NAME", help="a NumPy-only pass of compiler/passes/pipeline.py")
    change.add_argument("--jit", action="store_true", help="the compiled row kernels of dlc[jit]")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--burst", type=int, default=10, help="steps per variant per round")
    args = ap.parse_args(argv)
    w = next(w for w in WORKLOADS if w.name == args.workload)
    if args.drop_pass:
        from dlc.compiler.passes import pipeline

        names = [p.__name__ for p in pipeline.NUMPY_ONLY]
        if args.drop_pass not in names:
            ap.error(f"--drop-pass takes one of {', '.join(names)}")
        with_it = bench.Setup(w, 1, False)
        kept = pipeline.NUMPY_ONLY
        pipeline.NUMPY_ONLY = tuple(p for p in kept if p.__name__ != args.drop_pass)
        try:
            without_it = bench.Setup(w, 1, False)
        finally:
            pipeline.NUMPY_ONLY = kept
        step_with, step_without = with_it.step_np, without_it.step_np
        label = f"pass {args.drop_pass}"
    else:
        from dlc.compiler.ops import jit

        compiled = jit.kernels()
        if compiled is None:
            sys.exit("--jit needs the dlc[jit] extra (numba), and DLC_JIT not set to numpy")
        s = bench.Setup(w, 1, False)

        def toggled(kernels):
            def step():
                jit._kernels = kernels
                s.step_np()
            return step

        step_with, step_without = toggled(compiled), toggled(None)
        label = "compiled row kernels"
    with threadpool_limits(1):
        for step in (step_with, step_without):
            for _ in range(3):
                step()  # plans built, buffers and kernels warm
        a, b = ratios(step_with, step_without, args.rounds, args.burst)
    r = a / b
    print(f"{w.name}, {label}: with {np.median(a) * 1e3:.3f} ms, without {np.median(b) * 1e3:.3f} ms per NumPy step; "
          f"with / without {np.median(r):.3f}× (p25–p75 {np.percentile(r, 25):.3f}–{np.percentile(r, 75):.3f}), "
          f"{args.rounds} rounds of {args.burst} steps, 1 thread")


if __name__ == "__main__":
    main()

"""What the optimizing pipeline buys: nodes, kernel calls and step time per training step.

    python benchmarks/passes.py                 # every spec's counts; mlp, lstm, transformer timed
    python benchmarks/passes.py --rounds 3      # shorter timing

Kernel calls are counted while one training step runs (scan bodies included:
a body's kernels count once per step of the sequence).  Step times are
medians (and minima: on a shared machine the fastest burst is the least disturbed) of
short bursts run round-robin in one process (each variant in
turn, so a busy machine slows all of them alike), BLAS single-threaded as
during training.  ``O0`` is the graph as built; NumPy ``O2`` adds the
cleanup passes and fusion, onnxruntime ``O1`` the cleanup passes.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import time
from pathlib import Path

import numpy as np

import dlc
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.training.step import initial_state
from dlc.runtime import interpreter
from dlc.runtime.runner import make_runner
from dlc.runtime.train import build_steps

ROOT = Path(__file__).resolve().parent.parent
TIMED = {"mlp.dl": 64, "lstm.dl": 32, "transformer.dl": 16}  # spec → batch


def feeds_for(m, batch: int, length: int = 20) -> dict:
    rng = np.random.default_rng(0)
    out = {"__rng": np.int64(0)}
    for name, t in m.inputs.items():
        shape = [d if isinstance(d, int) else (length if str(d) == "T" else batch) for d in t.shape]
        out[name] = (rng.standard_normal(shape).astype(np.float32) if t.dtype.startswith("f")
                     else rng.integers(0, 2, size=shape).astype(np.int64))
    return out


def kernel_calls(runner, feeds, params, state) -> int:
    """Kernel calls of one step of a NumPy runner (nested scan-body plans included)."""
    calls = [0]
    run = interpreter.Plan.run

    def counting(self, *args, **kwargs):
        calls[0] += len(self.steps)
        return run(self, *args, **kwargs)

    interpreter.Plan.run = counting
    try:
        runner(feeds, params, state)
    finally:
        interpreter.Plan.run = run
    return calls[0]


def setup(path: str, batch: int):
    m = dlc.load(path, mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    return m, step, feeds_for(m, batch), {**m.state, **initial_state(step)}


def counts_table() -> None:
    print("\n### Training step: nodes and kernel calls, before (O0) and after (O2, NumPy)\n")
    print("| spec | nodes O0 | nodes O1 (onnx) | nodes O2 (numpy) | kernel calls O0 | kernel calls O2 | optimize ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in sorted(glob.glob(str(ROOT / "specs" / "*.dl"))):
        m = dlc.load(path, mode="train")
        if m.train_spec(required=False) is None:
            continue
        m, step, feeds, state = setup(path, 8)
        g = step.graph
        t0 = time.perf_counter()
        o2 = optimize(g, 2, "numpy")
        ms = (time.perf_counter() - t0) * 1e3
        o1 = optimize(g, 1, "onnx")
        calls = [kernel_calls(make_runner(g, "numpy", level=lv), feeds, m.params, state) for lv in (0, 2)]
        print(f"| {Path(path).name} | {len(g)} | {len(o1)} | {len(o2)} | {calls[0]} | {calls[1]} | {ms:.1f} |")


def timing_table(rounds: int, burst: int) -> None:
    print(f"\n### Training step time, ms: median (fastest) of {rounds} round-robin bursts of {burst} steps\n")
    print("| spec | batch | numpy O0 | numpy O2 | speed-up | onnxruntime O0 | onnxruntime O1 | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec, batch in TIMED.items():
        m, step, feeds, state = setup(str(ROOT / "specs" / spec), batch)
        variants = {(b, lv): make_runner(step.graph, b, level=lv)
                    for b, lv in (("numpy", 0), ("numpy", 2), ("onnxruntime", 0), ("onnxruntime", 1))}
        times = {k: [] for k in variants}
        for r in variants.values():
            r(feeds, m.params, state)  # warm-up
        for _ in range(rounds):
            for k, r in variants.items():
                t0 = time.perf_counter()
                for _ in range(burst):
                    r(feeds, m.params, state)
                times[k].append((time.perf_counter() - t0) / burst * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}

        def cell(k):
            return f"{med[k]:.3f} ({low[k]:.3f})"

        def ratio(a, b):
            return f"{med[a] / med[b]:.2f}x ({low[a] / low[b]:.2f}x)"

        n0, n2, o0, o1 = ("numpy", 0), ("numpy", 2), ("onnxruntime", 0), ("onnxruntime", 1)
        print(f"| {spec} | {batch} | {cell(n0)} | {cell(n2)} | {ratio(n0, n2)} | {cell(o0)} | {cell(o1)} | "
              f"{ratio(o0, o1)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst", type=int, default=10)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        counts_table()
        timing_table(args.rounds, args.burst)


if __name__ == "__main__":
    main()

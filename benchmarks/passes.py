"""What the optimizing pipeline buys: nodes, kernel calls and step time per training step.

    python benchmarks/passes.py                 # every spec's counts; mlp, lstm, transformer timed
    python benchmarks/passes.py --rounds 3      # shorter timing
    python benchmarks/passes.py --workloads     # the five benchmark workloads (issue 14's sizes)
    python benchmarks/passes.py --cpu           # CPU time per step (on a busy machine)

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
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

import dlc
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.training.step import initial_state
from dlc.runtime.kernel_counts import counting_kernel_calls
from dlc.runtime.runner import make_runner
from dlc.runtime.trainer import build_steps

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
    with counting_kernel_calls() as n:
        runner(feeds, params, state)
    return n.calls


def setup(path: str, batch: int | None = None, feeds: dict | None = None):
    m = dlc.load(path, mode="train")
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    feeds = {"__rng": np.int64(0), **feeds} if feeds is not None else feeds_for(m, batch)
    return m, step, feeds, {**m.state, **initial_state(step)}


def timed_cases(workloads: bool) -> list[tuple[str, Callable]]:
    """(label, () -> setup tuple): the specs' own models, or the five benchmark workloads."""
    if not workloads:
        return [(f"{spec} (batch {batch})", lambda spec=spec, batch=batch: setup(str(ROOT / "specs" / spec), batch))
                for spec, batch in TIMED.items()]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from workloads import WORKLOADS

    return [(w.title, lambda w=w: setup(str(w.spec), feeds=w.batch(0))) for w in WORKLOADS]


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


def timing_table(rounds: int, burst: int, workloads: bool, cpu: bool) -> None:
    clock = time.process_time if cpu else time.perf_counter
    what = "CPU time (all threads)" if cpu else "time"
    print(f"\n### Training step {what}, ms: median (fastest) of {rounds} round-robin bursts of {burst} steps\n")
    print("| workload | kernel calls O0 → O2 | numpy O0 | numpy O2 | speed-up | onnxruntime O0 | onnxruntime O1 "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, make in timed_cases(workloads):
        m, step, feeds, state = make()
        variants = {(b, lv): make_runner(step.graph, b, level=lv)
                    for b, lv in (("numpy", 0), ("numpy", 2), ("onnxruntime", 0), ("onnxruntime", 1))}
        times = {k: [] for k in variants}
        for r in variants.values():
            r(feeds, m.params, state)  # warm-up
        for _ in range(rounds):
            for k, r in variants.items():
                t0 = clock()
                for _ in range(burst):
                    r(feeds, m.params, state)
                times[k].append((clock() - t0) / burst * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}

        def cell(k):
            return f"{med[k]:.3f} ({low[k]:.3f})"

        def ratio(a, b):
            return f"{med[a] / med[b]:.2f}x ({low[a] / low[b]:.2f}x)"

        n0, n2, o0, o1 = ("numpy", 0), ("numpy", 2), ("onnxruntime", 0), ("onnxruntime", 1)
        calls = " → ".join(str(kernel_calls(variants[k], feeds, m.params, state)) for k in (n0, n2))
        print(f"| {label} | {calls} | {cell(n0)} | {cell(n2)} | {ratio(n0, n2)} | {cell(o0)} | {cell(o1)} | "
              f"{ratio(o0, o1)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--workloads", action="store_true",
                    help="time the five benchmark workloads (benchmarks/workloads.py) instead of the specs")
    ap.add_argument("--cpu", action="store_true",
                    help="process CPU time instead of wall time (steadier when other jobs share the cores)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        if not args.workloads:
            counts_table()
        timing_table(args.rounds, args.burst, args.workloads, args.cpu)


if __name__ == "__main__":
    main()

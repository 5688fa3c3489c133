"""dlc benchmarks: prints tables (markdown) of compile time, training-step time and
peak memory, and the ONNX path beside the NumPy interpreter.

    python benchmarks/bench.py            # all tables
    python benchmarks/bench.py --quick    # fewer repetitions

Times are medians over repetitions (after one warm-up), with BLAS single-threaded
as during training; peak memory is the Python heap peak of one step measured by
tracemalloc (NumPy buffers included).
"""
from __future__ import annotations

import argparse
import glob
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

import dlc
from dlc.compiler.training.step import initial_state
from dlc.runtime.runner import make_runner
from dlc.runtime.train import build_steps

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(glob.glob(str(ROOT / "specs" / "*.dl")))


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def feeds_for(m, batch: int, length: int = 20) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for name, t in m.inputs.items():
        shape = [d if isinstance(d, int) else (length if str(d) == "T" else batch) for d in t.shape]
        out[name] = (rng.standard_normal(shape).astype(np.float32) if t.dtype.startswith("f")
                     else rng.integers(0, 2, size=shape).astype(np.int64))
    return out


def compile_table(reps: int) -> None:
    print("\n### Compile time per spec (parse → lower → backprop → optimizer step), and ONNX export\n")
    print("| spec | nodes (eval) | nodes (train step) | compile ms | export ms | export train ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in SPECS:
        name = Path(path).name

        def full():
            m = dlc.load(path, mode="train")
            return build_steps(m, m.train_spec(), steps_per_epoch=10)

        t = median_time(full, reps)
        m = dlc.load(path)
        mt = dlc.load(path, mode="train")
        steps = full()
        e = median_time(lambda: m.to_onnx(), reps)
        et = median_time(lambda: mt.to_onnx("train"), reps)
        print(f"| {name} | {len(m.graph)} | {len(steps[0].graph)} | {t * 1e3:.1f} | {e * 1e3:.1f} | {et * 1e3:.1f} |")


def step_table(reps: int) -> None:
    print("\n### Training step (forward + backward + Adam update), per batch\n")
    print("| spec | batch | numpy ms | onnxruntime ms | numpy peak MB | examples/s (numpy) |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, sizes in (("mlp.dl", (32, 128, 512)), ("lstm.dl", (32, 128, 512))):
        m = dlc.load(ROOT / "specs" / spec, mode="train")
        step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
        state = initial_state(step)
        runners = {b: make_runner(step.graph, b) for b in ("numpy", "onnxruntime")}
        for batch in sizes:
            feeds = {**feeds_for(m, batch), "__rng": np.int64(0)}
            times = {b: median_time(lambda r=r: r(feeds, m.params, state), reps) for b, r in runners.items()}
            tracemalloc.start()
            runners["numpy"](feeds, m.params, state)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            print(f"| {spec} | {batch} | {times['numpy'] * 1e3:.2f} | {times['onnxruntime'] * 1e3:.2f} | "
                  f"{peak:.1f} | {batch / times['numpy']:,.0f} |")


def inference_table(reps: int) -> None:
    print("\n### Inference (eval graph), batch 256 (T = 10 for sequences)\n")
    print("| spec | numpy ms | onnxruntime ms |")
    print("|---|---:|---:|")
    for path in SPECS:
        m = dlc.load(path)
        feeds = feeds_for(m, 256, length=10)
        tn = median_time(lambda: m.run(feeds), reps)
        to = median_time(lambda: m.run(feeds, backend="onnxruntime"), reps)
        print(f"| {Path(path).name} | {tn * 1e3:.2f} | {to * 1e3:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 3 if args.quick else 10
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # as `dlc train` runs (runtime/train.py)
        compile_table(reps)
        step_table(reps)
        inference_table(reps)


if __name__ == "__main__":
    main()

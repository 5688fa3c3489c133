"""dlc against PyTorch eager on five reference workloads (benchmarks/specs/), in one process.

    python benchmarks/bench.py                 # every workload, the ratio table, compile times, memory
    python benchmarks/bench.py --quick         # fewer rounds
    python benchmarks/bench.py --only mlp,lstm --threads 2 --profile

For each workload (data generated at fixed seeds, benchmarks/workloads.py): the
forward pass (eval graph, loss output) and the training step (forward, backward,
update) through dlc's public API on the NumPy interpreter and on onnxruntime
(``model.trainer(backend=...)``: parameters and optimizer state stay in
onnxruntime memory), dlc's exported ONNX files run by a bare ``session.run``, and,
when PyTorch is importable, the same model in PyTorch eager (dlc's initial
parameters copied in; the losses are compared before timing) and its
``torch.onnx.export`` in onnxruntime.  Every candidate of a workload runs in
short bursts, round-robin, so that a noisy neighbour slows all of them alike;
a ratio's p25–p75 is over the per-round ratios.  BLAS, PyTorch and onnxruntime
all get ``--threads`` threads (default 1, as ``dlc train`` runs).

Also printed: compile time (spec text → exported training step, in process)
beside the legacy ``torch.onnx.export`` of the inference model, and the peak
memory of one NumPy training step (tracemalloc: NumPy's buffers are traced).
``--profile``: the NumPy interpreter's time per op kind in one training step.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import dlc  # noqa: E402
from dlc.compiler.onnx_export import export_graph  # noqa: E402
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL, optimize  # noqa: E402
from dlc.runtime.ort import OrtSession  # noqa: E402
from dlc.runtime.trainer import build_steps  # noqa: E402
from timing import run_times  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

STEPS_PER_EPOCH = 100  # for schedules; the workloads have none


def percentiles(xs) -> tuple[float, float, float]:
    q = np.percentile(np.asarray(xs), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def round_robin(candidates: dict, rounds: int, burst_s: float) -> dict[str, list[float]]:
    """Per-call seconds of each candidate in each round (a burst of calls per round)."""
    reps = {}
    for name, fn in candidates.items():  # warm up, and size the bursts
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(burst_s / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            k = reps[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
    return times


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class Setup:
    """Everything one workload times, built once."""

    def __init__(self, w: Workload, threads: int, torch_ok: bool):
        self.w = w
        self.batch = w.batch(0)
        self.text = w.spec.read_text()
        self.train_model = dlc.load(w.spec, mode="train")
        self.eval_model = dlc.load(w.spec)
        params = self.train_model.params
        self.eval_model.params = params
        self.fwd_np = lambda: self.eval_model.run(self.batch, outputs=["loss"])
        self.fwd_ort = lambda: self.eval_model.run(self.batch, outputs=["loss"], backend="onnxruntime")
        self.trainers = {b: self.train_model.trainer(backend=b, threads=threads, steps_per_epoch=STEPS_PER_EPOCH)
                         for b in ("numpy", "onnxruntime")}
        self.step_np = lambda: self.trainers["numpy"](self.batch)
        self.step_ort = lambda: self.trainers["onnxruntime"](self.batch)
        # dlc's own ONNX files, run bare (NumPy in and out every call)
        step_graph = build_steps(self.train_model, self.train_model.train_spec(), STEPS_PER_EPOCH)[0]
        self.step_proto = export_graph(optimize(step_graph.graph, DEFAULT_LEVEL, "onnx"), params=None,
                                       name=w.name, train=True).SerializeToString()
        self.threads = threads
        self.step_session = OrtSession(self.step_proto, threads=threads).session
        self.step_feeds = {**self.batch, "__rng": np.int64(0), **params, **self.trainers["numpy"].state}
        self.step_feeds = {k: v for k, v in self.step_feeds.items()
                           if k in {i.name for i in self.step_session.get_inputs()}}
        self.fwd_session = OrtSession(self.eval_model.to_onnx(), threads=threads).session
        fwd_inputs = {i.name for i in self.fwd_session.get_inputs()}
        self.fwd_feeds = {k: v for k, v in {**self.batch, "__rng": np.int64(0)}.items() if k in fwd_inputs}
        self.bare_step = lambda: self.step_session.run(None, self.step_feeds)
        self.bare_fwd = lambda: self.fwd_session.run(["loss"], self.fwd_feeds)
        self.torch = None
        if torch_ok:
            self._torch(params, threads)

    def _torch(self, params, threads):
        import torch

        module, make_opt = self.w.torch_model(params)
        opt = make_opt()
        tensors = [torch.from_numpy(self.batch[k]) for k in self.batch]
        with torch.no_grad():
            theirs = float(module(*tensors))
        ours = float(self.fwd_np()["loss"])
        if not np.isclose(ours, theirs, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"{self.w.name}: dlc's loss {ours} differs from PyTorch's {theirs}: not the same model")
        self.loss_check = (ours, theirs)

        def fwd():
            with torch.no_grad():
                return module(*tensors)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = module(*tensors)
            loss.backward()
            opt.step()
            return loss

        buf = io.BytesIO()
        t0 = time.perf_counter()
        torch.onnx.export(module, tuple(tensors), buf, input_names=list(self.batch), output_names=["loss"],
                          dynamo=False)
        self.torch_export_s = time.perf_counter() - t0
        session = OrtSession(buf.getvalue(), threads=threads).session
        names = [i.name for i in session.get_inputs()]
        feeds = {k: v for k, v in self.batch.items() if k in names}
        self.torch = {"fwd": fwd, "step": step, "onnx_fwd": lambda: session.run(None, feeds)}

    def candidates(self) -> dict:
        out = {"dlc numpy fwd": self.fwd_np, "dlc ort fwd": self.fwd_ort, "dlc onnx fwd (bare)": self.bare_fwd,
               "dlc numpy step": self.step_np, "dlc ort step": self.step_ort,
               "dlc onnx step (bare)": self.bare_step}
        if self.torch:
            out.update({"torch fwd": self.torch["fwd"], "torch step": self.torch["step"],
                        "torch onnx fwd (bare)": self.torch["onnx_fwd"]})
        return out

    def compile_seconds(self, reps: int = 3) -> float:
        """Spec text → optimized, serialized ONNX training step, in process (median of warm runs:
        the parser's tables are built by then)."""

        def once():
            m = dlc.compile(self.text, path=str(self.w.spec), mode="train")
            step = build_steps(m, m.train_spec(), STEPS_PER_EPOCH)[0]
            graph = optimize(step.graph, DEFAULT_LEVEL, "onnx")
            export_graph(graph, params=None, name=m.name, train=True).SerializeToString()

        return statistics.median(run_times(once, reps, warm=False))

    def peak_step_mb(self) -> float:
        tracemalloc.start()
        self.step_np()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / 2**20

    def profile(self) -> list[tuple[str, float, int]]:
        prof: dict = {}
        t = self.trainers["numpy"]
        plan = t.groups[0].run.plan  # the optimized plan the trainer runs
        values = t.store.get()
        feeds = {**self.batch, "__rng": np.int64(0)}
        for _ in range(3):
            plan.run(feeds, values, values, profile=prof)
        return sorted(((op, s / 3, n // 3) for op, (s, n) in prof.items()), key=lambda r: -r[1])


def ort_profile(proto_bytes: bytes, feeds: dict, threads: int, runs: int = 5) -> list[tuple[str, float, int]]:
    """onnxruntime's own per-node profile of ``runs`` runs: (op type, ms per run, nodes run per run)."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(proto_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        session.run(None, feeds)  # warm-up (profiled too, then dropped below)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, list] = {}
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    skip_until = runs_seen[0]["ts"] + runs_seen[0]["dur"] if runs_seen else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= skip_until:
            entry = totals.setdefault(e.get("args", {}).get("op_name", "?"), [0.0, 0])
            entry[0] += e["dur"] / 1e3
            entry[1] += 1
    return sorted(((op, ms / runs, n // runs) for op, (ms, n) in totals.items()), key=lambda r: -r[1])


def fmt_ratio(ours: list[float], theirs: list[float]) -> str:
    lo, mid, hi = percentiles([a / b for a, b in zip(ours, theirs)])
    return f"{mid:.2f}× ({lo:.2f}–{hi:.2f})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / PyTorch / onnxruntime threads (default 1)")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--profile", action="store_true", help="time per op kind of the NumPy training step")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    ap.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 31; --quick 5)")
    args = ap.parse_args(argv)
    rounds, burst = (5, 0.02) if args.quick else (31, 0.03)
    rounds = args.rounds or rounds
    chosen = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    torch_ok = has_torch() and not args.no_torch
    from threadpoolctl import threadpool_limits

    if torch_ok:
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    results = {}
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for w in chosen:
            print(f"… {w.name}", file=sys.stderr, flush=True)
            s = Setup(w, args.threads, torch_ok)
            times = round_robin(s.candidates(), rounds, burst)
            profiles = (s.profile(), ort_profile(s.step_proto, s.step_feeds, args.threads)) if args.profile else None
            results[w.name] = (s, times, s.compile_seconds(), s.peak_step_mb(), profiles)
    report(results, torch_ok, args)


def report(results: dict, torch_ok: bool, args) -> None:
    import os

    rounds = len(next(iter(results.values()))[1]["dlc numpy step"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    from dlc.compiler.ops import gemm, jit

    print(f"\nThreads: {args.threads} (BLAS, PyTorch, onnxruntime); NumPy backend's GEMMs: {gemm.blas_name()} "
          f"(DLC_BLAS={os.environ.get('DLC_BLAS', 'unset')}); compiled row kernels: {jit.jit_name()}; "
          f"{rounds} round-robin bursts per candidate; "
          f"ratios dlc / PyTorch eager, median (p25–p75) of the per-round ratios; lower is better.  "
          f"Load average at the end: {load} on {os.cpu_count()} CPUs.\n")
    if torch_ok:
        import torch

        print(f"PyTorch {torch.__version__}\n")
        print("| workload | NumPy fwd | NumPy train step | onnxruntime fwd | onnxruntime train step | "
              "dlc ONNX / torch ONNX (inference, bare session.run) |")
        print("|---|---|---|---|---|---|")
        for name, (s, t, *_rest) in results.items():
            print(f"| {s.w.title} | {fmt_ratio(t['dlc numpy fwd'], t['torch fwd'])} | "
                  f"{fmt_ratio(t['dlc numpy step'], t['torch step'])} | {fmt_ratio(t['dlc ort fwd'], t['torch fwd'])} | "
                  f"{fmt_ratio(t['dlc ort step'], t['torch step'])} | "
                  f"{fmt_ratio(t['dlc onnx fwd (bare)'], t['torch onnx fwd (bare)'])} |")
        print("\nRatio of the fastest rounds (min / min: what each side does undisturbed; steadier than the "
              "medians when the machine is shared):\n")
        print("| workload | NumPy fwd | NumPy train step | onnxruntime fwd | onnxruntime train step | dlc ONNX / torch ONNX |")
        print("|---|---:|---:|---:|---:|---:|")
        pairs = [("dlc numpy fwd", "torch fwd"), ("dlc numpy step", "torch step"), ("dlc ort fwd", "torch fwd"),
                 ("dlc ort step", "torch step"), ("dlc onnx fwd (bare)", "torch onnx fwd (bare)")]
        for name, (s, t, *_rest) in results.items():
            print(f"| {name} | " + " | ".join(f"{min(t[a]) / min(t[b]):.2f}×" for a, b in pairs) + " |")
    print("\n### Milliseconds per call (median; fastest round in parentheses)\n")
    cols = list(next(iter(results.values()))[1])
    print("| workload | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, (s, t, *_rest) in results.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(t[c]) * 1e3:.2f} ({min(t[c]) * 1e3:.2f})"
                                         for c in cols) + " |")
    print("\n### Compile time and memory\n")
    print("| workload | train-step nodes → NumPy kernel calls | compile: text → exported training step (ms) | "
          "torch.onnx.export, inference (ms) | peak MB per NumPy training step |")
    print("|---|---:|---:|---:|---:|")
    for name, (s, t, comp, peak, _prof) in results.items():
        nodes = f"{len(s.trainers['numpy'].groups[0].step.graph)} → {len(s.trainers['numpy'].groups[0].run.plan.steps)}"
        te = f"{s.torch_export_s * 1e3:.1f}" if s.torch else "–"
        print(f"| {name} | {nodes} | {comp * 1e3:.1f} | {te} | {peak:.1f} |")
    for name, (s, t, comp, peak, profiles) in results.items():
        if not profiles:
            continue
        numpy_prof, ort_prof = profiles
        total = sum(r[1] for r in numpy_prof) * 1e3
        total_ort = sum(r[1] for r in ort_prof)
        print(f"\n### Profile: {name}, training step — NumPy ({total:.2f} ms in {sum(r[2] for r in numpy_prof)} "
              f"kernel calls) and onnxruntime ({total_ort:.2f} ms in {sum(r[2] for r in ort_prof)} nodes)\n")
        if any(r[0] in ("Scan", "Loop", "If") for r in ort_prof):
            print("(onnxruntime reports a Scan's body nodes on their own too: its time includes theirs)\n")
        print("| NumPy op | ms | calls | share | | onnxruntime op | ms | nodes | share |")
        print("|---|---:|---:|---:|---|---|---:|---:|---:|")
        for i in range(10):
            left = numpy_prof[i] if i < len(numpy_prof) else None
            right = ort_prof[i] if i < len(ort_prof) else None
            a = (f"{left[0]} | {left[1] * 1e3:.3f} | {left[2]} | {left[1] * 1e3 / total:.0%}" if left
                 else " | | | ")
            b = f"{right[0]} | {right[1]:.3f} | {right[2]} | {right[1] / total_ort:.0%}" if right else " | | | "
            print(f"| {a} | | {b} |")


if __name__ == "__main__":
    main()

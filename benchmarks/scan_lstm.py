"""LSTM training step (T=32, B=32, in 64, hidden 128, Adam): time per step and
NumPy kernel calls per step, the scan passes on and off, both backends.

    python benchmarks/scan_lstm.py                 # round-robin, 7 rounds of 5-step bursts
    python benchmarks/scan_lstm.py --rounds 3
    python benchmarks/scan_lstm.py --save-onnx new.onnx   # the exported step and its feeds (new.onnx.npz)
    python benchmarks/scan_lstm.py --onnx old.onnx new.onnx   # bare onnxruntime sessions, round-robin

``--save-onnx`` on two checkouts and ``--onnx`` on both files compares the
exported steps in one process (one intra-op thread each).

Variants run round-robin in one process in short bursts (one step of warm-up
each), so machine noise hits them alike; the table gives the median time per
step and p25–p75.  ``-O0`` is the step as built, ``-O2`` the optimizing
pipeline (``make_runner(graph, backend, level)``); on a checkout without
levels only the default runs, which is how the "before" numbers are taken.  Kernel calls count every
kernel the NumPy interpreter runs in one step, scan bodies included.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import numpy as np

import dlc
from dlc.compiler.training.step import initial_state
from dlc.runtime.kernel_counts import counting_kernel_calls
from dlc.runtime.runner import make_runner
from dlc.runtime.trainer import build_steps

SPEC = """
layer dense(x: f32[B, I], units: int) {
    param W: [I, units] = glorot_uniform()
    param b: [units]    = zeros()
    return x @ W + b
}
layer lstm_cell(x: f32[B, I], h: f32[B, H], c: f32[B, H]) {
    param Wx: [I, 4*H] = glorot_uniform()
    param Wh: [H, 4*H] = orthogonal()
    param b:  [4*H]    = zeros()
    i, f, g, o = split(x @ Wx + h @ Wh + b, 4, axis = -1)
    c2 = sigmoid(f + 1.0) * c + sigmoid(i) * tanh(g)
    h2 = sigmoid(o) * tanh(c2)
    return h2, c2
}
model lstm(hidden: int = 128) {
    input xs: f32[B, T, 64]
    input y:  i64[B]
    hs, h, c = scan lstm_cell over xs axis 1 init (zeros([B, hidden]), zeros([B, hidden]))
    output loss = cross_entropy(dense(h, 10), y)
}
train lstm { data = "unused.npz"  loss = loss  optimizer = adam(lr = 1e-3)  batch = 32  epochs = 1 }
"""
T, B = 32, 32


def kernel_calls(run) -> int:
    with counting_kernel_calls() as n:
        run()
    return n.calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst", type=int, default=5)
    ap.add_argument("--save-onnx", metavar="PATH")
    ap.add_argument("--onnx", nargs="+", metavar="PATH")
    args = ap.parse_args()
    if args.onnx:
        return compare_onnx(args.onnx, args.rounds, args.burst)
    m = dlc.compile(SPEC, mode="train")
    rng = np.random.default_rng(0)
    feeds = {"xs": rng.standard_normal((B, T, 64)).astype(np.float32),
             "y": rng.integers(0, 10, B).astype(np.int64), "__rng": np.int64(0)}
    leveled = "level" in inspect.signature(make_runner).parameters
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    state = {**m.state, **initial_state(step)}
    variants = {}
    for level in ((2, 0) if leveled else (None,)):
        for backend in ("numpy", "onnxruntime"):
            run = make_runner(step.graph, backend, level) if leveled else make_runner(step.graph, backend)
            name = f"-O{level}" if leveled else ""
            variants[(backend, name)] = (lambda run=run: run(feeds, m.params, state), step)
    if args.save_onnx:
        from dlc.compiler.onnx_export import export_graph

        graph = step.graph
        if leveled:
            from dlc.compiler.passes.pipeline import optimize

            graph = optimize(graph, 2, "onnx")  # what the onnxruntime runner exports
        proto = export_graph(graph, params=None, name="lstm", train=True)
        open(args.save_onnx, "wb").write(proto.SerializeToString())
        np.savez(args.save_onnx + ".npz", **feeds, **m.params, **state)
        print(f"wrote {args.save_onnx} and {args.save_onnx}.npz")
        return
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, (fn, _) in variants.items():
            fn()  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.burst):
                fn()
            times[key].append((time.perf_counter() - t0) / args.burst)
    print(f"LSTM T={T} B={B} in=64 hidden=128 Adam; {args.rounds} rounds x {args.burst} steps\n")
    print("| backend | passes | ms/step (median) | p25–p75 | kernel calls/step | scans in step |")
    print("|---|---|---:|---:|---:|---:|")
    for (backend, level), (fn, step) in variants.items():
        ts = sorted(times[(backend, level)])
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        calls = kernel_calls(fn) if backend == "numpy" else ""
        scans = sum(1 for n in step.graph.nodes() if step.graph.op(n) == "scan")
        print(f"| {backend} | {level or 'default'} | {statistics.median(ts) * 1e3:.2f} | "
              f"{q[0] * 1e3:.2f}–{q[2] * 1e3:.2f} | {calls} | {scans} |")


def compare_onnx(paths: list[str], rounds: int, burst: int) -> None:
    import onnxruntime as ort

    sessions = {}
    for path in paths:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        data = np.load(path + ".npz")
        feeds = {i.name: data[i.name] for i in sess.get_inputs()}
        sessions[path] = (sess, feeds)
    times = {p: [] for p in paths}
    for _ in range(rounds):
        for path, (sess, feeds) in sessions.items():
            sess.run(None, feeds)
            t0 = time.perf_counter()
            for _ in range(burst):
                sess.run(None, feeds)
            times[path].append((time.perf_counter() - t0) / burst)
    print("| exported step | ms/step (median) | p25–p75 |\n|---|---:|---:|")
    for path, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        print(f"| {path} | {statistics.median(ts) * 1e3:.2f} | {q[0] * 1e3:.2f}–{q[2] * 1e3:.2f} |")


if __name__ == "__main__":
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # as `dlc train` runs
        main()

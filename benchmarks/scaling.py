"""Data-parallel scaling: measured on this machine, projected to larger clusters.

    python benchmarks/scaling.py                      # mlp, cnn, transformer (and resnet when present)
    python benchmarks/scaling.py --only mlp --steps 40 --bandwidth 10

For each spec it measures, in one process (NumPy backend, one BLAS thread):

- ``t_grad(b)``: one worker's gradient graph on a shard of ``b`` rows (the spec's
  batch), ``t_update``: the optimizer update the driver runs once per step;
- the step time of ``DistributedTrainer`` with 1 and 2 Ray workers on this
  machine (global batch = the spec's batch), and from the 1-worker step the
  per-step overhead of going through Ray (task dispatch, object store);
- for a spec with batch normalisation, whose steps with N > 1 run in
  synchronisation stages (compiler/training/stages.py): the number of stages,
  the bytes of partial sums each worker sends per step (and receives back
  summed), and ``t_staged``: both shards' stages run in this process, one after
  the other, the sums added up in between (no Ray) — the cost of splitting
  the graph, apart from Ray's per-stage round trips; and from the 2-worker
  step, what each round added (``stage_rt``), which the projection adds per
  round at every N;

and projects, for N = 8, 64, 512 workers at a fixed per-worker batch (weak
scaling), the step time and efficiency ``T(1) / T(N)`` of dlc's design — the
driver sends the parameters and receives N gradients, so its link carries
``2 · N · 4P`` bytes a step — beside a ring all-reduce (``2 · (N-1)/N · 4P``
per worker), at ``--bandwidth`` Gbit/s.  The projection ignores stragglers and
assumes compute does not overlap communication: it is an upper bound on what
the design can give, and says where it stops scaling.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import run_times  # noqa: E402


def _median_time(fn, reps: int) -> float:
    return statistics.median(run_times(fn, reps))


def measure(path: str, steps: int) -> dict:
    import dlc
    from dlc.compiler.graph import RNG_INPUT
    from dlc.exports import grad_graph, update_graph
    from dlc.runtime.distributed import DistributedTrainer
    from dlc.runtime.runner import make_runner
    from dlc.runtime.trainer import make_trainer

    m = dlc.load(path, mode="train")
    spec = m.train_spec()
    local = make_trainer(m)
    batch = next(b for b, _ in local.train_batches(0))
    grad = make_runner(grad_graph(m)[0], "numpy")
    values = {**local.params, **local.state}
    feeds = {**batch, RNG_INPUT: np.int64(0)}
    t_grad = _median_time(lambda: grad(feeds, values, values), steps)
    out = grad(feeds, values, values)
    upd = make_runner(update_graph(m).graph, "numpy")
    grads = {k: v for k, v in out.items() if k.startswith("grad/")}
    t_update = _median_time(lambda: upd(grads, values, values), steps)
    params = sum(v.size for v in local.params.values())
    row = {"spec": Path(path).stem, "params": params, "batch": spec.batch, "t_grad": t_grad, "t_update": t_update,
           **measure_stages(m, spec, values, steps)}
    for n in (1, 2):
        d = DistributedTrainer(m, workers=n, timeout=600)
        try:
            refs = [b for b, _ in zip((b for b, _ in d.train_batches(0)), range(steps + 1))]
            d(refs[0])
            ts = []
            for b in refs[1:]:
                t0 = time.perf_counter()
                d(b)
                ts.append(time.perf_counter() - t0)
            row[f"step{n}"] = statistics.median(ts)
        finally:
            d.close()
    row["overhead"] = max(row["step1"] - t_grad - t_update, 0.0)
    # what each synchronisation round added to the 2-worker step (dispatch, gather, the sums)
    row["stage_rt"] = max(row["step2"] - row["step1"], 0.0) / (row["stages"] - 1) if row["stages"] > 1 else 0.0
    return row


def measure_stages(m, spec, values: dict, steps: int) -> dict:
    """Stages, partial-sum bytes per worker and step, and ``t_staged`` (two shards' stages in
    this process) of the first step group's synchronised plan; stages = 1 when there is none."""
    from dlc.compiler.dims import concrete_shape
    from dlc.compiler.training.stages import stage_plan
    from dlc.compiler.types import np_dtype
    from dlc.runtime.dist_worker import BatchRef, GradientWorker, ModelSource
    from dlc.runtime.staged import run_stages
    from dlc.runtime.trainer import build_grad_graph

    plan = stage_plan(build_grad_graph(m, spec, spec.steps[0])[0])
    if plan is None:
        return {"stages": 1, "sync_bytes": 0, "sync_down": 0, "t_staged": None}
    size = 0
    for g, names in zip(plan.graphs, plan.reduced):
        for name in names:
            t = g.type_of(g.outputs[name])
            size += int(np.prod(concrete_shape(t.shape, {}))) * np_dtype(t.dtype).itemsize
    source = ModelSource(m.loaded, m.defn, dict(m.hyper), dict(m.inputs))
    workers = [GradientWorker(source, spec, rank=r, world=2, seed=spec.seed) for r in range(2)]
    batch = BatchRef(0, 0)

    down = []  # bytes of sums one worker is sent per step (each stage gets the previous stage's)

    def call(k, new, sums):
        down.append(sum(np.asarray(v).nbytes for v in new.values()))
        return [{n: v for n, v in w.stage(0, k, batch, 0, values, new).items() if n != "n"} for w in workers]

    run_stages(call, len(plan.graphs), plan.outputs)
    sync_down = sum(down)
    t_staged = _median_time(lambda: run_stages(call, len(plan.graphs), plan.outputs), steps)
    return {"stages": len(plan.graphs), "sync_bytes": size, "sync_down": sync_down, "t_staged": t_staged}


def project(row: dict, n: int, bandwidth_gbit: float) -> tuple[float, float, float, float]:
    """(dlc step s, dlc efficiency, ring step s, ring efficiency) at ``n`` workers, weak scaling."""
    bw = bandwidth_gbit * 1e9 / 8  # bytes per second
    grad_bytes = 4 * row["params"]
    compute = row["t_grad"] + row["t_update"]
    base = compute + row["overhead"]
    # partial sums between stages, through the driver: N workers' in, their totals N times out
    sync = row["sync_bytes"] + row["sync_down"]
    rounds = (row["stages"] - 1) * row["stage_rt"]  # as measured with 2 workers: a lower bound at N
    star = base + rounds + n * (2 * grad_bytes + sync) / bw  # the driver's link: parameters out, N gradients in
    ring = base + rounds + (n - 1) / n * (2 * grad_bytes + sync) / bw
    return star, base / star, ring, base / ring


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated spec names")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--bandwidth", type=float, default=10.0, help="network Gbit/s for the projection")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    names = [s for s in (args.only.split(",") if args.only else ["mlp", "cnn", "resnet", "transformer"])
             if (ROOT / "specs" / f"{s}.dl").exists()]
    rows = []
    with threadpool_limits(1, user_api="blas"):
        for name in names:
            rows.append(measure(str(ROOT / "specs" / f"{name}.dl"), args.steps))
    print("| spec | parameters | gradient bytes / worker / step | batch | t_grad ms | t_update ms | "
          "1 worker ms | 2 workers ms | Ray overhead ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spec']} | {r['params']:,} | {4 * r['params']:,} | {r['batch']} | {r['t_grad'] * 1e3:.2f} | "
              f"{r['t_update'] * 1e3:.2f} | {r['step1'] * 1e3:.2f} | {r['step2'] * 1e3:.2f} | "
              f"{r['overhead'] * 1e3:.2f} |")
    print("\nsynchronised batch statistics (N > 1):\n")
    print("| spec | stages | partial-sum bytes / worker / step: sent | received | t_grad ms (whole batch) | "
          "t_staged ms (2 shards, no Ray) | 1 worker ms | 2 workers ms | ms per round |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        staged = "—" if r["t_staged"] is None else f"{r['t_staged'] * 1e3:.2f}"
        per_round = "—" if r["stages"] == 1 else f"{r['stage_rt'] * 1e3:.2f}"
        print(f"| {r['spec']} | {r['stages']} | {r['sync_bytes']:,} | {r['sync_down']:,} | {r['t_grad'] * 1e3:.2f} | "
              f"{staged} | "
              f"{r['step1'] * 1e3:.2f} | {r['step2'] * 1e3:.2f} | {per_round} |")
    print(f"\nprojected, weak scaling (per-worker batch = the spec's), {args.bandwidth:g} Gbit/s:\n")
    print("| spec | N | dlc step ms | dlc efficiency | ring all-reduce step ms | ring efficiency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for n in (8, 64, 512):
            star, e_star, ring, e_ring = project(r, n, args.bandwidth)
            print(f"| {r['spec']} | {n} | {star * 1e3:.1f} | {e_star:.0%} | {ring * 1e3:.1f} | {e_ring:.0%} |")


if __name__ == "__main__":
    main()

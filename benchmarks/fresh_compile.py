"""Compile time in a fresh process: `dlc compile SPEC --train` against `torch.onnx.export`.

    python benchmarks/fresh_compile.py [--runs 7] [--only mlp,lstm]

For each workload of benchmarks/specs/, interleaved, ``--runs`` times:

- dlc: a fresh ``python -m dlc compile SPEC --train -o OUT --force`` — parse, lower,
  backprop, optimizer, passes, ONNX training step written to disk (the spec is
  copied beside a data file holding one batch, which the train block checks);
- PyTorch: a fresh process that imports torch, builds the workload's module
  (benchmarks/workloads.py) with dlc's initial weights and the batch (both read
  from an .npz written beforehand, so neither side pays for data or weights) and
  runs the legacy ``torch.onnx.export`` of the *inference* model.

Prints wall and CPU (user + system) medians in ms and the ratio dlc / torch; the
CPU time barely moves with the load of a shared machine.  PyTorch is optional:
without it only dlc's column is printed.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from workloads import WORKLOADS  # noqa: E402

TORCH_EXPORT = """
import io, sys
import numpy as np
import torch
sys.path.insert(0, {bench!r})
from workloads import WORKLOADS
w = next(w for w in WORKLOADS if w.name == {name!r})
data = np.load({npz!r})
params = {{k[2:]: data[k] for k in data.files if k.startswith("p:")}}
batch = {{k[2:]: data[k] for k in data.files if k.startswith("b:")}}
torch.set_num_threads(1)
module, _ = w.torch_model(params)
tensors = tuple(torch.from_numpy(batch[k]) for k in batch)
torch.onnx.export(module, tensors, io.BytesIO(), input_names=list(batch), output_names=["loss"], dynamo=False)
"""


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{res.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def has_torch() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated workload names")
    args = ap.parse_args()
    chosen = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a user's machine
    env.update(OMP_NUM_THREADS="1", DLC_THREADS="1")
    torch_ok = has_torch()
    tmp = Path(tempfile.mkdtemp(prefix="dlc-fresh-compile-"))
    import dlc

    commands = {}
    for w in chosen:
        out = tmp / f"{w.name}.train.onnx"
        spec = tmp / w.spec.name  # beside its data: the train block's file holds one batch
        spec.write_text(w.spec.read_text())
        (tmp / "data").mkdir(exist_ok=True)
        np.savez(tmp / "data" / f"{w.name}.npz", **w.batch(0))
        commands[(w.name, "dlc")] = [sys.executable, "-m", "dlc", "compile", str(spec), "--train",
                                     "-o", str(out), "--force"]
        if torch_ok:
            params = dlc.load(w.spec, mode="train").params
            npz = tmp / f"{w.name}.npz"
            np.savez(npz, **{f"p:{k}": v for k, v in params.items()},
                     **{f"b:{k}": v for k, v in w.batch(0).items()})
            script = TORCH_EXPORT.format(bench=str(ROOT / "benchmarks"), name=w.name, npz=str(npz))
            commands[(w.name, "torch")] = [sys.executable, "-c", script]
    for cmd in commands.values():  # warm: bytecode, the parser-table cache, the page cache
        timed(cmd, env)
    times: dict = {k: [] for k in commands}
    for _ in range(args.runs):
        for key, cmd in commands.items():  # interleaved: the machine's drift hits both sides alike
            times[key].append(timed(cmd, env))
    print(f"Fresh processes, {args.runs} interleaved runs each; median ms (wall / CPU).\n")
    print("| workload | dlc compile --train (wall / CPU) | torch.onnx.export, inference (wall / CPU) | "
          "ratio dlc / torch (CPU) |\n|---|---:|---:|---:|")
    for w in chosen:
        d = times[(w.name, "dlc")]
        dw, dc = statistics.median(t[0] for t in d) * 1e3, statistics.median(t[1] for t in d) * 1e3
        if torch_ok:
            t = times[(w.name, "torch")]
            tw, tc = statistics.median(x[0] for x in t) * 1e3, statistics.median(x[1] for x in t) * 1e3
            print(f"| {w.name} | {dw:.0f} / {dc:.0f} | {tw:.0f} / {tc:.0f} | {dc / tc:.2f}× |")
        else:
            print(f"| {w.name} | {dw:.0f} / {dc:.0f} | – | – |")


if __name__ == "__main__":
    main()

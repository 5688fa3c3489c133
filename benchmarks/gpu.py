"""Training-step times per spec on the best device onnxruntime offers here.

    python benchmarks/gpu.py                  # every spec with a train block
    python benchmarks/gpu.py --only mlp,cnn --steps 50

The device is ``cuda`` when onnxruntime has its CUDA execution provider
(``pip install onnxruntime-gpu`` in place of ``onnxruntime``) and a GPU answers,
else ``cpu``, and the script says which and why.  Each step runs through
``model.trainer(backend="onnxruntime", device=...)``: parameters and optimizer
state stay resident in onnxruntime's memory on that device between steps (IO
binding), so the time is the step's, not host copies'.  Every export is also
checked against onnxruntime's CUDA kernel table (compiler/onnx_cuda.py): an op
without a CUDA kernel would run on the CPU between two copies.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pick_device() -> tuple[str, str]:
    """(device, why)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return "cpu", f"no GPU found: this onnxruntime ({ort.__version__}) has {', '.join(providers)}"
    try:
        from dlc.runtime.ort import ResidentValues

        ResidentValues("cuda").set({"probe": __import__("numpy").zeros(1, "float32")})
    except Exception as e:  # noqa: BLE001 - the provider is there but no device answers
        return "cpu", f"no GPU found: CUDAExecutionProvider is installed but unusable ({e})"
    return "cuda", "CUDAExecutionProvider"


def time_spec(path: str, device: str, steps: int) -> tuple[float, float, int]:
    """(median ms per step, p75, the export's CUDA kernel gaps) for ``path``."""
    import dlc
    from dlc.compiler.onnx_cuda import cuda_gaps

    m = dlc.load(path, mode="train")
    gaps = len(cuda_gaps(m.to_onnx("train")))
    step = m.trainer(backend="onnxruntime", device=device)
    batches = [b for b, _ in zip((b for b, _ in step.train_batches(0)), range(steps))]
    step(batches[0])  # warm up: allocation, first-run kernel choices
    times = []
    for b in batches:
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e3, times[(3 * len(times)) // 4] * 1e3, gaps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated spec names (default: every trainable spec)")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    import dlc

    device, why = pick_device()
    print(f"device: {device} ({why})")
    wanted = set(filter(None, args.only.split(",")))
    print("| spec | ms / training step (median) | p75 | ops without a CUDA kernel |")
    print("|---|---|---|---|")
    for path in sorted(glob.glob(str(ROOT / "specs" / "*.dl"))):
        name = Path(path).stem
        if wanted and name not in wanted:
            continue
        if dlc.load(path).train_spec(required=False) is None:
            continue
        med, p75, gaps = time_spec(path, device, args.steps)
        print(f"| {name} | {med:.2f} | {p75:.2f} | {gaps} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

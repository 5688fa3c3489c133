"""How far the NumPy and onnxruntime backends drift apart while training (docs/onnx.md,
"Why the two backends' LSTM runs end apart"): both train the same spec from the same
parameters; prints the largest parameter difference relative to the parameter's scale.

    python benchmarks/backend_divergence.py
"""
from __future__ import annotations

import numpy as np

import dlc

QUIET = {"progress": False, "echo": lambda *a, **k: None}


def drift(spec: str, epochs: int) -> tuple[float, dict]:
    """(max relative parameter difference, {backend: test metrics}) after ``epochs``."""
    params, tests = {}, {}
    for backend in ("numpy", "onnxruntime"):
        m = dlc.load(f"specs/{spec}.dl", mode="train")
        tests[backend] = m.train(epochs=epochs, backend=backend, **QUIET).test
        params[backend] = m.params
    a, b = params["numpy"], params["onnxruntime"]
    return max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a), tests


if __name__ == "__main__":
    print("| spec | epochs | max relative parameter difference | test metrics numpy / onnxruntime |")
    print("|---|---|---|---|")
    for spec, epochs in (("mlp", 1), ("lstm", 1), ("lstm", 3)):
        rel, tests = drift(spec, epochs)
        print(f"| {spec} | {epochs} | {rel:.1e} | {tests['numpy']} / {tests['onnxruntime']} |")

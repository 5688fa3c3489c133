"""How far the NumPy and onnxruntime backends drift apart while training (docs/onnx.md,
"Why the two backends' LSTM runs end apart"): both train the same spec from the same
parameters; prints the largest parameter difference relative to the parameter's scale.

    python benchmarks/backend_divergence.py
"""
import numpy as np
import dlc
Q = {"progress": False, "echo": lambda *a, **k: None}
for spec, epochs in (("mlp", 1), ("lstm", 1), ("lstm", 3)):
    ps = {}
    for backend in ("numpy", "onnxruntime"):
        m = dlc.load(f"specs/{spec}.dl", mode="train")
        h = m.train(epochs=epochs, backend=backend, **Q)
        ps[backend] = (m.params, h.test)
    a, b = ps["numpy"][0], ps["onnxruntime"][0]
    rel = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)
    print(spec, epochs, "max rel param diff", f"{rel:.2e}", ps["numpy"][1], ps["onnxruntime"][1], flush=True)

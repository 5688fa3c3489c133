"""The window kernels at LeNet-5's shapes (batch 64, 1x28x28): milliseconds per call,
the best of several rounds (the machine is shared: read the best, not the mean).

    python benchmarks/windows.py
"""
from __future__ import annotations

import time

import numpy as np

from dlc.compiler.ops.registry import get_op

POOL = {"kernel": (2,), "stride": None, "padding": 0, "dilation": (1,), "ceil_mode": False}
CONV = {"stride": (1,), "padding": 0, "dilation": (1,), "groups": 1}


def best_ms(f, calls: int = 20, rounds: int = 7) -> float:
    f()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for image, maps in (((64, 6, 24, 24), 6), ((64, 16, 8, 8), 16)):
        x = rng.standard_normal(image).astype(np.float32)
        dy = rng.standard_normal((64, maps, image[2] // 2, image[3] // 2)).astype(np.float32)
        rows.append(("max_pool2d", image, best_ms(lambda: get_op("max_pool2d").kernel(x, **POOL))))
        rows.append(("max_pool2d_grad", image, best_ms(lambda: get_op("max_pool2d_grad").kernel(x, dy, **POOL))))
    for image, kernel in (((64, 1, 28, 28), (6, 1, 5, 5)), ((64, 6, 12, 12), (16, 6, 5, 5))):
        x = rng.standard_normal(image).astype(np.float32)
        w = rng.standard_normal(kernel).astype(np.float32)
        dy = rng.standard_normal((64, kernel[0], image[2] - 4, image[3] - 4)).astype(np.float32)
        rows.append(("conv2d", image, best_ms(lambda: get_op("conv2d").kernel(x, w, **CONV))))
        rows.append(("conv2d_grad_weight", image,
                     best_ms(lambda: get_op("conv2d_grad_weight").kernel(x, dy, kernel=kernel[2:], **CONV))))
        rows.append(("conv2d_grad_input", image,
                     best_ms(lambda: get_op("conv2d_grad_input").kernel(dy, w, size=image[2:], **CONV))))
    for name, image, ms in rows:
        print(f"{name:20s} {str(image):18s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()

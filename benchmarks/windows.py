"""The window kernels at the shapes of benchmarks/specs/lenet5.dl (batch 64, 1x28x28; conv 1
pads by 2): milliseconds per call with 1 BLAS thread, the best of several rounds (the machine
is shared: read the best, not the mean), beside PyTorch's kernel for the same work when
PyTorch is installed (max pooling: forward + backward; convs: torch.nn.grad).

    python benchmarks/windows.py
"""
from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from dlc.compiler.ops.registry import get_op

POOL = {"kernel": (2,), "stride": None, "padding": 0, "dilation": (1,), "ceil_mode": False}


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
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    rows = []
    for image in ((64, 6, 28, 28), (64, 16, 10, 10)):
        x = np.maximum(rng.standard_normal(image), 0).astype(np.float32)  # after a ReLU: many tied zeros
        dy = rng.standard_normal((*image[:2], image[2] // 2, image[3] // 2)).astype(np.float32)
        tx, tdy = (torch.from_numpy(x), torch.from_numpy(dy)) if torch else (None, None)

        def torch_grad(tx=tx, tdy=tdy):
            t = tx.detach().requires_grad_()
            torch.nn.functional.max_pool2d(t, 2).backward(tdy)

        rows.append(("max_pool2d", image, best_ms(lambda: get_op("max_pool2d").kernel(x, **POOL)),
                     torch and best_ms(lambda: torch.nn.functional.max_pool2d(tx, 2))))
        rows.append(("max_pool2d_grad", image, best_ms(lambda: get_op("max_pool2d_grad").kernel(x, dy, **POOL)),
                     torch and best_ms(torch_grad)))
    for image, kernel, pad in (((64, 1, 28, 28), (6, 1, 5, 5), 2), ((64, 6, 14, 14), (16, 6, 5, 5), 0)):
        conv = {"stride": (1,), "padding": pad, "dilation": (1,), "groups": 1}
        x = rng.standard_normal(image).astype(np.float32)
        w = rng.standard_normal(kernel).astype(np.float32)
        side = image[2] + 2 * pad - kernel[2] + 1
        dy = rng.standard_normal((64, kernel[0], side, side)).astype(np.float32)
        tx, tw, tdy = (torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)) if torch else (None,) * 3
        rows.append(("conv2d", image, best_ms(lambda: get_op("conv2d").kernel(x, w, **conv)),
                     torch and best_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=pad))))
        rows.append(("conv2d_grad_weight", image,
                     best_ms(lambda: get_op("conv2d_grad_weight").kernel(x, dy, kernel=kernel[2:], **conv)),
                     torch and best_ms(lambda: torch.nn.grad.conv2d_weight(tx, kernel, tdy, padding=pad))))
        rows.append(("conv2d_grad_input", image,
                     best_ms(lambda: get_op("conv2d_grad_input").kernel(dy, w, size=image[2:], **conv)),
                     torch and best_ms(lambda: torch.nn.grad.conv2d_input(image, tw, tdy, padding=pad))))
    print(f"{'kernel':20s} {'x':18s} {'dlc ms':>8s} {'torch ms':>9s}")
    for name, image, ms, theirs in rows:
        print(f"{name:20s} {str(image):18s} {ms:8.3f} {theirs:9.3f}" if theirs else
              f"{name:20s} {str(image):18s} {ms:8.3f}")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()

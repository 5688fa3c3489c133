"""The GAN specs' sample-quality figures, measured as tests/test_gan_specs.py measures them.

    python benchmarks/gan_quality.py [spec ...]     # default: gan wgan wgan_gp cgan

For each spec and backend: train with the spec's train block (its seed), draw 2000
samples, print the mean distance to the nearest mode over the data's own (ratio),
the modes covered, the training time; for cgan the share of class-k samples nearest
to mode k.  The spec headers quote these numbers.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import dlc  # noqa: E402
from test_gan_specs import mode_stats, modes, samples  # noqa: E402

DATA = {"gan": (3, 0.5), "wgan": (8, 0.1), "wgan_gp": (8, 0.1), "cgan": (8, 0.1)}


def measure(spec: str, backend: str) -> str:
    k, std = DATA[spec]
    m = dlc.load(ROOT / "specs" / f"{spec}.dl")
    t0 = time.perf_counter()
    m.train(backend=backend, progress=False, echo=lambda *_: None)
    took = time.perf_counter() - t0
    if spec == "cgan":
        y = np.repeat(np.arange(k), 250)
        d = np.linalg.norm(samples(m, len(y), y=y)[:, None] - modes(k)[None], axis=2)
        own = d[np.arange(len(y)), y].mean() / (std * np.sqrt(np.pi / 2))
        return f"| {spec} | {backend} | class-k nearest mode k {(d.argmin(1) == y).mean():.1%} | own-mode ratio {own:.2f} | {took:.1f} s |"
    ratio, covered = mode_stats(samples(m), k, std)
    return f"| {spec} | {backend} | ratio {ratio:.2f} | {covered}/{k} modes | {took:.1f} s |"


def main(specs: list[str]) -> None:
    print("| spec | backend | quality | coverage | training time |\n|---|---|---|---|---|")
    for spec in specs:
        for backend in ("numpy", "onnxruntime"):
            print(measure(spec, backend), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(DATA))

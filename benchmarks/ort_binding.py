"""What keeping parameters in onnxruntime memory saves per training step.

    python benchmarks/ort_binding.py

For the digits MLP, the XOR MLP and the Transformer spec, one training step through
``model.trainer(backend="onnxruntime")`` (parameters and optimizer state resident as
OrtValues, IO bindings built once, double buffers swapped) against the stateless
runner the loop used before (NumPy arrays in, dicts rebuilt, ``session.run`` copying
every parameter in and out).  Same session options, same thread count; the lower
quartile of 300 steps each.
"""
from __future__ import annotations


import numpy as np

import dlc
from dlc.compiler.training.step import initial_state
from dlc.runtime.data import batches
from dlc.runtime.runner import make_runner
from timing import run_times


def quartile_us(fn, n: int = 300) -> float:
    times = sorted(run_times(fn, n))
    return times[len(times) // 4] * 1e6


def main() -> None:
    print("| spec | trainer step, IO binding (µs) | stateless runner step (µs) |")
    print("|---|---:|---:|")
    for spec in ("specs/xor.dl", "specs/mlp.dl", "specs/transformer.dl"):
        m = dlc.load(spec, mode="train")
        trainer = m.trainer(backend="onnxruntime")
        batch = next(batches(trainer.splits["train"], trainer.spec.batch, shuffle=True, seed=0, epoch=0))
        step = trainer.steps[0]
        run = make_runner(step.graph, "onnxruntime")
        params, state = dict(m.params), {**m.state, **initial_state(step)}
        feeds = {**batch, "__rng": np.int64(0)}

        def stateless():
            out = run(feeds, params, state)
            for k in step.params:
                params[k] = out[f"new/{k}"]
            for k in step.state_init:
                state[k] = out[f"new/{k}"]

        print(f"| {spec} | {quartile_us(lambda: trainer(batch)):.0f} | {quartile_us(stateless):.0f} |")


if __name__ == "__main__":
    main()

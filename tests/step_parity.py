"""Shared by the spec tests: one exported training step against the interpreter's."""
from __future__ import annotations

import numpy as np
import onnx

from dlc.compiler.training.step import initial_state
from dlc.runtime.ort import OrtSession
from dlc.runtime.runner import make_runner
from dlc.runtime.train import build_steps


def check_training_step(m, feeds: dict, *, label: str = "", rtol: float = 1e-5, atol: float = 2e-5,
                        proto=None) -> tuple[dict, dict]:
    """Run the first step group's training step on ``feeds`` (a batch, ``__rng`` included)
    in NumPy and in onnxruntime from the exported model (checked with the full onnx
    checker); assert every output agrees; return (numpy outputs, onnxruntime outputs)."""
    proto = proto if proto is not None else m.to_onnx("train")
    onnx.checker.check_model(proto, full_check=True)
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    state = {**m.state, **initial_state(step)}  # the spec's running statistics and the optimizer's slots
    want = make_runner(step.graph, "numpy")(feeds, m.params, state)
    got = OrtSession(proto).run({**feeds, **m.params, **state})
    assert {f"new/{k}" for k in step.params} <= set(want)  # the parameters this step group trains
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{label} {k}")
    return want, got

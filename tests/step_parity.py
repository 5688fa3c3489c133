"""Shared by the spec tests: one exported training step against the interpreter's."""
from __future__ import annotations

import numpy as np
import onnx

from dlc.compiler.training.step import initial_state
from dlc.runtime.ort import OrtSession
from dlc.runtime.runner import make_runner
from dlc.runtime.trainer import build_steps


def steps_per_epoch(proto) -> int:
    """The schedule's steps per epoch the exported step was built with (its ``dlc.steps_per_epoch``):
    the NumPy step must use the same, or every schedule but `constant` disagrees after a step."""
    return int({p.key: p.value for p in proto.metadata_props}["dlc.steps_per_epoch"])


def check_training_step(m, feeds: dict, *, label: str = "", rtol: float = 1e-5, atol: float = 2e-5,
                        proto=None) -> tuple[dict, dict]:
    """Run the first step group's training step on ``feeds`` (a batch, ``__rng`` included)
    in NumPy and in onnxruntime from the exported model (checked with the full onnx
    checker); assert every output agrees; return (numpy outputs, onnxruntime outputs)."""
    proto = proto if proto is not None else m.to_onnx("train")
    onnx.checker.check_model(proto, full_check=True)
    step = build_steps(m, m.train_spec(), steps_per_epoch=steps_per_epoch(proto))[0]
    state = {**m.state, **initial_state(step)}  # the spec's running statistics and the optimizer's slots
    want = make_runner(step.graph, "numpy")(feeds, m.params, state)
    got = OrtSession(proto).run({**feeds, **m.params, **state})
    assert {f"new/{k}" for k in step.params} <= set(want)  # the parameters this step group trains
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{label} {k}")
    return want, got


def check_groups_after_k_steps(m, batches: list[dict], *, rtol: float = 1e-4, atol: float = 1e-5) -> dict:
    """Run every step group's training step on ``batches`` (the loop's schedule: a group
    runs on batch i when i % every == 0, `repeat` times) twice, from the same start: in
    the NumPy interpreter and in onnxruntime from each group's exported ONNX step (full
    checker); each side feeds its own outputs back.  Asserts the parameters and state
    agree after the last batch; returns the NumPy side's parameters."""
    from dlc.compiler.graph import RNG_INPUT

    spec = m.train_spec()
    protos = [m.to_onnx("train", group=group.name) for group in spec.steps]
    steps = build_steps(m, spec, steps_per_epoch=steps_per_epoch(protos[0]))
    for p in protos:
        onnx.checker.check_model(p, full_check=True)
    runs = {"numpy": [make_runner(s.graph, "numpy") for s in steps],
            "onnxruntime": [(lambda sess: lambda f, p, s: sess.run({**f, **p, **s}))(OrtSession(p)) for p in protos]}
    state0 = dict(m.state)
    for s in steps:
        state0.update(initial_state(s))
    ends = {}
    for backend, runners in runs.items():
        params, state = {k: v.copy() for k, v in m.params.items()}, {k: v.copy() for k, v in state0.items()}
        for i, batch in enumerate(batches):
            for gi, (s, run) in enumerate(zip(steps, runners)):
                if i % s.every:
                    continue
                for r in range(s.repeat):
                    out = run({**batch, RNG_INPUT: np.int64(1000 * i + 10 * gi + r)}, params, state)
                    params.update({k: out[f"new/{k}"] for k in s.params})
                    state.update({k: out[f"new/{k}"] for k in s.state_init})
        ends[backend] = (params, state)
    for k in ends["numpy"][0]:
        np.testing.assert_allclose(ends["onnxruntime"][0][k], ends["numpy"][0][k], rtol=rtol, atol=atol,
                                   err_msg=f"parameter {k} after {len(batches)} batches")
    for k in ends["numpy"][1]:
        np.testing.assert_allclose(ends["onnxruntime"][1][k], ends["numpy"][1][k], rtol=rtol, atol=atol,
                                   err_msg=f"state {k} after {len(batches)} batches")
    return ends["numpy"][0]

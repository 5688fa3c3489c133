"""specs/cnn.dl: reaches the test accuracy its header promises, and its exported
training step computes what the interpreter computes."""
from __future__ import annotations

import numpy as np
import onnx

import dlc
from dlc.compiler.training.step import initial_state
from dlc.runtime.ort import OrtSession
from dlc.runtime.runner import make_runner
from dlc.runtime.train import build_steps

SPEC = "specs/cnn.dl"
QUIET = {"progress": False, "echo": lambda s: None}


def test_cnn_reaches_96_percent_on_digits():
    h = dlc.load(SPEC, mode="train").train(**QUIET)
    assert h.test["accuracy"] >= 0.96


def test_cnn_training_step_matches_the_interpreter():
    m = dlc.load(SPEC, mode="train")
    proto = m.to_onnx(train=True)
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "ScatterElements"} <= ops  # forward and backward convs, pooling
    step = build_steps(m, m.train_spec(), steps_per_epoch=10)[0]
    rng = np.random.default_rng(0)
    state = initial_state(step)
    run = make_runner(step.graph, "numpy")
    session = OrtSession(proto)
    for batch in (3, 5):  # the batch dim stays symbolic in the exported step
        feeds = {"x": rng.uniform(0, 16, (batch, 64)).astype(np.float32),
                 "y": rng.integers(0, 10, batch).astype(np.int64), "__rng": np.int64(7)}
        want = run(feeds, m.params, state)
        got = session.run({**feeds, **m.params, **state})
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-5, err_msg=k)

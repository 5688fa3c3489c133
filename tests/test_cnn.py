"""specs/cnn.dl: reaches the test accuracy its header promises, and its exported
training step computes what the interpreter computes."""
from __future__ import annotations

import numpy as np

import dlc
from step_parity import check_training_step

SPEC = "specs/cnn.dl"
QUIET = {"progress": False, "echo": lambda s: None}


def test_cnn_reaches_96_percent_on_digits():
    m = dlc.load(SPEC, mode="train")
    before = {k: v.copy() for k, v in m.state.items()}
    h = m.train(**QUIET)
    assert h.test["accuracy"] >= 0.96
    # batch normalisation's running statistics are state: trained runs move them, eval mode uses them
    assert sorted(before) == ["h1.out.mean", "h1.out.var", "h2.out.mean", "h2.out.var"]
    assert all(not np.allclose(before[k], m.state[k]) for k in before)
    ev = dlc.load(SPEC)
    ev.params, ev.state = m.params, m.state
    x = np.random.default_rng(0).uniform(0, 1, (5, 64)).astype(np.float32)
    feeds = {"x": x, "y": np.zeros(5, np.int64)}
    trained = ev.run(feeds)["probs"]
    np.testing.assert_allclose(trained, ev.run(feeds, backend="onnxruntime")["probs"], atol=2e-5)
    ev.state = before  # the initial statistics give other predictions: eval mode reads the state
    assert not np.allclose(ev.run(feeds)["probs"], trained, atol=1e-3)


def test_cnn_training_step_matches_the_interpreter():
    m = dlc.load(SPEC, mode="train")
    proto = m.to_onnx("train")
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "ScatterElements"} <= ops  # forward and backward convs, pooling
    rng = np.random.default_rng(0)
    for batch in (3, 5):  # the batch dim stays symbolic in the exported step
        feeds = {"x": rng.uniform(0, 16, (batch, 64)).astype(np.float32),
                 "y": rng.integers(0, 10, batch).astype(np.int64), "__rng": np.int64(7)}
        check_training_step(m, feeds, label=f"batch {batch}", proto=proto)

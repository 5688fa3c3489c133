"""Scans with a static trip count unroll into straight-line ONNX (compiler/onnx_unroll.py), and the
onnxruntime backend runs a batch shape's unrolled session (runtime/ort.py, Unrolled)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.onnx_unroll import MAX_UNROLLED_NODES, scan_count, specialize, unroll_scans
from dlc.runtime.ort import BoundRun, OrtSession

RNN = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H] = glorot_uniform()
    param Wh: [H, H] = orthogonal()
    return tanh(x @ Wx + h @ Wh)
}
model m() {
    input xs: f32[B, T, 3]
    input h0: f32[B, 4]
    seq, h_last = scan cell over xs axis 1 init (h0)%s
    output hs = seq * 2.0
    output last = h_last
}
"""


def ops_of(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def same_outputs(a, b, feeds):
    want, got = OrtSession(a).run(feeds), OrtSession(b).run(feeds)
    assert set(want) == set(got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("reverse", ["", " reverse"])
def test_a_fixed_length_scan_unrolls_with_the_scans_values(reverse):
    proto = dlc.compile(RNN % reverse).to_onnx()
    rng = np.random.default_rng(0)
    feeds = {"xs": rng.standard_normal((2, 5, 3)).astype(np.float32),
             "h0": rng.standard_normal((2, 4)).astype(np.float32)}
    fixed = specialize(proto, {"B": 2, "T": 5})
    unrolled = unroll_scans(fixed)
    assert scan_count(proto) == 1 and scan_count(unrolled) == 0
    same_outputs(proto, unrolled, feeds)


def test_dynamic_lengths_and_long_loops_keep_their_scan():
    proto = dlc.compile(RNN % "").to_onnx()
    assert unroll_scans(proto) is proto  # T unknown: nothing to unroll
    fixed = specialize(proto, {"B": 2, "T": 5})
    assert unroll_scans(fixed, max_nodes=5 * 4 - 1) is fixed  # 5 steps of a 4-node body: over the threshold
    assert scan_count(unroll_scans(fixed, max_nodes=5 * 4)) == 0  # at it: unrolled
    assert MAX_UNROLLED_NODES >= 32 * 14  # the benchmark LSTM's scans (T = 32) unroll


def test_a_bptt_step_unrolls_and_reads_the_forward_steps_directly():
    """Both scans of the LSTM training step unroll; the reversed scan takes the forward scan's
    per-step residuals as they are (no stacking and re-slicing in between)."""
    model = dlc.load("specs/lstm.dl", mode="train")
    proto = model.to_onnx("train")
    fixed = specialize(proto, {"B": 3, "T": 6})
    unrolled = unroll_scans(fixed)
    assert scan_count(proto) == 2 and scan_count(unrolled) == 0
    backward = next(n for n in fixed.graph.node if n.op_type == "Scan" and len(n.input) > 3)
    # one Split per step in the cell, one slicing the forward's input, and fewer than one per
    # backward sequence: the residuals are not stacked and sliced again
    assert ops_of(unrolled)["Split"] < 6 + 1 + len(backward.input) - 2
    rng = np.random.default_rng(0)
    xs = rng.random((3, 6, 2)).astype(np.float32)
    same_outputs(proto, unrolled, {"xs": xs, "y": np.array([0, 1, 1])})


def test_the_onnxruntime_trainer_runs_each_batch_shape_unrolled():
    model = dlc.load("specs/lstm.dl", mode="train")
    steps = {b: model.trainer(backend=b) for b in ("numpy", "onnxruntime")}
    rng = np.random.default_rng(0)
    for n in (4, 4, 3):  # a short last batch gets its own session
        batch = {"xs": rng.random((n, 6, 2)).astype(np.float32), "y": rng.integers(0, 2, n)}
        losses = {b: step(batch)["loss"] for b, step in steps.items()}
        assert losses["onnxruntime"] == pytest.approx(losses["numpy"], rel=1e-5)
    run = steps["onnxruntime"].groups[0].run
    assert sorted(run.runs) == [(("B", 3), ("T", 6)), (("B", 4), ("T", 6))]
    assert all(isinstance(r, BoundRun) and r is not run.generic for r in run.runs.values())
    want, got = steps["numpy"].params, steps["onnxruntime"].params
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)

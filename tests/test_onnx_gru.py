"""A GRU cell's scan exports as the ONNX `GRU` op (compiler/onnx_gru.py), with the interpreter's
values; other cells keep the generic `Scan`."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.onnx_export import verify
from dlc.runtime.ort import OrtSession


def spec(xsplit: str = "xz, xr, xn", hsplit: str = "hz, hr", mix: str = "(1.0 - z) * n + z * h",
         candidate: str = "tanh(xn + (r * h) @ Wn)", scan: str = "over xs axis 1", xs: str = "[B, T, 3]",
         reverse: str = "") -> str:
    return f"""
layer cell(x: f32[B, I], h: f32[B, H]) {{
    param Wx: [I, 3 * H] = glorot_uniform()
    param Wh: [H, 2 * H] = orthogonal()
    param Wn: [H, H]     = orthogonal()
    param b:  [3 * H]    = uniform(-0.5, 0.5)
    {xsplit} = split(x @ Wx + b, 3, axis = -1)
    {hsplit} = split(h @ Wh, 2, axis = -1)
    z = sigmoid(xz + hz)
    r = sigmoid(hr + xr)
    n = {candidate}
    return {mix}
}}
model m() {{
    input xs: f32{xs}
    seq, h_last = scan cell {scan} init (zeros([B, 5])){reverse}
    output hs = seq
    output last = h_last
}}
"""


def ops_of(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def check(text: str, shape=(3, 6, 3)):
    model = dlc.compile(text)
    proto = model.to_onnx()
    xs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = model.run({"xs": xs})
    got = OrtSession(proto).run({"xs": xs})
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    return proto, model


@pytest.mark.parametrize("text,shape", [
    (spec(), (3, 6, 3)),
    (spec(xsplit="xn, xz, xr", hsplit="hr, hz"), (3, 6, 3)),  # chunk order is read from the dataflow
    (spec(mix="h * z + n * (1.0 - z)", candidate="tanh((r * h) @ Wn + xn)"), (3, 6, 3)),  # operand order
    (spec(reverse=" reverse"), (3, 6, 3)),
    (spec(scan="over xs axis 0", xs="[T, B, 3]"), (6, 3, 3)),
], ids=["standard", "chunk-order", "commuted", "reverse", "time-major"])
def test_gru_cell_scan_is_one_gru_node_with_the_interpreters_values(text, shape):
    proto, model = check(text, shape)
    verify(proto, model.graph)
    assert ops_of(proto)["GRU"] == 1 and ops_of(proto)["Scan"] == 0


@pytest.mark.parametrize("text", [
    spec(mix="z * n + (1.0 - z) * h"),  # the other mixing convention
    spec(candidate="tanh(xn + r * (h @ Wn))"),  # reset after the matrix (linear_before_reset = 1)
    # (r * h) @ Wn of one column broadcasts: GRU's R would be [2H + 1, H] (onnxruntime rejected it)
    spec().replace("param Wn: [H, H]", "param Wn: [H, 1]"),
])
def test_other_cells_keep_the_generic_scan(text):
    proto, _ = check(text)
    assert ops_of(proto)["GRU"] == 0 and ops_of(proto)["Scan"] == 1


def test_the_example_gru_exports_as_gru_and_its_training_step_keeps_scans():
    model = dlc.load("specs/gru.dl")
    assert ops_of(model.to_onnx())["GRU"] == 1
    counts = ops_of(dlc.load("specs/gru.dl", mode="train").to_onnx("train"))
    assert counts["GRU"] == 0 and counts["Scan"] == 2

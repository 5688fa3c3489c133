"""An LSTM cell's scan exports as the ONNX `LSTM` op (compiler/onnx_lstm.py), with the
interpreter's values; anything that is not exactly the cell keeps the generic `Scan`."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import dlc
from dlc.compiler.onnx_export import verify
from dlc.runtime.ort import OrtSession


def spec(gates: str = "i, f, g, o", forget: str = "sigmoid(f)", cell: str = "sigmoid(o) * tanh(c2)",
         scan: str = "over xs axis 1", order: str = "h2, c2", reverse: str = "",
         carries: str = "h: f32[B, H], c: f32[B, H]", init: str = "(zeros([B, 5]), zeros([B, 5]))",
         xs: str = "[B, T, 3]", outputs: str = "output last = h_last\n    output cl = c_last") -> str:
    return f"""
layer cell(x: f32[B, I], {carries}) {{
    param Wx: [I, 4 * H] = glorot_uniform()
    param Wh: [H, 4 * H] = orthogonal()
    param b:  [4 * H]    = uniform(-0.5, 0.5)
    {gates} = split(x @ Wx + h @ Wh + b, 4, axis = -1)
    c2 = {forget} * c + sigmoid(i) * tanh(g)
    h2 = {cell}
    return {order}
}}
model m() {{
    input xs: f32{xs}
    seq, h_last, c_last = scan cell {scan} init {init}{reverse}
    output hs = seq
    {outputs}
}}
"""


def ops_of(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def check(text: str, shape=(3, 6, 3), outputs=None, rtol=1e-5):
    model = dlc.compile(text)
    proto = model.to_onnx(outputs=outputs)
    xs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = model.run({"xs": xs}, outputs=outputs)
    got = OrtSession(proto).run({"xs": xs})
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-6, err_msg=k)
    return proto


@pytest.mark.parametrize("text", [
    spec(),  # the standard cell, batch-major, every output
    spec(gates="o, g, i, f"),  # gate order is read from the dataflow
    spec(forget="sigmoid(f + 1.0)"),  # a constant gate offset folds into the recurrent bias
    spec(reverse=" reverse"),
    spec(scan="over xs axis 0", xs="[T, B, 3]"),
    spec(cell="tanh(c2) * sigmoid(o)"),  # operands in either order
], ids=["standard", "gate-order", "forget-offset", "reverse", "time-major", "commuted"])
def test_lstm_cell_scan_is_one_lstm_node_with_the_interpreters_values(text):
    proto = check(text)
    verify(proto, dlc.compile(text).graph)
    assert ops_of(proto)["LSTM"] == 1 and ops_of(proto)["Scan"] == 0


def test_the_final_carries_alone_need_no_stacked_output():
    proto = check(spec(), outputs=["last", "cl"])
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    assert lstm.output[0] == ""  # Y is not computed
    assert ops_of(proto)["Scan"] == 0 and ops_of(proto)["MatMul"] == 0  # nor the x @ Wx the Scan read


def test_carries_in_the_other_order():
    """(c, h) carries: the per-step output is then c, so only the final carries are asked for."""
    text = spec(order="c2, h2", carries="c: f32[B, H], h: f32[B, H]").replace("seq, h_last, c_last",
                                                                             "seq, c_last, h_last")
    proto = check(text, outputs=["last", "cl"])
    assert ops_of(proto)["LSTM"] == 1


@pytest.mark.parametrize("text", [
    spec(cell="sigmoid(o) * relu(c2)"),  # not an LSTM nonlinearity
    spec(forget="sigmoid(f) * 0.5"),  # an extra node in the cell
    spec(order="c2, h2"),  # h and c swap every step: not an LSTM
    spec(order="c2, h2", carries="c: f32[B, H], h: f32[B, H]"),  # stacked c, which LSTM does not return
    # h @ Wh of one column broadcasts over the gates: LSTM's R would be [4H, H] (onnxruntime rejected the Gather)
    spec().replace("param Wh: [H, 4 * H]", "param Wh: [H, 1]"),
])
def test_other_cells_keep_the_generic_scan(text):
    proto = check(text)
    assert ops_of(proto)["LSTM"] == 0 and ops_of(proto)["Scan"] == 1


def test_benchmark_and_example_lstms_export_as_lstm():
    for path in ("specs/lstm.dl", "benchmarks/specs/lstm.dl"):
        counts = ops_of(dlc.load(path).to_onnx())
        assert counts["LSTM"] == 1 and counts["Scan"] == 0, path


def test_a_training_step_keeps_its_scans():
    """The forward scan of BPTT stacks the gate values, which LSTM does not return."""
    counts = ops_of(dlc.load("specs/lstm.dl").to_onnx("train"))
    assert counts["LSTM"] == 0 and counts["Scan"] == 2


@pytest.mark.parametrize("spec", ["lstm", "gru"])
def test_an_empty_batch_is_an_error_on_onnxruntime_not_an_abort(spec):
    """onnxruntime's LSTM / GRU kernels end the process on an empty batch (std::terminate):
    the runner refuses it with E0401 first, so the caller's process lives; the NumPy backend
    runs it.  In a subprocess, so a regression fails this test rather than the whole run."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys
sys.path.insert(0, "tests")
import dlc
from dlc.grammar.errors import DlcError
from test_onnx_specs import feeds_for
m = dlc.load("specs/{spec}.dl")
feeds = feeds_for(m, 0, 5)
out = m.run(feeds)
print("numpy", sorted((k, v.shape[0]) for k, v in out.items() if v.ndim))
try:
    m.run(feeds, backend="onnxruntime")
    print("ran")
except DlcError as e:
    print("E0401" if e.code == "E0401" else e.code, "abort the whole process" in str(e))
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "E0401 True"
    assert lines[0].startswith("numpy") and all(n == 0 for _, n in eval(lines[0][len("numpy "):]))

"""Recurrence the way fast RNN libraries run it: a training step sweeps forward
once, loop-invariant work (input projections, weight gradients) runs as big
GEMMs outside the loop, and the results equal the graph as lowered on both
backends."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.compiler.passes.pipeline import optimize
from dlc.compiler.training.step import initial_state
from dlc.runtime.kernel_counts import counting_kernel_calls
from dlc.runtime.runner import make_runner
from dlc.runtime.trainer import build_steps
from step_parity import check_training_step

ROOT = Path(__file__).resolve().parent.parent
CELLS = ["rnn", "lstm", "gru"]
RECURRENT_MATMULS = {"rnn": 1, "lstm": 1, "gru": 2}  # h @ Wh (and the GRU's (r * h) @ Wn) stay in the loop


def _step(spec: str):
    m = dlc.load(ROOT / "specs" / f"{spec}.dl", mode="train")
    return m, build_steps(m, m.train_spec(), steps_per_epoch=10)[0]


def _optimized(graph, level: int = 2, backend: str = "numpy"):
    return optimize(graph, level, backend, check=True)  # verify() after every pass, scan bodies included


def _feeds(batch: int, length: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"xs": rng.standard_normal((batch, length, 2)).astype(np.float32),
            "y": rng.integers(0, 2, batch).astype(np.int64), "__rng": np.int64(3)}


def _run(m, step, feeds, level: int = 2) -> tuple[dict, int, int]:
    state = {**m.state, **initial_state(step)}
    run = make_runner(step.graph, "numpy", level)
    with counting_kernel_calls() as n:
        out = run(feeds, m.params, state)
    return out, n.calls, n.runs


def _scans(g):
    return {g[n].role: g[n] for n in g.nodes() if g.op(n) == "scan"}


def _ops(body) -> list[str]:
    return [body.op(n) for n in body.nodes()]


@pytest.mark.parametrize("backend", ["numpy", "onnx"])
@pytest.mark.parametrize("spec", CELLS)
def test_a_training_step_sweeps_forward_once(spec, backend):
    m, step = _step(spec)
    for g in (step.graph, _optimized(step.graph, 2, backend)):
        scans = _scans(g)
        assert len([n for n in g.nodes() if g.op(n) == "scan"]) == 2
        fwd, back = scans["forward"], scans["backward"]
        # the reversed body is the cell's VJP: it re-runs no activation of the cell
        assert not {"sigmoid", "tanh"} & set(_ops(back.attrs["body"]))
        assert fwd.attrs["residuals"] > 0  # the forward scan stacks what the VJP reads
    # optimized: no weight gradient accumulates in the loop, x @ Wx left it
    assert back.attrs["n_carry"] == fwd.attrs["n_carry"]
    # and no sequence is sliced for nothing: x_t was read by dWx's increment alone
    for scan in (fwd, back):
        body, k, m_seq = scan.attrs["body"], scan.attrs["n_carry"], scan.attrs["n_seq"]
        assert all(body.consumers(x) for x in body.inputs[k:k + m_seq])
    if backend == "onnx":  # unfused bodies: the recurrent products are all that is left of the GEMMs
        assert _ops(fwd.attrs["body"]).count("matmul") == RECURRENT_MATMULS[spec]
    length = 6
    for level in (0, 2):
        _, _, runs = _run(m, step, _feeds(4, length), level)
        assert runs == 1 + 2 * length  # the step itself, then each body once per step: forward, backward


@pytest.mark.parametrize("spec", CELLS)
def test_kernel_calls_per_step_do_not_grow_with_the_batch(spec):
    m, step = _step(spec)
    _, small, _ = _run(m, step, _feeds(2))
    _, large, _ = _run(m, step, _feeds(64))
    assert small == large
    _, unoptimized, _ = _run(m, step, _feeds(2), level=0)
    assert small < unoptimized / 2


@pytest.mark.parametrize("spec", CELLS)
def test_the_optimized_step_equals_the_graph_as_built(spec):
    m, step = _step(spec)
    feeds = _feeds(5, length=7)
    want, _, _ = _run(m, step, feeds, level=0)
    only_scans = step.graph.copy()
    from dlc.compiler.passes.hoist_scan_invariants import hoist_scan_invariants

    assert hoist_scan_invariants(only_scans) == 2
    only_scans.verify()
    state = {**m.state, **initial_state(step)}
    for got in (make_runner(only_scans, "numpy", 0)(feeds, m.params, state), _run(m, step, feeds)[0]):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=f"{spec} {k}")
    # the exported optimized step (its Scan stacks the residuals) agrees in onnxruntime
    check_training_step(m, feeds, label=spec)


@pytest.mark.parametrize("spec", CELLS)
def test_inference_reads_the_projected_sequence(spec):
    m = dlc.load(ROOT / "specs" / f"{spec}.dl")
    g = _optimized(m.graph, 2, "onnx")
    (scan,) = [g[n] for n in g.nodes() if g.op(n) == "scan"]
    assert _ops(scan.attrs["body"]).count("matmul") == RECURRENT_MATMULS[spec]
    feeds = {k: v for k, v in _feeds(3, 9).items() if k != "__rng"}
    want = make_runner(m.graph, "numpy", 0)(feeds, m.params, m.state)
    got = m.run(feeds)
    ort = m.run(feeds, backend="onnxruntime")
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(ort[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_gradients_of_the_optimized_graph_match_finite_differences():
    from dlc.runtime.gradcheck import gradcheck

    m = dlc.load(ROOT / "specs" / "lstm.dl", mode="train")
    assert max(gradcheck(m, echo=lambda s: None).values()) < 1e-6  # the graph as built
    feeds = {k: v for k, v in _feeds(3, 5).items() if k != "__rng"}
    fast = m.gradients(feeds)  # at the model's level, 2
    m.opt_level = 0
    plain = m.gradients(feeds)
    for k in plain:
        np.testing.assert_allclose(fast[k], plain[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_the_exported_training_step_has_two_scans_and_matches():
    m, _ = _step("lstm")
    proto = m.to_onnx("train")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Scan") == 2
    assert ops.count("MatMul") >= 4  # x @ Wx before the loop; dWx, dWh after it; the head's
    check_training_step(m, _feeds(3, 5), label="lstm", proto=proto)


def test_the_compiler_does_not_import_the_runtime():
    """Imports run one way: a kernel that runs a body gets a context object instead."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "compiler").rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+(dlc\.runtime|\.\.+runtime)", p.read_text(), re.M)]
    assert offenders == []
    code = ("import sys, dlc.compiler.lower, dlc.compiler.training.step, dlc.compiler.onnx_export, "
            "dlc.compiler.ops.control, dlc.compiler.passes.hoist_scan_invariants\n"
            "print(sorted(m for m in sys.modules if m.startswith('dlc.runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("hoist", [False, True])
def test_second_order_through_bptt_matches_finite_differences(hoist):
    """d/dW of |dL/dW|²: the backward scan (with its residual inputs) differentiates like any scan."""
    from dlc.compiler.passes.backprop import backprop
    from dlc.compiler.passes.hoist_scan_invariants import hoist_scan_invariants
    from dlc.runtime.interpreter import Plan
    from test_scan import _data, numeric_param_grads, rnn_graph

    g, b, loss = rnn_graph()
    grads = backprop(g, loss, ["Wx", "Wh"], builder=b)
    penalty = b.add(b.sum(b.mul(grads["Wx"], grads["Wx"])), b.sum(b.mul(grads["Wh"], grads["Wh"])))
    second = backprop(g, penalty, ["Wx", "Wh"], builder=b)
    g.set_outputs({"penalty": penalty, "dWx": second["Wx"], "dWh": second["Wh"]})
    g.prune({v.node for v in g.outputs.values()})
    if hoist:
        assert hoist_scan_invariants(g) > 0
    g.verify()
    feeds, params = _data()
    out = Plan(g).run(feeds, params)
    plan = Plan(g, ["penalty"])
    for name, num in numeric_param_grads(plan, "penalty", feeds, params, ("Wx", "Wh")).items():
        np.testing.assert_allclose(out["d" + name], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("spec", CELLS)
def test_weight_gradients_flatten_the_stacks_in_step_order(spec):
    """The hoisted weight-gradient GEMMs contract over the rows in step-major order, the
    order the NumPy scan stacks its outputs in: a scan output is flattened through the
    transpose that undoes its view (free), never reshaped as declared (a copy)."""
    _, step = _step(spec)
    g = _optimized(step.graph)
    flats = [n for n in g.nodes() if g.op(n) == "reshape" and g.type_of(g[n].inputs[0]).rank == 3]
    sources = [g[n].inputs[0] for n in flats]
    assert not [v for v in sources if g.op(v.node) == "scan"]
    stacked = [v for v in sources if g.op(v.node) == "transpose" and g.op(g[v.node].inputs[0].node) == "scan"]
    assert stacked and all(g[v.node].attrs["perm"] == (1, 0, 2) for v in stacked)
    # an ONNX Scan stacks at the axis: there the declared order is the free one
    onnx = _optimized(step.graph, 2, "onnx")
    flats = [n for n in onnx.nodes() if onnx.op(n) == "reshape" and onnx.type_of(onnx[n].inputs[0]).rank == 3]
    assert flats and all(onnx.op(onnx[n].inputs[0].node) != "transpose" for n in flats)


def test_an_lstm_step_is_few_kernel_calls_and_agrees_with_mkl_accumulating(monkeypatch):
    """Forward: the x-projection's slice is the GEMM's starting value (``matmul_add``), then the
    split and one fused gate kernel; backward: one fused call (gate cotangents and their concat)
    and the GEMM.  With every product on MKL (``beta=1`` accumulation) the step still agrees
    with the graph as built."""
    m, step = _step("lstm")
    scans = _scans(_optimized(step.graph))
    kernels = {role: [op for op in _ops(s.attrs["body"]) if op not in ("input", "const")] for role, s in scans.items()}
    assert sorted(kernels["forward"]) == ["fused", "matmul_add", "split"]
    assert sorted(kernels["backward"]) == ["fused", "matmul"]
    from dlc.compiler.ops import gemm

    if gemm._MKL is None:
        pytest.skip("the dlc[mkl] extra (libmkl_rt) is not installed")
    feeds = _feeds(5, length=7)
    want, _, _ = _run(m, step, feeds, level=0)
    monkeypatch.setattr(gemm, "_MKL_MIN_MKN", 0)
    calls = []
    real = gemm._MKL.gemm
    monkeypatch.setattr(gemm._MKL, "gemm", lambda a, b, **kw: calls.append(kw.get("beta", 0.0)) or real(a, b, **kw))
    got, _, _ = _run(m, step, feeds)
    assert 1.0 in calls  # matmul_add really accumulated on MKL
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)


RUNNING_TOTAL = """
use "lib/nn.dl"

layer total(x: f32[B, I], s: f32[B, I]) {
    return s + x
}

model pooled {
    input xs: f32[B, T, 2]
    input y:  i64[B]
    ys, s = scan total over xs axis 1 init (zeros([B, 2]) + 1.0)
    logits = dense(tanh(s), 2)
    output sums = s
    output loss = cross_entropy(logits, y)
}

train pooled {
    data      = adding(n = 64, T = 5, seed = 0)
    inputs    = map(xs = x, y = y_cls)
    loss      = loss
    optimizer = adam(lr = 1e-2)
    batch     = 16
    epochs    = 1
}
"""


def test_a_scan_that_only_sums_its_sequence_leaves_no_loop(tmp_path):
    """A running total whose per-step outputs nobody reads: hoisting turns every output of
    the loop into a sum over the steps, and the scan disappears (it used to crash the
    rebuild of a scan with no outputs) — at every level, on both backends, and in the
    exported training step."""
    shutil.copytree(ROOT / "specs" / "lib", tmp_path / "lib")
    (tmp_path / "m.dl").write_text(RUNNING_TOTAL)
    m = dlc.load(tmp_path / "m.dl", mode="train")
    xs = np.random.default_rng(1).standard_normal((3, 5, 2)).astype(np.float32)
    feeds = {"xs": xs, "y": np.array([0, 1, 1])}
    optimized = _optimized(m.graph)
    assert "scan" not in _ops(optimized)
    for level in (0, 2):
        m.opt_level = level
        for backend in ("numpy", "onnxruntime"):
            np.testing.assert_allclose(m.run(feeds, backend=backend)["sums"], xs.sum(1) + 1, rtol=1e-6, atol=1e-6)
    step = build_steps(m, m.train_spec(), steps_per_epoch=4)[0]
    assert "scan" not in _ops(_optimized(step.graph))
    check_training_step(m, {**feeds, "__rng": np.int64(0)}, label="running total")


SUM_READ_TWICE = """
layer cell(x: f32[B, I], h: f32[B, I], b: f32[I]) {
    t = x + h
    return t, tanh(t + b)          # t per step, and (x + h) + b the carry
}

model m {
    input xs: f32[B, T, 2]
    param b: [2]
    ts, h = scan cell(b = b) over xs init (zeros([B, 2]))
    output steps = ts
    output last  = h
    output loss  = sum(ts) + sum(h * h)
}
"""


def test_a_bias_is_not_reassociated_into_a_sum_the_cell_returns():
    """``(x_t + h) + b`` becomes ``(x_t + b) + h`` so that the bias joins the hoisted input
    projection — but here ``x_t + h`` is also the per-step output: the rewrite changed its
    value (every optimized level, both backends, and the gradients disagreed with -O0)."""
    m = dlc.compile(SUM_READ_TWICE, mode="train")
    xs = np.random.default_rng(2).standard_normal((3, 4, 2)).astype(np.float32)
    b = np.array([0.5, -1.0], np.float32)
    m.params["b"] = b
    h, ts = np.zeros((3, 2), np.float32), []
    for t in range(4):
        ts.append(xs[:, t] + h)
        h = np.tanh(ts[-1] + b)
    want = {"steps": np.stack(ts, 1), "last": h}
    grads = {}
    for level in (0, 1, 2):
        m.opt_level = level
        m._plans.clear()
        for backend in ("numpy", "onnxruntime"):
            got = m.run({"xs": xs}, backend=backend)
            for k, v in want.items():
                np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=f"-O{level} {backend} {k}")
        grads[level] = m.gradients({"xs": xs})["b"]
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-5, atol=1e-6)


UNUSED_MAP = """
layer scaled(x: f32[B, I], k: float = 1.0) {
    return x * k
}

model m {
    input xs: f32[B, T, 2]
    param w: [2]
    doubled = scan scaled(k = 2.0) over xs       # a map (no carries) nobody reads
    output y    = xs[:, 0] * w
    output loss = sum(xs[:, 0] * w)
}
"""


def test_a_map_nobody_reads_is_left_to_dce():
    """Dropping the unread per-step outputs of a scan with no carries left a scan with
    no outputs to rebuild (IndexError at -O1/-O2, inference and gradients alike)."""
    m = dlc.compile(UNUSED_MAP, mode="train")
    xs = np.random.default_rng(5).standard_normal((3, 4, 2)).astype(np.float32)
    m.params["w"] = np.array([2.0, -1.0], np.float32)
    assert "scan" in _ops(m.graph) and "scan" not in _ops(_optimized(m.graph))
    for level in (0, 1, 2):
        m.opt_level = level
        m._plans.clear()
        for backend in ("numpy", "onnxruntime"):
            np.testing.assert_allclose(m.run({"xs": xs}, backend=backend)["y"], xs[:, 0] * [2.0, -1.0], rtol=1e-6)
        np.testing.assert_allclose(m.gradients({"xs": xs})["w"], xs[:, 0].sum(0), rtol=1e-5)


PREFIX_SUM = """
layer prefix(x: f32[B, I], c: f32[B, I]) {
    return c, c + x                # the total before each step, then the running total
}

model m {
    input xs: f32[B, T, 2]
    param w: [2]
    bs, t = scan prefix over (xs * w) init (zeros([B, 2]))
    output before = bs
    output total  = t
    output loss   = sum(bs * bs) + sum(t)
}
"""


def test_an_accumulator_read_at_every_step_stays_in_the_loop():
    """An exclusive prefix sum: the carry ``c`` only feeds ``c + x_t`` but is also the
    per-step output.  Hoisting the accumulator removed the carry's body input the output
    still named (KeyError at -O1/-O2: inference, gradients — BPTT's ``dx_t = dc`` is the
    same pattern — and the training step)."""
    m = dlc.compile(PREFIX_SUM, mode="train")
    xs = np.random.default_rng(6).standard_normal((3, 4, 2)).astype(np.float32)
    w = m.params["w"] = np.array([0.5, 2.0], np.float32)
    inclusive = np.cumsum(xs * w, axis=1)
    before = inclusive - xs * w
    for level in (0, 1, 2):
        m.opt_level = level
        m._plans.clear()
        for backend in ("numpy", "onnxruntime"):
            got = m.run({"xs": xs}, backend=backend)
            np.testing.assert_allclose(got["before"], before, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got["total"], inclusive[:, -1], rtol=1e-5, atol=1e-6)
        prior = np.cumsum(xs, axis=1) - xs  # d before[b, t] / d w, per channel
        want = (2 * before * prior).sum((0, 1)) + xs.sum((0, 1))
        np.testing.assert_allclose(m.gradients({"xs": xs})["w"], want, rtol=1e-5, atol=1e-5)


SCANNED_CELL = """
model m() {
    input xs: f32[B, T, 3]
    input y: f32[B, 5]
    seq, h_last = scan cell over xs axis 1 init (zeros([B, 5]))
    output hs = seq
    output loss = mean((h_last - y) * (h_last - y))
}
"""  # the model around each `cell` below: per-step outputs and a loss of the final state

DEAD_GATES = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, 3 * H] = glorot_uniform()
    param Wh: [H, 2 * H] = orthogonal()
    param Wn: [H, H]     = orthogonal()
    param b:  [3 * H]    = uniform(-0.5, 0.5)
    xz, xr, xn = split(x @ Wx + b, 3, axis = -1)
    hz, hr = split(h @ Wh, 2, axis = -1)
    z = sigmoid(xz + hz)
    r = sigmoid(hr + xr)                 # never read: the candidate below ignores it
    n = tanh(xn + (z * h) @ Wn)
    return (1.0 - z) * n + z * h
}
""" + SCANNED_CELL


DEAD_INVARIANT = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H] = glorot_uniform()
    param Wh: [H, H] = orthogonal()
    param Wd: [H, H] = orthogonal()
    unused = h @ transpose(Wd)           # never read: a step-invariant transpose only it reads
    return tanh(x @ Wx + h @ Wh)
}
""" + SCANNED_CELL


@pytest.mark.parametrize("text", [DEAD_GATES, DEAD_INVARIANT], ids=["dead gate", "dead invariant"])
def test_a_cell_with_dead_nodes_compiles_at_every_level(text):
    """Hoisting moves out a split piece (the GRU's reset gate when the candidate ignores it) or a
    step-invariant transpose that only dead nodes of the cell read: pruning the body removed
    the input made for it, which the rebuilt scan still listed (KeyError at -O1/-O2)."""
    m = dlc.compile(text)
    rng = np.random.default_rng(0)
    feeds = {"xs": rng.standard_normal((2, 4, 3)).astype(np.float32),
             "y": rng.standard_normal((2, 5)).astype(np.float32)}
    m.opt_level = 0
    want, grads = m.run(feeds), m.gradients(feeds)
    for level in (1, 2):
        m.opt_level = level
        for backend in ("numpy", "onnxruntime"):
            got = m.run(feeds, backend=backend)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{level} {backend} {k}")
        for k, g in m.gradients(feeds).items():
            np.testing.assert_allclose(g, grads[k], rtol=1e-5, atol=1e-7, err_msg=f"{level} d{k}")
    for k in (k for k in grads if k.endswith(".Wd")):
        assert not np.any(grads[k])  # a weight only dead nodes read has a zero gradient

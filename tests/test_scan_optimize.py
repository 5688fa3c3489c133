"""Recurrence the way fast RNN libraries run it: a training step sweeps forward
once, loop-invariant work (input projections, weight gradients) runs as big
GEMMs outside the loop, and the results equal the graph as lowered on both
backends."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.compiler.lower import compile_model
from dlc.compiler.training.step import initial_state
from dlc.runtime.interpreter import counting_kernel_calls
from dlc.runtime.ort import OrtSession
from dlc.runtime.runner import make_runner
from dlc.runtime.train import build_steps
from step_parity import check_training_step

ROOT = Path(__file__).resolve().parent.parent
CELLS = ["rnn", "lstm", "gru"]
RECURRENT_MATMULS = {"rnn": 1, "lstm": 1, "gru": 2}  # h @ Wh (and the GRU's (r * h) @ Wn) stay in the loop


def _step(spec: str, optimize: bool = True):
    m = dlc.load(ROOT / "specs" / f"{spec}.dl", mode="train")
    return m, build_steps(m, m.train_spec(), steps_per_epoch=10, optimize=optimize)[0]


def _feeds(batch: int, length: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"xs": rng.standard_normal((batch, length, 2)).astype(np.float32),
            "y": rng.integers(0, 2, batch).astype(np.int64), "__rng": np.int64(3)}


def _run(m, step, feeds) -> tuple[dict, int, int]:
    state = {**m.state, **initial_state(step)}
    run = make_runner(step.graph, "numpy")
    with counting_kernel_calls() as n:
        out = run(feeds, m.params, state)
    return out, n.calls, n.runs


def _scans(g):
    return {g[n].role: g[n] for n in g.nodes() if g.op(n) == "scan"}


def _ops(body) -> list[str]:
    return [body.op(n) for n in body.nodes()]


@pytest.mark.parametrize("spec", CELLS)
def test_a_training_step_sweeps_forward_once(spec):
    m, step = _step(spec)
    step.graph.verify()  # scan bodies included
    scans = _scans(step.graph)
    assert len([n for n in step.graph.nodes() if step.graph.op(n) == "scan"]) == 2
    fwd, back = scans["forward"], scans["backward"]
    # the reversed body is the cell's VJP: it re-runs no activation and accumulates no weight gradient
    assert not {"sigmoid", "tanh"} & set(_ops(back.attrs["body"]))
    assert back.attrs["n_carry"] == fwd.attrs["n_carry"]
    assert fwd.attrs["residuals"] > 0  # the forward scan stacks what the VJP reads
    # x @ Wx left the loop: only the recurrent products remain in the cell
    assert _ops(fwd.attrs["body"]).count("matmul") == RECURRENT_MATMULS[spec]
    length = 6
    _, _, runs = _run(m, step, _feeds(4, length))
    assert runs == 1 + 2 * length  # the step itself, then each body once per step: forward, backward
    _, _, runs_before = _run(*_step(spec, optimize=False), _feeds(4, length))
    assert runs_before == 1 + 2 * length  # the gradient rule itself asks the forward scan for residuals


@pytest.mark.parametrize("spec", CELLS)
def test_kernel_calls_per_step_do_not_grow_with_the_batch(spec):
    m, step = _step(spec)
    _, small, _ = _run(m, step, _feeds(2))
    _, large, _ = _run(m, step, _feeds(64))
    assert small == large
    _, unoptimized, _ = _run(*_step(spec, optimize=False), _feeds(2))
    assert small < unoptimized


@pytest.mark.parametrize("spec", CELLS)
def test_the_optimized_step_equals_the_graph_as_lowered(spec):
    m, fast = _step(spec)
    _, plain = _step(spec, optimize=False)
    feeds = _feeds(5, length=7)
    want, _, _ = _run(m, plain, feeds)
    got, _, _ = _run(m, fast, feeds)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=f"{spec} {k}")
    # the exported optimized step (its Scan stacks the residuals) agrees in onnxruntime
    check_training_step(m, feeds, label=spec)


@pytest.mark.parametrize("spec", CELLS)
def test_inference_reads_the_projected_sequence(spec):
    m = dlc.load(ROOT / "specs" / f"{spec}.dl")
    plain = compile_model(m.loaded, m.defn, "eval", m.hyper, optimize=False).graph
    m.graph.verify()
    (scan,) = [m.graph[n] for n in m.graph.nodes() if m.graph.op(n) == "scan"]
    assert _ops(scan.attrs["body"]).count("matmul") == RECURRENT_MATMULS[spec]
    feeds = {k: v for k, v in _feeds(3, 9).items() if k != "__rng"}
    want = make_runner(plain, "numpy")(feeds, m.params, m.state)
    got = m.run(feeds)
    ort = m.run(feeds, backend="onnxruntime")
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(ort[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_gradients_of_the_optimized_graph_match_finite_differences():
    from dlc.runtime.gradcheck import gradcheck

    m = dlc.load(ROOT / "specs" / "lstm.dl", mode="train")
    assert max(gradcheck(m, echo=lambda s: None).values()) < 1e-6


def test_the_exported_training_step_has_two_scans_and_matches():
    m, step = _step("lstm")
    proto = m.to_onnx(train=True)
    assert [n.op_type for n in proto.graph.node].count("Scan") == 2
    feeds = _feeds(3, 5)
    state = {**m.state, **initial_state(step)}
    want = make_runner(step.graph, "numpy")(feeds, m.params, state)
    got = OrtSession(proto).run({**feeds, **m.params, **state})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-5, err_msg=k)


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
    from test_scan import _data, rnn_graph

    g, b, loss = rnn_graph()
    grads = backprop(g, loss, ["Wx", "Wh"], builder=b)
    penalty = b.add(b.sum(b.mul(grads["Wx"], grads["Wx"])), b.sum(b.mul(grads["Wh"], grads["Wh"])))
    second = backprop(g, penalty, ["Wx", "Wh"], builder=b)
    g.set_outputs({"penalty": penalty, "dWx": second["Wx"], "dWh": second["Wh"]})
    g.prune({v.node for v in g.outputs.values()})
    if hoist:
        hoist_scan_invariants(g)
    g.verify()
    feeds, params = _data()
    out = Plan(g).run(feeds, params)
    plan = Plan(g, ["penalty"])
    eps = 1e-6
    for name in ("Wx", "Wh"):
        num = np.zeros_like(params[name])
        for idx in np.ndindex(*params[name].shape):
            hi, lo = params[name].copy(), params[name].copy()
            hi[idx] += eps
            lo[idx] -= eps
            num[idx] = (plan.run(feeds, {**params, name: hi})["penalty"]
                        - plan.run(feeds, {**params, name: lo})["penalty"]) / (2 * eps)
        np.testing.assert_allclose(out["d" + name], num, rtol=1e-6, atol=1e-8)

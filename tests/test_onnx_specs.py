"""Every spec exports to valid ONNX that onnxruntime runs like the interpreter:
inference (optimisations on and off), the training step (BPTT included), and
whole training runs."""
from __future__ import annotations

import glob

import numpy as np
import pytest

import dlc
from dlc.compiler.lower import load_module
from dlc.compiler.training.step import initial_state
from dlc.runtime.ort import OrtSession
from dlc.runtime.train import build_steps
from step_parity import check_training_step

SPECS = sorted(p for p in glob.glob("specs/*.dl"))
QUIET = {"progress": False, "echo": lambda s: None}


def feeds_for(m, batch=3, length=5, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in m.inputs.items():
        shape = [d if isinstance(d, int) else (length if str(d) == "T" else batch) for d in t.shape]
        if t.dtype.startswith("f"):
            out[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            out[name] = rng.integers(0, 2, size=shape).astype(np.int64)
    return out


def models():
    for path in SPECS:
        for name in load_module(path).models:
            yield pytest.param(path, name, id=f"{path.split('/')[-1]}:{name}")


@pytest.mark.parametrize("path, name", list(models()))
@pytest.mark.parametrize("optimize", [True, False])
def test_inference_matches_the_interpreter(path, name, optimize):
    m = dlc.load(path, model=name)
    proto = m.to_onnx(outputs=list(m.outputs))  # every output; runs the full checker and strict shape inference
    assert proto.opset_import[0].version == 18
    assert any(d.dim_param for i in proto.graph.input for d in i.type.tensor_type.shape.dim)  # batch stays symbolic
    for batch, length in ((3, 5), (2, 9)):
        feeds = {**feeds_for(m, batch, length), "__rng": np.int64(5)}  # gan.dl draws noise
        want = m.run(feeds)
        got = OrtSession(proto, optimize=optimize).run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-5, err_msg=f"{path} {k}")


@pytest.mark.parametrize("path", SPECS)
def test_export_is_deterministic(path):
    a = dlc.load(path).to_onnx().SerializeToString(deterministic=True)
    b = dlc.load(path).to_onnx().SerializeToString(deterministic=True)
    assert a == b


@pytest.mark.parametrize("path", SPECS)
def test_training_step_matches_the_interpreter(path):
    m = dlc.load(path, mode="train")
    check_training_step(m, {**feeds_for(m), "__rng": np.int64(7)}, label=path)


def test_lstm_exports_scan_and_its_step_reproduces_bptt():
    m = dlc.load("specs/lstm.dl", mode="train")
    proto = m.to_onnx("train")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Scan") == 2  # the forward scan (stacking its residuals) and the reversed backward scan
    assert "Loop" not in ops
    # an sgd step exposes the gradient exactly: new = p - lr * g
    text = open("specs/lstm.dl").read().replace("adam(lr = 1e-2)", "sgd(lr = 1.0)").replace(
        "clip      = norm(1.0)", "")
    text = text.replace('use "lib/nn.dl"', open("specs/lib/nn.dl").read())
    sgd = dlc.compile(text, mode="train")
    feeds = feeds_for(sgd, batch=4, length=6)
    grads = sgd.gradients(feeds)
    step = build_steps(sgd, sgd.train_spec(), steps_per_epoch=10)[0]
    out = OrtSession(sgd.to_onnx("train")).run({**feeds, "__rng": np.int64(0), **sgd.params,
                                                   **initial_state(step)})
    for k, p in sgd.params.items():
        np.testing.assert_allclose(p - out[f"new/{k}"], grads[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_mlp_trains_the_same_on_both_backends():
    a = dlc.load("specs/mlp.dl", mode="train")
    b = dlc.load("specs/mlp.dl", mode="train")
    ha = a.train(epochs=3, **QUIET)
    hb = b.train(epochs=3, backend="onnxruntime", **QUIET)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-4, atol=2e-5, err_msg=k)
    assert ha.test["accuracy"] == pytest.approx(hb.test["accuracy"], abs=1e-9)


@pytest.mark.parametrize("path", sorted(glob.glob("specs/*.dl")))
def test_every_export_runs_whole_on_the_cuda_provider(path):
    """Every op of every export has a CUDA kernel for its input type in onnxruntime
    (compiler/onnx_cuda.py), so `--device cuda` keeps a training step on the device."""
    from dlc.compiler.onnx_cuda import cuda_gaps

    m = dlc.load(path, mode="train")
    kinds = ["inference"] + (["train", "grad", "update"] if m.train_spec(required=False) else [])
    for kind in kinds:
        assert cuda_gaps(m.to_onnx(kind)) == [], f"{path} {kind}"


def test_cuda_gaps_names_an_op_without_a_cuda_kernel():
    from onnx import TensorProto, helper

    from dlc.compiler.onnx_cuda import cuda_gaps

    x = helper.make_tensor_value_info("x", TensorProto.INT64, [3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    g = helper.make_graph([helper.make_node("ReduceProd", ["x"], ["y"], keepdims=0)], "g", [x], [y])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert cuda_gaps(proto) == [("ReduceProd", "INT64")]

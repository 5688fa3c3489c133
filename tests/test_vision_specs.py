"""The vision seed specs reach the floors their headers promise, on both backends
(slow tier), and the FCN compiled once segments images of any size, the exported
ONNX included (fast)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import dlc
from dlc.runtime.generated import shapes

QUIET = {"progress": False, "echo": lambda s: None}
BACKENDS = ["numpy", "onnxruntime"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec, floor", [("specs/lenet.dl", 0.97), ("specs/resnet.dl", 0.96),
                                         ("specs/inception.dl", 0.95)])
def test_digit_classifiers_reach_their_floor(spec, floor, backend):
    m = dlc.load(spec, mode="train")
    assert m.train(backend=backend, **QUIET).test["accuracy"] >= floor


def foreground_iou(pred: np.ndarray, mask: np.ndarray) -> float:
    return float(((pred == 1) & (mask == 1)).sum() / ((pred == 1) | (mask == 1)).sum())


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fcn_segments_any_image_size(backend):
    m = dlc.load("specs/fcn.dl", mode="train")
    m.train(backend=backend, **QUIET)
    ev = dlc.load("specs/fcn.dl")
    ev.params = m.params
    for h, w in ((16, 16), (24, 32), (13, 21)):
        d = shapes(123, n=40, height=h, width=w).arrays
        probs = {be: ev.run({"x": d["x"], "y": d["y"]}, backend=be)["probs"] for be in BACKENDS}
        np.testing.assert_allclose(probs["onnxruntime"], probs["numpy"], rtol=1e-4, atol=1e-5)
        assert foreground_iou(probs[backend].argmax(1), d["y"]) >= 0.9, (h, w)


def test_fcn_compiles_once_for_every_size_and_exports_dim_params():
    m = dlc.load("specs/fcn.dl")
    assert [str(d) for d in m.outputs["probs"].shape] == ["B", "2", "H", "W"]
    proto = m.to_onnx()
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", 1, "H", "W"]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["B", 2, "H", "W"]
    onnx.checker.check_model(proto, full_check=True)
    for h, w in ((16, 16), (24, 32), (7, 9)):
        d = shapes(5, n=3, height=h, width=w).arrays
        got = m.run({"x": d["x"], "y": d["y"]}, backend="onnxruntime")
        assert got["probs"].shape == (3, 2, h, w)
        np.testing.assert_allclose(got["probs"], m.run({"x": d["x"], "y": d["y"]})["probs"], rtol=1e-4, atol=1e-5)

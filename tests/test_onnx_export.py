"""The ONNX exporter: determinism, symbolic dims, names, metadata, version
pins, verification, and small models run in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import Graph, Value
from dlc.compiler.onnx_emit import IR_VERSION, OPSET, check_runtime
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.ort import OrtSession
from op_harness import graph_input, graph_param

B, T, H, D = (Sym.var(n) for n in "BTHD")



def mlp():
    """x f32[B, 4] → x @ W + b → relu (as maximum with 0), in scope `h`."""
    g = Graph("mlp")
    b = Builder(g)
    x = graph_input(g, "x", TensorType("f32", (B, 4)))
    w = graph_param(g, "W", TensorType("f32", (4, 5)))
    bias = graph_param(g, "b", TensorType("f32", (5,)))
    with b.at(scope="h"):
        y = b.maximum(b.add(b.matmul(x, w), bias), 0.0)
    g.set_output("y", y)
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    return g, params


def test_mlp_runs_for_any_batch_size():
    g, params = mlp()
    model = export_graph(g, params=params, name="mlp")
    verify(model, g)
    session = OrtSession(model)
    for n in (3, 7):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        got = session.run({"x": x})["y"]
        np.testing.assert_allclose(got, np.maximum(x @ params["W"] + params["b"], 0), rtol=1e-5, atol=1e-6)


def test_feeds_are_converted_to_the_declared_dtype():
    g, params = mlp()
    got = OrtSession(export_graph(g, params=params, name="mlp")).run({"x": np.ones((2, 4))})["y"]
    assert got.dtype == np.float32


def test_export_is_deterministic():
    a = export_graph(mlp()[0], params=mlp()[1], name="mlp").SerializeToString(deterministic=True)
    b = export_graph(mlp()[0], params=mlp()[1], name="mlp").SerializeToString(deterministic=True)
    assert a == b


def test_symbolic_dims_are_dim_params():
    g, params = mlp()
    model = export_graph(g, params=params, name="mlp")
    (x,) = model.graph.input
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["B", 4]
    (y,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim] == ["B", 5]


def test_names_are_readable_and_metadata_is_set():
    g, params = mlp()
    model = export_graph(g, params=params, name="mlp", doc="a tiny perceptron")
    values = [o for n in model.graph.node for o in n.output]
    assert any(v.startswith("h/matmul_") for v in values) and any(v.startswith("h/add_") for v in values)
    assert "y" in values  # the output is written by its producer, no Identity needed
    assert {i.name for i in model.graph.initializer} >= {"W", "b"}
    assert model.producer_name == "dlc" and model.graph.name == "mlp"
    assert model.doc_string == "a tiny perceptron"
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]


def test_train_export_makes_parameters_inputs():
    g, params = mlp()
    model = export_graph(g, params=None, name="mlp", train=True)
    verify(model, g)
    assert [i.name for i in model.graph.input] == ["x", "W", "b"]
    assert not model.graph.initializer or all(i.name not in params for i in model.graph.initializer)
    x = np.ones((2, 4), np.float32)
    got = OrtSession(model).run({"x": x, **params})["y"]
    np.testing.assert_allclose(got, np.maximum(x @ params["W"] + params["b"], 0), rtol=1e-5)


def test_an_output_that_is_an_input_gets_an_identity():
    g, params = mlp()
    g.set_output("x_again", Value(g.inputs[0]))
    model = export_graph(g, params=params, name="mlp")
    verify(model, g)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(OrtSession(model).run({"x": x})["x_again"], x)


def test_polynomial_dims_are_computed_at_run_time():
    g = Graph("dims")
    b = Builder(g)
    graph_input(g, "x", TensorType("f32", (B, T, 4 * H)))
    graph_input(g, "d", TensorType("f32", (D,)))
    shapes = {"a": (B * T, H), "b": (T - 1, 2), "c": (D / 4, 3), "e": (4 * H, B)}
    for key, shape in shapes.items():
        g.set_output(key, b.zeros(shape=shape, dtype="f32"))
    model = export_graph(g, params={}, name="dims")
    verify(model, g)
    out = OrtSession(model).run({"x": np.zeros((2, 5, 12), np.float32), "d": np.zeros(8, np.float32)})
    assert {k: v.shape for k, v in out.items()} == {"a": (10, 3), "b": (4, 2), "c": (2, 3), "e": (12, 2)}
    # one Shape per dim name (B, T, D and H, solved from the axis 4*H), however many shapes use it
    assert sum(1 for n in model.graph.node if n.op_type == "Shape") == 4


def test_unknown_symbolic_dim_is_an_export_error():
    g = Graph("bad")
    b = Builder(g)
    g.set_output("z", b.zeros(shape=(Sym.var("N"),), dtype="f32"))
    with pytest.raises(DlcError, match="symbolic dim `N`") as exc:
        export_graph(g, params={}, name="bad")
    assert exc.value.code == "E0501"


def test_missing_parameter_value_is_an_export_error():
    g, params = mlp()
    with pytest.raises(DlcError, match="no value for param `b`"):
        export_graph(g, params={"W": params["W"]}, name="mlp")


def test_verify_reports_type_disagreements():
    g, params = mlp()
    model = export_graph(g, params=params, name="mlp")
    y = g.outputs["y"]
    g[y.node].types = (TensorType("f32", (B, 6)),)  # pretend dlc inferred another width
    with pytest.raises(DlcError, match="output `y`: axis 1 is 5, dlc says 6"):
        verify(model, g)


def test_version_check_names_both_versions():
    check_runtime()  # the installed onnxruntime is supported
    with pytest.raises(DlcError) as exc:
        check_runtime("1.10.0")
    assert exc.value.code == "E0501"
    assert "onnxruntime 1.10.0" in exc.value.message and f"opset {OPSET}" in exc.value.message


def test_runtime_errors_name_thegraph_input():
    g, params = mlp()
    session = OrtSession(export_graph(g, params=params, name="mlp"))
    with pytest.raises(DlcError, match="input `x` has shape \\[2, 3\\]") as exc:
        session.run({"x": np.ones((2, 3), np.float32)})
    assert exc.value.code == "E0401"
    with pytest.raises(DlcError, match="missing input `x`"):
        session.run({})


def test_unused_inputs_are_not_exported_and_extra_feeds_are_ignored():
    g, params = mlp()
    graph_input(g, "labels", TensorType("i64", (B,)))  # read only by a loss this export leaves out
    model = export_graph(g, params=params, name="mlp")
    assert [i.name for i in model.graph.input] == ["x"]
    out = OrtSession(model).run({"x": np.ones((2, 4), np.float32), "labels": np.zeros(2, np.int64)})
    assert out["y"].shape == (2, 5)


def test_inconsistent_symbolic_dims_name_both_inputs():
    g, params = mlp()
    x2 = graph_input(g, "x2", TensorType("f32", (B, 4)))
    g.set_output("z", Builder(g).add(x2, Value(g.inputs[0])))
    session = OrtSession(export_graph(g, params=params, name="mlp"))
    with pytest.raises(DlcError, match="input `x2` has B = 3, but input `x` has B = 2"):
        session.run({"x": np.ones((2, 4), np.float32), "x2": np.ones((3, 4), np.float32)})


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_exports_as_onnx_scan(reverse):
    """A ReLU RNN cell over axis 1; the body reads the weights from the outer graph."""
    from dlc.runtime.interpreter import Plan

    body = Graph("cell")
    bb = Builder(body)
    h = graph_input(body, "h", TensorType("f32", (B, 4)))
    x = graph_input(body, "x", TensorType("f32", (B, 3)))
    wx = graph_input(body, "Wx", TensorType("f32", (3, 4)))
    wh = graph_input(body, "Wh", TensorType("f32", (4, 4)))
    h2 = bb.maximum(bb.add(bb.matmul(x, wx), bb.matmul(h, wh)), 0.0)
    body.set_outputs({"carry0": h2, "y0": bb.mul(h2, 2.0), "y1": bb.zeros(shape=(B, 2), dtype="f32")})
    g = Graph("rnn")
    b = Builder(g)
    xs = graph_input(g, "xs", TensorType("f32", (B, T, 3)))
    h0 = graph_input(g, "h0", TensorType("f32", (B, 4)))
    Wx, Wh = graph_param(g, "Wx", TensorType("f32", (3, 4))), graph_param(g, "Wh", TensorType("f32", (4, 4)))
    with b.at(scope="rnn"):
        hs, zs, last = b.apply("scan", h0, xs, Wx, Wh, body=body, n_carry=1, axis=1, reverse=reverse)
    g.set_outputs({"hs": hs, "zs": zs, "last": last})
    rng = np.random.default_rng(1)
    params = {"Wx": rng.standard_normal((3, 4)).astype(np.float32) / 2,
              "Wh": rng.standard_normal((4, 4)).astype(np.float32) / 2}
    feeds = {"xs": rng.standard_normal((2, 5, 3)).astype(np.float32),
             "h0": rng.standard_normal((2, 4)).astype(np.float32)}
    model = export_graph(g, params=params, name="rnn")
    verify(model, g)
    assert [n.op_type for n in model.graph.node].count("Scan") == 1
    want = Plan(g).run(feeds, params)
    got = OrtSession(model).run(feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_scan_gradient_exports_and_matches_the_interpreter():
    """BPTT (a residual scan and a reversed scan) runs in onnxruntime as in NumPy."""
    from dlc.compiler.passes.backprop import vjp
    from dlc.runtime.interpreter import Plan

    body = Graph("cell")
    bb = Builder(body)
    h, x = graph_input(body, "h", TensorType("f32", (B, 4))), graph_input(body, "x", TensorType("f32", (B, 3)))
    wx, wh = graph_input(body, "Wx", TensorType("f32", (3, 4))), graph_input(body, "Wh", TensorType("f32", (4, 4)))
    h2 = bb.mul(bb.add(bb.matmul(x, wx), bb.matmul(h, wh)), 0.5)
    body.set_outputs({"carry0": h2, "y0": bb.mul(h2, h2)})
    g = Graph("rnn")
    b = Builder(g)
    xs, h0 = graph_input(g, "xs", TensorType("f32", (B, T, 3))), graph_input(g, "h0", TensorType("f32", (B, 4)))
    Wx, Wh = graph_param(g, "Wx", TensorType("f32", (3, 4))), graph_param(g, "Wh", TensorType("f32", (4, 4)))
    ys, _ = b.apply("scan", h0, xs, Wx, Wh, body=body, n_carry=1, axis=1)
    seed = graph_input(g, "dys", TensorType("f32", (B, T, 4)))
    with b.at(role="backward"):
        grads = vjp(g, {ys: seed}, [Wx, Wh, h0], b)
    g.set_outputs({"ys": ys, "dWx": grads[Wx], "dWh": grads[Wh], "dh0": grads[h0]})
    rng = np.random.default_rng(2)
    params = {"Wx": rng.standard_normal((3, 4)).astype(np.float32) / 2,
              "Wh": rng.standard_normal((4, 4)).astype(np.float32) / 2}
    feeds = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in {"xs": (2, 5, 3), "h0": (2, 4), "dys": (2, 5, 4)}.items()}
    model = export_graph(g, params=None, name="rnn", train=True)
    verify(model, g)
    want = Plan(g).run(feeds, params)
    for optimize in (True, False):
        got = OrtSession(model, optimize=optimize).run({**feeds, **params})
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_model_serialises_and_loads():
    g, params = mlp()
    model = export_graph(g, params=params, name="mlp")
    again = onnx.load_from_string(model.SerializeToString(deterministic=True))
    assert OrtSession(again.SerializeToString()).output_names == ["y"]

"""Export-time fusions (compiler/onnx_fuse.py): fewer, larger ONNX ops with the interpreter's values."""
from __future__ import annotations

import collections

import numpy as np

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import Graph
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession
from op_harness import graph_input, graph_param

B, T = Sym.var("B"), Sym.var("T")


def ops_of(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def run_both(g: Graph, params: dict, shapes: dict):
    """Export ``g``, verify it, and compare onnxruntime with the interpreter on random feeds."""
    proto = export_graph(g, params=params, name=g.name)
    verify(proto, g)
    rng = np.random.default_rng(0)
    for scale in (1, 2):  # two batch sizes: the fused Reshapes read B and T at run time
        feeds = {k: rng.standard_normal((s[0] * scale, *s[1:])).astype(np.float32) for k, s in shapes.items()}
        want = Plan(g).run(feeds, params)
        got = OrtSession(proto).run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    return proto


def linear_graph(also_product: bool = False) -> tuple[Graph, dict]:
    g = Graph("linear")
    b = Builder(g)
    x = graph_input(g, "x", TensorType("f32", (B, T, 6)))
    w, bias = graph_param(g, "W", TensorType("f32", (6, 5))), graph_param(g, "b", TensorType("f32", (5,)))
    product = b.matmul(x, w)
    outputs = {"y": b.relu(b.add(product, bias))}
    if also_product:
        outputs["xw"] = product
    g.set_outputs(outputs)
    rng = np.random.default_rng(1)
    return g, {"W": rng.standard_normal((6, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def test_a_batched_linear_layer_is_one_gemm_with_its_bias():
    g, params = linear_graph()
    counts = ops_of(run_both(g, params, {"x": (2, 3, 6)}))
    assert counts["Gemm"] == 1 and counts["MatMul"] == 0 and counts["Add"] == 0


def test_a_product_read_elsewhere_is_not_fused():
    g, params = linear_graph(also_product=True)
    counts = ops_of(run_both(g, params, {"x": (2, 3, 6)}))
    assert counts["Gemm"] == 0 and counts["MatMul"] == 1 and counts["Add"] == 1


def test_the_transformer_step_sums_no_batched_products():
    import dlc
    from dlc.compiler.passes.pipeline import DEFAULT_LEVEL, optimize
    from dlc.runtime.trainer import build_steps

    model = dlc.load("benchmarks/specs/transformer.dl", mode="train")
    step = build_steps(model, model.train_spec(), 10)[0]
    proto = export_graph(optimize(step.graph, DEFAULT_LEVEL, "onnx"), params=None, name="t", train=True)
    made = {o: n.op_type for n in proto.graph.node for o in n.output}
    reduced = [made.get(n.input[0]) for n in proto.graph.node if n.op_type == "ReduceSum"]
    assert "MatMul" not in reduced  # weight gradients are one 2-D product each (matmul's gradient rule
    # flattens the batched rows), never a batched product summed afterwards
    assert ops_of(proto)["Gemm"] >= 3  # the 3 forward layers with a bias

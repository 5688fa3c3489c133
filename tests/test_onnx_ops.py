"""ONNX lowering vs NumPy kernel, generated from the registry's samples.

For every primitive op (composites are covered through their primitives;
``scan`` has its own tests) and every sample: a graph whose inputs are the
sample arrays (floats as f32, ints and bools kept) applies the op; the
model exported from it must pass the onnx checker and strict shape
inference with dlc's types, and onnxruntime — with graph optimisations on
and off — must agree with the op's NumPy kernel called directly on the same
arrays.  Integer and bool results, and ``uniform`` (bit-identical by design
of the counter-based RNG), must match exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.graph import RNG_INPUT, Graph, Value
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.ops.registry import get_op
from dlc.compiler.types import TensorType, dtype_name
from dlc.runtime.ort import OrtSession

from op_harness import cases, materialise, seed_of

CASES = cases("primitive")
RNG_KEY = np.array(12345, dtype=np.int64)
EXACT_OPS = ("uniform",)


def build(cls, sample, arrays):
    """(graph, feeds, the op's node id) for one sample; every array is an input."""
    g = Graph(cls.name)
    b = Builder(g, mode="train")
    values, feeds = [], {}
    for k, a in enumerate(arrays):
        n = g.add_node("input", (), {"name": f"x{k}"}, (TensorType(dtype_name(a.dtype), tuple(a.shape)),))
        g.add_input(n)
        values.append(Value(n))
        feeds[f"x{k}"] = a
    out = b.apply(cls.name, *values, **sample.attrs)
    for j, v in enumerate(out if isinstance(out, tuple) else (out,)):
        g.set_output(f"y{j}", v)
    if RNG_INPUT in g.input_names():
        feeds[RNG_INPUT] = RNG_KEY
    (node,) = [n for n in g.nodes() if g.op(n) == cls.name]
    return g, feeds, node


def kernel_outputs(g, feeds, node) -> list[np.ndarray]:
    """The op's kernel applied directly to the arrays its node reads."""
    ins = []
    for v in g.in_values(node):
        src = g[v.node]
        ins.append(src.attrs["value"] if src.op == "const" else feeds[src.attrs["name"]])
    out = get_op(g.op(node)).kernel(*ins, **g[node].attrs)
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_onnx_matches_kernel(case, optimize):
    case_id, cls, _, sample = case
    if not cls.has("onnx"):
        pytest.skip(f"`{cls.name}` has no ONNX lowering yet (listed by the registry test)")
    arrays = materialise(sample, np.float32, seed_of(case_id))
    g, feeds, node = build(cls, sample, arrays)
    expected = kernel_outputs(g, feeds, node)
    model = export_graph(g, params={}, name=case_id)
    verify(model, g)
    got = OrtSession(model, optimize=optimize).run(feeds)
    for j, want in enumerate(expected):
        have = got[f"y{j}"]
        assert have.dtype == want.dtype, f"output {j}: ORT gave {have.dtype}, the kernel {want.dtype}"
        assert have.shape == want.shape, f"output {j}: ORT gave {have.shape}, the kernel {want.shape}"
        if want.dtype.kind in "biu" or cls.name in EXACT_OPS:
            np.testing.assert_array_equal(have, want, err_msg=f"output {j}")
        else:
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=2e-5, err_msg=f"output {j}")

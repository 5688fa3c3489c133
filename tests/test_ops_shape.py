"""Shape-family specifics beyond the generic registry tests: symbolic shape
rules (and their ONNX form, where symbolic dims are computed at run time),
error messages, and kernels leaving their inputs alone."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym
from dlc.compiler.graph import Graph, Value
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.ops.registry import get_op
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

B, T, D = Sym.var("B"), Sym.var("T"), Sym.var("D")


def _sym_graph():
    g = Graph("sym")
    n = g.add_node("input", (), {"name": "x"}, (TensorType("f32", (B, T, 6)),))
    g.add_input(n)
    return g, Builder(g), Value(n)


def test_symbolic_shapes_and_onnx():
    g, b, x = _sym_graph()
    idx = g.add_node("input", (), {"name": "i"}, (TensorType("i64", (4,)),))
    g.add_input(idx)
    cases = {
        "r": (b.reshape(x, shape=(B, T, 2, -1)), (B, T, 2, 3)),
        "r2": (b.reshape(x, shape=(-1, 6)), (B * T, 6)),
        "f": (b.flatten(x), (B, 6 * T)),
        "tail": (b.slice(x, starts=(1,), stops=(None,), axes=(1,)), (B, T - 1, 6)),
        "last": (b.slice(x, starts=(-1,), stops=(None,), axes=(1,)), (B, 1, 6)),
        "front": (b.slice(x, starts=(None,), stops=(-1,), axes=(-2,)), (B, T - 1, 6)),
        "rev": (b.slice(x, starts=(None,), stops=(None,), steps=(-1,), axes=(1,)), (B, T, 6)),
        "cat": (b.concat(x, x, axis=1), (B, 2 * T, 6)),
        "bc": (b.broadcast_to(b.unsqueeze(x, axes=0), shape=(3, B, T, 6)), (3, B, T, 6)),
        "fill": (b.fill(shape=(B, 2), value=3.0), (B, 2)),
        "zl": (b.zeros_like(x), (B, T, 6)),
        "pad": (b.pad(x, pads=((0, 0), (1, 2), (0, 0))), (B, T + 3, 6)),
        "sg": (b.slice_grad(b.slice(x, starts=(-3,), stops=(None,), steps=(2,), axes=(1,)), shape=(B, T, 6),
                            starts=(-3,), stops=(None,), steps=(2,), axes=(1,)), (B, T, 6)),
        "sg1": (b.slice_grad(b.slice(x, starts=(1,), stops=(None,), axes=(1,)), shape=(B, T, 6),
                             starts=(1,), stops=(None,), axes=(1,)), (B, T, 6)),
        "gg": (b.gather_grad(b.gather(x, Value(idx), axis=1), Value(idx), shape=(B, T, 6), axis=1), (B, T, 6)),
    }
    zn = g.add_node("input", (), {"name": "z"}, (TensorType("f32", (B, D)),))
    g.add_input(zn)
    z = Value(zn)
    cases["heads"] = (b.reshape(z, shape=(B, 2, -1)), (B, 2, D / 2))
    cases["halves"] = (b.split(z, parts=2, axis=-1)[1], (B, D / 2))
    cases["zfill"] = (b.zeros(shape=(D, B)), (D, B))
    split = b.split(x, parts=(T - 1, 1), axis=1)
    cases["s0"], cases["s1"] = (split[0], (B, T - 1, 6)), (split[1], (B, 1, 6))
    for name, (v, shape) in cases.items():
        assert b.type(v).shape == shape, name
        g.set_output(name, v)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 6)).astype(np.float32),
             "i": np.array([0, -1, 2, 0]), "z": np.ones((2, 8), np.float32)}
    want = Plan(g).run(feeds)
    model = export_graph(g, params={}, name="sym")
    verify(model, g)
    got = OrtSession(model).run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("op, args, attrs, msg", [
    ("reshape", ((2, 3),), {"shape": (4, 2)}, "cannot reshape [2, 3] (6 elements) into [4, 2]: 8 elements"),
    ("reshape", ((2, 3),), {"shape": (4, -1)}, "6 is not a multiple of 4"),
    ("reshape", ((2, 3),), {"shape": (-1, -1)}, "more than one -1"),
    ("reshape", ((2, 3),), {"shape": (2, -1, 4)}, "6 is not a multiple of 8"),
    ("reshape", ((2, 0),), {"shape": (0, -1)}, "has a 0 dim"),
    ("reshape", ((B, T),), {"shape": (D, -1)}, "B*T is not a multiple of D; give the shape explicitly"),
    ("split", ((5, 2),), {"parts": 2}, "cannot cut dim 5 (axis 0) into 2 equal parts"),
    ("split", ((5, 2),), {"parts": (2, 2)}, "add up to 4, but dim 0 is 5"),
    ("squeeze", ((2, B),), {"axes": -1}, "axis 1 has dim B, not 1"),
    ("concat", ((2, 3), (2, 4)), {"axis": 0}, "differ in another dim"),
    ("broadcast_to", ((3,),), {"shape": (2, 4)}, "cannot broadcast [3] to [2, 4]"),
    ("slice", ((T,),), {"starts": (None,), "stops": (None,), "steps": (2,)}, "no exact size"),
    ("transpose", ((2, 3),), {"perm": (0, 0)}, "not a permutation"),
    ("pad", ((2, 3),), {"pads": ((1, 1),)}, "one (before, after) pair per axis (2)"),
])
def test_shape_errors(op, args, attrs, msg):
    g = Graph("err")
    b = Builder(g)
    vals = []
    for shape in args:
        n = g.add_node("input", (), {"name": f"x{len(vals)}"}, (TensorType("f32", shape),))
        vals.append(Value(n))
    with pytest.raises(DlcError) as err:
        b.apply(op, *vals, **attrs)
    assert msg in str(err.value)


def test_views_do_not_write_inputs():
    x = np.arange(12.0).reshape(3, 4)
    x.setflags(write=False)  # a kernel writing into its input would raise
    for op, attrs in [("reshape", {"shape": (4, 3)}), ("transpose", {"perm": None}),
                      ("slice", {"starts": (1,), "stops": (None,), "steps": None, "axes": None}),
                      ("pad", {"pads": ((1, 1), (0, 0)), "value": 0.0}), ("zeros_like", {})]:
        get_op(op).kernel(x, **attrs)

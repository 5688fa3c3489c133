"""The IR invariants hold after lowering, after backprop and in every training step."""
import glob

import pytest

import dlc
from dlc.compiler.graph import Graph, GraphError, Value
from dlc.compiler.types import TensorType
from dlc.runtime.train import build_steps

SPECS = sorted(glob.glob("specs/*.dl"))


@pytest.mark.parametrize("path", SPECS)
def test_every_spec_graph_verifies(path):
    for mode in ("eval", "train"):
        dlc.load(path, mode=mode).graph.verify()
    m = dlc.load(path, mode="train")
    spec = m.train_spec(required=False)
    if spec is not None:
        for step in build_steps(m, spec, steps_per_epoch=1):
            step.graph.verify()


def test_containers_are_read_only():
    g = Graph("t")
    with pytest.raises(AttributeError):
        g.inputs.append(0)
    with pytest.raises(TypeError):
        g.outputs["y"] = Value(0)
    with pytest.raises(TypeError):
        g.params["w"] = 0


def test_verify_catches_a_wrong_type():
    g = Graph("t")
    t = TensorType("f32", (2, 3))
    x = g.add_node("input", (), {"name": "x"}, (t,))
    g.add_input(x)
    y = g.add_node("relu", (Value(x),), {}, (TensorType("f32", (3, 2)),))
    g.set_output("y", Value(y))
    with pytest.raises(GraphError, match="shape rule"):
        g.verify()


def test_verify_catches_a_dangling_output():
    g = Graph("t")
    x = g.add_node("input", (), {"name": "x"}, (TensorType("f32", (2,)),))
    g.add_input(x)
    g.set_output("y", Value(x, 3))
    with pytest.raises(GraphError, match="missing value"):
        g.verify()


def test_a_typo_in_compiler_code_is_a_bug_not_a_user_error():
    from dlc.compiler.builder import Builder

    b = Builder(Graph("t"))
    assert callable(b.matmul)
    with pytest.raises(AttributeError, match="no op `matmull`"):
        _ = b.matmull

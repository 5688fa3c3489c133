"""The IR invariants hold after lowering, after backprop and in every training step."""
import glob

import pytest

import dlc
from dlc.compiler.graph import Graph, GraphError, Value
from dlc.compiler.types import TensorType
from dlc.runtime.trainer import build_steps

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


def _square_graph():
    """x → mul(x, x) → relu: two edges from x into the same node."""
    g = Graph("t")
    t = TensorType("f32", (2,))
    x = g.add_node("input", (), {"name": "x"}, (t,))
    g.add_input(x)
    sq = g.add_node("mul", (Value(x), Value(x)), {}, (t,))
    r = g.add_node("relu", (Value(sq),), {}, (t,))
    g.set_output("y", Value(r))
    return g, x, sq, r


def test_the_users_index_counts_each_argument():
    g, x, sq, r = _square_graph()
    assert g.consumers(x) == [sq] and g.consumers(sq) == [r]
    g.set_input(sq, 0, Value(r))  # one of x's two uses moves: x is still a user of sq, once
    assert g.consumers(x) == [sq] and sorted(g.consumers(r)) == [sq]
    with pytest.raises(GraphError, match="cycle"):
        g.verify()
    g.set_input(sq, 0, Value(x))
    g.verify()
    g.remove_nodes([r])
    assert g.consumers(sq) == []
    assert len(g.to_networkx().edges) == 2  # x * x: two edges


def test_verify_catches_a_corrupted_users_index():
    g, x, sq, _ = _square_graph()
    g._users[x][sq] = 1  # one of the two uses forgotten
    with pytest.raises(GraphError, match="users of %0"):
        g.verify()


def test_a_copy_has_its_own_users_index():
    g, x, sq, r = _square_graph()
    c = g.copy()
    c.remove_nodes([r])
    assert g.consumers(sq) == [r] and c.consumers(sq) == []
    g.verify()


def test_set_input_rejects_an_argument_the_node_does_not_have():
    g, x, sq, _ = _square_graph()
    with pytest.raises(IndexError, match="2 arguments"):
        g.set_input(sq, -1, Value(x))


def test_reachability_skips_a_dangling_argument():
    g, x, sq, r = _square_graph()
    g.remove_nodes([x])  # sq's arguments now dangle: verify reports it, the walks do not crash
    assert g.ancestors([r]) == {sq, r}
    with pytest.raises(GraphError, match="missing node"):
        g.verify()


def test_topo_order_is_networkx_lexicographic_order_on_every_spec_step():
    import networkx as nx

    for path in ("specs/lstm.dl", "specs/cnn.dl"):
        g = dlc.load(path, mode="train").train_graph()
        want = list(nx.lexicographical_topological_sort(g.to_networkx(), key=lambda n: n))
        assert g.topo_order() == want

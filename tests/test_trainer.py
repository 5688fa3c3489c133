"""The single-step API (runtime/trainer.py), its backends' resident parameters, and the
interpreter's generated hot path."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.compiler.graph import Graph
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.data import batches
from dlc.runtime.interpreter import Plan
from dlc.runtime.train import _train

from op_harness import graph_input

QUIET = {"progress": False, "echo": lambda *_: None}


def _first_batches(trainer, k: int) -> list[dict]:
    it = batches(trainer.splits["train"], trainer.spec.batch, shuffle=True, seed=trainer.seed, epoch=0)
    return [next(it) for _ in range(k)]


def test_steps_match_between_backends_and_leave_the_model_alone():
    """k steps with parameters resident in onnxruntime (IO binding, double buffers) equal k NumPy
    steps; the model's own arrays are never written through the bound buffers."""
    m = dlc.load("specs/mlp.dl", mode="train")
    before = {k: v.copy() for k, v in m.params.items()}
    a, b = m.trainer(backend="numpy", fresh=False), m.trainer(backend="onnxruntime", fresh=False)
    for batch in _first_batches(a, 5):
        ma, mb = a(batch), b(batch)
        assert set(ma) == set(mb) == {"loss", "lr", "accuracy"}
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    assert a.global_step == b.global_step == 5
    pa, pb = a.params, b.params
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=2e-6, err_msg=k)
        assert not np.array_equal(pa[k], before[k]), k  # it trained
        np.testing.assert_array_equal(m.params[k], before[k], err_msg=k)
    np.testing.assert_allclose(a.state["main/adam.m/h.W"], b.state["main/adam.m/h.W"], rtol=1e-4, atol=1e-7)
    assert int(a.state["step/main"]) == int(b.state["step/main"]) == 5


def test_two_step_groups_share_one_store_on_onnxruntime():
    """The GAN's two groups read each other's parameters: a group's bindings notice
    buffers another group swapped."""
    m = dlc.load("specs/gan.dl", mode="train")
    a, b = m.trainer(backend="numpy"), m.trainer(backend="onnxruntime")
    for batch in _first_batches(a, 4):
        ma, mb = a(batch), b(batch)
        assert set(ma) == {"loss", "loss.generator", "lr", "spread"}
        for k in ma:
            assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k
    pa, pb = a.params, b.params
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_the_epoch_loop_is_the_trainer_in_a_loop():
    """One epoch of `train` gives the parameters of a hand-written loop over the same batches."""
    m = dlc.load("specs/xor.dl", mode="train")
    step = m.trainer()
    for batch in batches(step.splits["train"], step.spec.batch, shuffle=True, seed=step.seed, epoch=0):
        step(batch)
    _train(m, epochs=1, **QUIET)
    for k, v in step.params.items():
        np.testing.assert_array_equal(m.params[k], v, err_msg=k)


def test_load_replaces_values_and_rejects_unknown_names():
    m = dlc.load("specs/mlp.dl", mode="train")
    t = m.trainer(backend="onnxruntime")
    zeros = {k: np.zeros_like(v) for k, v in t.params.items()}
    t.load(zeros)
    assert all(not v.any() for v in t.params.values())
    with pytest.raises(DlcError) as e:
        t.load({"nope": np.zeros(1)})
    assert e.value.code == "E0110"


def test_a_missing_execution_provider_is_a_coded_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    m = dlc.load("specs/xor.dl", mode="train")
    with pytest.raises(DlcError) as e:
        m.trainer(backend="onnxruntime", device="cuda")
    assert e.value.code == "E0401" and "onnxruntime-gpu" in e.value.hint
    with pytest.raises(DlcError) as e:
        m.trainer(backend="numpy", device="cuda")
    assert e.value.code == "E0110"
    for bad in ("tpu", "cuda:x", "cpu:1"):
        with pytest.raises(DlcError) as e:
            m.trainer(backend="onnxruntime", device=bad)
        assert e.value.code == "E0110", bad


def test_bound_runs_return_outputs_of_symbolic_shape():
    """Outputs whose shape depends on the batch come back through onnxruntime-allocated buffers,
    beside the preallocated scalars; the parameters are read from the resident store."""
    from dlc.runtime.runner import bind, make_store

    ev = dlc.load("specs/cnn.dl")
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32),
             "y": np.zeros(5, np.int64), "__rng": np.int64(0)}
    want = ev.run(feeds)
    store = make_store("onnxruntime")
    store.set({**ev.params, **ev.state})
    run = bind(ev.graph, store, "onnxruntime")
    for batch in (5, 3):  # a second batch size: the symbolic output is reallocated
        f = {k: v[:batch] if np.ndim(v) else v for k, v in feeds.items()}
        got = run(f)
        assert got["probs"].shape == (batch, 10)
        np.testing.assert_allclose(got["probs"], want["probs"][:batch], atol=1e-5)
    np.testing.assert_allclose(run(feeds)["loss"], want["loss"], rtol=1e-5)


def test_predict_uses_the_eval_graph():
    m = dlc.load("specs/cnn.dl", mode="train")
    ev = dlc.load("specs/cnn.dl")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    feeds = {"x": x, "y": np.zeros(3, np.int64)}
    want = ev.run(feeds)["probs"]
    for backend in ("numpy", "onnxruntime"):
        np.testing.assert_allclose(m.predict(feeds, backend=backend)["probs"], want, atol=1e-5)


def _chain(n: int) -> Graph:
    from dlc.compiler.builder import Builder

    g = Graph()
    v = graph_input(g, "x", TensorType("f32", (4,)))
    b = Builder(g)
    for _ in range(n):
        v = b.apply("neg", v)
    g.set_output("y", v)
    g.set_output("s", b.apply("sum", v, axes=None))
    return g


def test_generated_hot_path_matches_the_reference_path():
    g = _chain(7)
    g.verify()
    plan = Plan(g)
    x = np.arange(4, dtype=np.float32)
    fast = plan.run({"x": x})
    ref = plan.run({"x": x}, profile={})
    np.testing.assert_array_equal(fast["y"], -x)
    assert fast["s"].shape == () and isinstance(fast["s"], np.ndarray)  # scalars come back as arrays
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k])


def test_a_failing_kernel_names_its_node_on_the_hot_path():
    from dlc.compiler.builder import Builder

    g = Graph()
    table = graph_input(g, "table", TensorType("f32", (3, 2)))
    idx = graph_input(g, "i", TensorType("i64", (2,)))
    b = Builder(g)
    g.set_output("y", b.apply("neg", b.apply("gather", table, idx, axis=0)))
    plan = Plan(g)
    with pytest.raises(DlcError) as e:
        plan.run({"table": np.zeros((3, 2), np.float32), "i": np.array([0, 7])})
    assert e.value.code == "E0401" and "`gather` failed" in e.value.message


def test_profile_counts_every_kernel_call():
    prof: dict = {}
    Plan(_chain(5)).run({"x": np.ones(4, np.float32)}, profile=prof)
    assert prof["neg"][1] == 5 and prof["sum"][1] == 1
    assert all(sec >= 0 for sec, _ in prof.values())


def test_an_input_can_be_an_output():
    g = Graph()
    g.set_output("same", graph_input(g, "x", TensorType("f32", (2,))))
    np.testing.assert_array_equal(Plan(g).run({"x": np.ones(2, np.float32)})["same"], np.ones(2))


def test_one_thread_setting_for_both_backends(monkeypatch):
    from dlc.runtime.threads import training_threads

    monkeypatch.setenv("DLC_THREADS", "2")
    assert training_threads() == 2
    t = dlc.load("specs/xor.dl", mode="train").trainer(backend="onnxruntime")
    opts = t.groups[0].run.session.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    monkeypatch.setenv("DLC_THREADS", "many")
    with pytest.raises(DlcError) as e:
        training_threads()
    assert e.value.code == "E0110"


def test_a_numpy_step_runs_blas_with_the_trainers_threads_whatever_the_process_allows():
    """MKL's multi-threaded GEMMs sum in another order: a step must not depend on how the
    caller's process set BLAS up (the distributed workers and the epoch loop use the same count)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    m = dlc.load("specs/mlp.dl", mode="train")
    step = m.trainer(threads=1)
    seen = []
    inner = step._step
    step._step = lambda batch: (seen.append({i["num_threads"] for i in threadpool_info()
                                             if i["user_api"] == "blas"}), inner(batch))[1]
    batch = next(iter(step.train_batches(0)))[0]
    with threadpool_limits(limits=2, user_api="blas"):
        step(batch)
    assert seen == [{1}]


@pytest.mark.parametrize("call", [lambda: dlc.load("specs/xor.dl", seed=-1),
                                  lambda: dlc.load("specs/xor.dl", mode="train").trainer(seed=1.5),
                                  lambda: dlc.load("specs/xor.dl", mode="train").train(epochs=-2),
                                  lambda: dlc.load("specs/xor.dl", mode="train").train(epochs="3")])
def test_seeds_and_epoch_counts_are_integers_at_least_zero(call):
    """A coded E0110 naming the argument, not NumPy's ValueError/TypeError or a silent empty run."""
    with pytest.raises(DlcError) as e:
        call()
    assert e.value.code == "E0110" and "must be an integer >= 0" in e.value.message


def test_a_numpy_integer_seed_and_epoch_count_are_accepted():
    m = dlc.load("specs/xor.dl", mode="train", seed=np.int64(3))
    assert m.seed == 3 and len(m.train(epochs=np.int64(1), seed=np.int64(2), progress=False, echo=lambda *a: None).epochs) == 1


def test_onnxruntime_runs_need_only_the_inputs_the_wanted_outputs_read():
    """`predict({'x': x}, backend="onnxruntime")` failed with "missing input `y`": the session held
    every output (the loss too), where the interpreter prunes to the wanted ones."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    m = dlc.load("specs/xor.dl", mode="train")
    numpy_probs = m.predict({"x": x})["prob"]
    np.testing.assert_allclose(m.predict({"x": x}, backend="onnxruntime")["prob"], numpy_probs, rtol=1e-6)
    e = dlc.load("specs/xor.dl")
    np.testing.assert_allclose(e.run({"x": x}, outputs=["prob"], backend="onnxruntime")["prob"], numpy_probs, rtol=1e-6)
    y = np.array([[0], [1], [1], [0]], np.float32)
    both = e.run({"x": x, "y": y}, backend="onnxruntime")
    assert set(both) == {"prob", "loss", "acc"} and np.isclose(both["loss"], e.run({"x": x, "y": y})["loss"])
    e.params = {k: np.zeros_like(v) for k, v in e.params.items()}  # every session is rebuilt
    assert np.array_equal(e.run({"x": x}, outputs=["prob"], backend="onnxruntime")["prob"], np.full((4, 1), 0.5, np.float32))
    assert np.isclose(e.run({"x": x, "y": y}, backend="onnxruntime")["loss"], np.log(2), rtol=1e-6)


def test_outputs_may_be_one_name():
    """`outputs="prob"` was read letter by letter: "no output `p`"."""
    x = np.array([[0, 0], [1, 1]], np.float32)
    m = dlc.load("specs/xor.dl")
    assert list(m.run({"x": x}, outputs="prob")) == ["prob"]
    np.testing.assert_array_equal(m.predict({"x": x}, outputs="prob")["prob"], m.run({"x": x}, outputs=["prob"])["prob"])
    assert list(m.run({"x": x}, outputs="prob", backend="onnxruntime")) == ["prob"]
    assert [o.name for o in m.to_onnx(outputs="prob").graph.output] == ["prob"]

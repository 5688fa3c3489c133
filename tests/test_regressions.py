"""Regressions for defects found in review: each test failed before its fix."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError

QUIET = {"progress": False, "echo": lambda s: None}

TWO_PARTS = """
layer lin(x: f32[N, I], units: int) {{
    param W: [I, units] = glorot_uniform()
    return x @ W
}}
model m() {{
    input x: f32[N, 2]
    input y: f32[N, 1]
    a = lin(x, 4)
    c = lin(x, 4)
    output la = mse(lin(a, 1), y)
    output lc = mse(lin(c, 1), y)
}}
train m {{
    data = xor(same = true)  inputs = map(y = y_f)  batch = 4  epochs = 3
    {groups}
}}
"""


def test_groups_training_parameter_subsets_keep_the_others():
    text = TWO_PARTS.format(groups='step one { loss = la; params = ["a.*", "la.*"] } '
                                   'step two { loss = lc; params = ["c.*", "lc.*"] }')
    m = dlc.compile(text, mode="train")
    before = {k: v.copy() for k, v in m.params.items()}
    m.train(**QUIET)
    assert set(m.params) == set(before) == {"a.W", "c.W", "la.W", "lc.W"}
    assert all(not np.array_equal(before[k], m.params[k]) for k in m.params)


def test_overlapping_groups_keep_separate_optimizer_state():
    from dlc.runtime.trainer import build_steps

    text = TWO_PARTS.format(groups='step one { loss = la; optimizer = adam() } step two { loss = lc; optimizer = adam() }')
    m = dlc.compile(text, mode="train")
    one, two = build_steps(m, m.train_spec(), 1)
    assert "one/adam.m/a.W" in one.state_init and "two/adam.m/a.W" in two.state_init
    assert not set(one.state_init) & set(two.state_init)


def test_regulariser_pattern_may_match_another_groups_parameters():
    text = TWO_PARTS.format(groups='regularize = [l2(0.1, params = "c.W")] '
                                   'step one { loss = la; params = "a.*" } step two { loss = lc; params = "c.*" }')
    dlc.compile(text, mode="train").check_train()


def test_max_and_min_dispatch_only_on_the_written_names():
    m = dlc.compile("model m() { input x: f32[N, 3]\n output a = reduce_max(x, 1)\n output b = max(x, 0.0) }")
    x = np.array([[-1, 2, 0], [3, -4, 1]], np.float32)
    out = m.run({"x": x})
    np.testing.assert_array_equal(out["a"], [2, 3])
    np.testing.assert_array_equal(out["b"], np.maximum(x, 0))


def test_a_failed_const_fails_the_same_way_twice():
    from dlc.compiler.lower import compile_model, load_module, pick_model

    loaded = load_module(text="const K = nope\nmodel m() { input x: f32[N, 2]\n output y = x * K }")
    for _ in range(2):
        with pytest.raises(DlcError) as e:
            compile_model(loaded, pick_model(loaded, None))
        assert "unknown name `nope`" in e.value.message


def test_numbered_scopes_skip_names_the_user_bound():
    m = dlc.compile("""
layer lin(x: f32[N, I], units: int) { param W: [I, units] = zeros()  return x @ W }
model m() { input x: f32[N, 2]
  h = lin(lin(x, 4), 4)
  h_2 = lin(x, 3)
  output y = concat([h, h_2], axis = 1) }""")
    assert sorted(m.params) == ["h.W", "h_2.W", "h_3.W"]


def test_lossy_feeds_are_refused():
    m = dlc.compile("model m() { input y: i64[N]\n output z = y * 2 }")
    np.testing.assert_array_equal(m.run({"y": np.array([1.0, 2.0])})["z"], [2, 4])
    with pytest.raises(DlcError) as e:
        m.run({"y": np.array([0.7, 1.9])})
    assert e.value.code == "E0401" and "`y`" in e.value.message


def test_onnxruntime_runs_the_models_own_mode():
    text = "model m() { input x: f32[N, 64]\n output y = dropout(x, 0.5) }"
    m = dlc.compile(text, mode="train")
    x = np.ones((4, 64), np.float32)
    np.testing.assert_array_equal(m.run({"x": x}, seed=3)["y"], m.run({"x": x}, seed=3, backend="onnxruntime")["y"])
    assert (m.run({"x": x}, backend="onnxruntime")["y"] == 0).any()


def test_scan_cell_may_use_the_callers_symbolic_dims():
    m = dlc.compile("""
layer cell(x: f32[B, 3], h: f32[B, 3], n: int) { return h + x + mean(zeros([B, n])) }
model m() { input xs: f32[B, T, 3]
  hs, h = scan cell(n = T) over xs axis 1 init (zeros([B, 3]))
  output y = h }""")
    xs = np.ones((2, 4, 3), np.float32)
    np.testing.assert_allclose(m.run({"xs": xs})["y"], 4.0)
    np.testing.assert_allclose(m.run({"xs": xs}, backend="onnxruntime")["y"], 4.0)


def test_float_mod_matches_python_on_both_backends():
    m = dlc.compile("model m() { input x: f32[N]\n output y = x % 1.5 }")
    x = np.array([-0.3, 2.0, -4.0], np.float32)
    want = np.mod(x, np.float32(1.5))
    np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-6)
    np.testing.assert_allclose(m.run({"x": x}, backend="onnxruntime")["y"], want, rtol=1e-6)


def test_unknown_outputs_are_user_errors():
    m = dlc.load("specs/xor.dl")
    with pytest.raises(DlcError):
        m.run({}, outputs=["nope"])
    with pytest.raises(DlcError) as e:
        m.gradients({}, loss="nope")
    assert e.value.code == "E0301"


def test_training_can_continue_from_loaded_parameters(tmp_path):
    m = dlc.load("specs/xor.dl", mode="train")
    m.train(epochs=50, checkpoint=tmp_path / "ck", **QUIET)
    again = dlc.load("specs/xor.dl", mode="train")
    again.load_checkpoint(tmp_path / "ck")
    history = again.train(epochs=1, fresh=False, **QUIET)
    assert history.epochs[0]["loss"] < 0.5  # continued, not restarted from scratch (ln 2 = 0.69)


def test_random_ids_span_the_tables_they_index():
    from dlc.runtime.feeds import index_bounds, random_feeds

    m = dlc.load("specs/word2vec.dl")
    assert index_bounds(m.graph) == {"center": 50, "context": 50, "negatives": 50}
    feeds = random_feeds(m.graph, {"B": 400, "K": 3}, seed=0)
    assert feeds["center"].max() > 40 and feeds["center"].min() >= 0
    assert index_bounds(dlc.load("specs/mlp.dl").graph) == {"y": 10}


def test_a_dotted_name_in_a_train_block_number_is_an_error_not_a_crash(tmp_path):
    """Found by test_fuzz: `adam(lr = use.05)` reached the parameter lookup without a graph."""
    import dlc as _dlc
    from dlc.grammar.errors import DlcError as _Err

    text = ("model m() {\n    input x: f32[N, 2]\n    param W: [2, 1] = zeros()\n    output loss = mean(x @ W)\n}\n"
            "train m { data = xor(same = true); loss = loss; optimizer = adam(lr = use.05) }\n")
    with pytest.raises(_Err) as e:
        _dlc.compile(text, mode="train").check_train()
    assert e.value.code == "E0103" and "use.05" in e.value.message


@pytest.mark.parametrize("expr", ["p - q", "p / q", "p + q", "p * q", "p ** q", "p % q", "p // q",
                                  "maximum(p, q)", "abs(p)", "sign(p)"])
def test_arithmetic_on_booleans_is_a_type_error_at_its_operator(expr):
    """NumPy's arithmetic on bools raises (``-``) or gives other dtypes than the declared bool
    (``/`` float64, ``%`` int8): an error at compile time, pointing at the expression."""
    text = f"model m {{\n    input x: f32[B, 3]\n    p = x > 0.0\n    q = x < 1.0\n    output o = {expr}\n}}\n"
    with pytest.raises(DlcError) as err:
        dlc.compile(text)
    shown = err.value.render() if hasattr(err.value, "render") else str(err.value)
    assert "needs numbers" in shown and "`and`, `or`, `not`" in shown
    assert err.value.loc is not None and err.value.loc.line == 5
    ok = dlc.compile(text.replace(f"output o = {expr}", "output o = cast(p, f32) - cast(q, f32)"))
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(ok.run({"x": x})["o"], [[-1.0, 0.0, 1.0]])


def test_opt_level_takes_only_the_integers_it_names():
    m = dlc.compile("model m {\n    input x: f32[B, 3]\n    output y = x * 2.0\n}\n")
    for bad in (2.0, True, "2", 3):
        with pytest.raises(DlcError, match="opt_level must be one of 0, 1, 2"):
            m.opt_level = bad
    m.opt_level = 1
    assert m.opt_level == 1


def test_a_constant_index_past_the_fed_size_is_a_located_error_on_both_backends():
    """``xs[:, 2]`` type-checks for any T; fed T = 2 the kernel's own shape check failed with a
    bare ShapeError traceback on NumPy (onnxruntime already gave E0401)."""
    m = dlc.compile("model m {\n    input xs: f32[B, T, 3]\n    output y = xs[:, 2]\n}\n")
    for backend in ("numpy", "onnxruntime"):
        with pytest.raises(DlcError) as err:
            m.run({"xs": np.zeros((2, 2, 3), np.float32)}, backend=backend)
        assert err.value.code == "E0401"
    assert err.value.loc is None or err.value.loc.line == 3
    with pytest.raises(DlcError) as err:  # (the suite checks every value's type: the slice's is caught first)
        m.run({"xs": np.zeros((2, 2, 3), np.float32)})
    assert err.value.loc.line == 3
    np.testing.assert_array_equal(m.run({"xs": np.ones((2, 3, 3), np.float32)})["y"], np.ones((2, 3)))


def test_ragged_feeds_and_non_text_specs_are_errors_not_tracebacks():
    with pytest.raises(DlcError, match="takes the spec's text") as err:
        dlc.compile(3)
    assert err.value.code == "E0110"
    m = dlc.compile("model m {\n    input x: f32[B, 2]\n    output y = x * 2.0\n}\n")
    for backend in ("numpy", "onnxruntime"):
        with pytest.raises(DlcError, match="ragged nested list") as err:
            m.run({"x": [[1.0, 2.0], [3.0]]}, backend=backend)
        assert err.value.code == "E0401"
        np.testing.assert_array_equal(m.run({"x": [[1.0, 2.0], [3.0, 4.0]]}, backend=backend)["y"],
                                      [[2.0, 4.0], [6.0, 8.0]])

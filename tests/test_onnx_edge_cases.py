"""Exports at the edges of the op vocabulary: integer and bool dtypes, and feeds onnxruntime is
handed; each case states the values both backends must give (regressions of defects found by
hunting with small specs)."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError


def both(src: str, feeds: dict) -> dict:
    """{backend: outputs} of the spec's model run on both backends, its export checked in full."""
    m = dlc.compile(src)
    m.to_onnx()  # the full checker and strict shape inference
    return {be: m.run(feeds, backend=be) for be in ("numpy", "onnxruntime")}


def assert_both(src: str, feeds: dict, want: dict) -> None:
    for backend, out in both(src, feeds).items():
        for name, value in want.items():
            value = np.asarray(value)
            assert out[name].dtype == value.dtype, (backend, name, out[name].dtype)
            np.testing.assert_array_equal(out[name], value, err_msg=f"{backend} {name}")


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_integer_true_division_floors_in_onnx(dtype):
    """`/` on integers floors (docs: "integer `div` floors"); ONNX's Div truncates toward zero."""
    np_dt = np.dtype({"i32": np.int32, "i64": np.int64}[dtype])
    src = f"model m {{ input a: {dtype}[4]\n input b: {dtype}[4]\n output y = a / b }}"
    feeds = {"a": np.array([7, -7, 7, -7], np_dt), "b": np.array([2, 2, -2, -2], np_dt)}
    assert_both(src, feeds, {"y": np.array([3, -4, -4, 3], np_dt)})


def test_where_on_bool_branches():
    """onnxruntime has no Where kernel for bool branches: the model must still load and select."""
    src = ("model m { input c: bool[1, 3]\n input a: bool[2, 1]\n input b: bool[3]\n"
           " output y = where(c, a, b) }")
    feeds = {"c": np.array([[True, False, True]]), "a": np.array([[True], [False]]),
             "b": np.array([False, True, True])}
    assert_both(src, feeds, {"y": np.array([[True, True, True], [False, True, False]])})


def test_integer_sum_keeps_its_declared_dtype():
    """sum of i32 is i32 (the shape rule, ReduceSum); NumPy's own sum would give i64."""
    src = "model m { input a: i32[2, 3]\n output y = sum(a, axes = 1)\n output z = sum(a) }"
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert_both(src, {"a": a}, {"y": np.array([3, 12], np.int32), "z": np.int32(15)})


def test_integer_sum_to_keeps_its_declared_dtype():
    """sum_to (the un-broadcast of gradients, also an op of the language) of i32 is i32 too."""
    src = "model m { input a: i32[3, 2]\n output y = sum_to(a, [1, 2])\n output z = sum_to(a, []) }"
    a = np.array([[1, 2], [3, 4], [5, 7]], np.int32)
    assert_both(src, {"a": a}, {"y": np.array([[9, 13]], np.int32), "z": np.int32(22)})


def test_bool_extremes_and_arg_extremes_export():
    """reduce_max/min (any/all) and argmax/argmin of bools: ONNX's kernels take no bools."""
    src = ("model m { input x: bool[2, 3]\n output any = reduce_max(x, axes = 1)\n"
           " output all = reduce_min(x, axes = [0, 1], keepdims = true)\n"
           " output first = argmax(x, axis = 1)\n output none = argmin(x, axis = 0, keepdims = true) }")
    x = np.array([[False, True, True], [False, False, False]])
    assert_both(src, {"x": x}, {"any": np.array([True, False]), "all": np.array([[False]]),
                                "first": np.array([1, 0]), "none": np.array([[0, 1, 1]])})


def test_ordering_comparisons_of_bools():
    """False < True as in NumPy; ONNX's Less & co. take no bools."""
    src = ("model m { input a: bool[4]\n input b: bool[4]\n output lt = a < b\n output le = a <= b\n"
           " output gt = a > b\n output ge = a >= b }")
    a, b = np.array([False, False, True, True]), np.array([False, True, False, True])
    assert_both(src, {"a": a, "b": b}, {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b})


@pytest.mark.parametrize("expr, message", [("sum(a)", "`sum` needs numbers"),
                                           ("logsumexp(i)", "`logsumexp` needs a float tensor"),
                                           ("sigmoid_xent(i, i)", "`sigmoid_xent` needs float tensors"),
                                           ("a @ a", "`@` needs numbers"), ("clip(a, 0, 1)", "`clip` needs numbers"),
                                           ("sum_to(a, [1])", "`sum_to` needs numbers")])
def test_ops_reject_the_dtypes_they_cannot_type(expr, message):
    """sum and sum_to of bools (NumPy counts them, an i64, not the bool the type said), `@` and
    clip of bools, logsumexp and sigmoid_xent of ints (ONNX's MatMul, Clip, ReduceSum, Exp and
    Softplus take none) are compile errors, not exports that fail the checker."""
    with pytest.raises(DlcError, match=message) as info:
        dlc.compile(f"model m {{ input a: bool[3]\n input i: i32[3]\n output y = {expr} }}")
    assert info.value.code == "E0104"


@pytest.mark.parametrize("name, feed", [("i", np.array([0.5, 1.0])), ("i", np.array(["0", "1"])),
                                        ("x", np.ones((2, 3), np.complex128))])
def test_onnxruntime_refuses_lossy_feed_conversions(name, feed):
    """As the interpreter does: a feed that would change value on conversion (0.5 → 0 as an index,
    complex → real, text) is E0401 on the onnxruntime backend too, not a silent cast or a traceback."""
    m = dlc.compile("model m { input x: f32[2, 3]\n input i: i64[2]\n output z = gather(x, i) }")
    feeds = {"x": np.ones((2, 3), np.float32), "i": np.array([0, 1]), name: feed}
    for backend in ("numpy", "onnxruntime"):
        with pytest.raises(DlcError, match=f"input `{name}` is {feed.dtype}, which cannot become") as info:
            m.run(feeds, backend=backend)
        assert info.value.code == "E0401"


TRAIN = """
model m() {{
    input x: f32[B, 2]
    input y: i64[B]
    param W: [2, 4] = normal(1.0)
    param b: [4] = zeros()
    param V: [4, 2] = normal(1.0)
    output loss = cross_entropy(tanh(x @ W + b) @ V, y)
}}
train m {{
    data = gaussian_mixture(n = 32, k = 2, split = [1.0, 0.0, 0.0])
    batch = 8
    loss = loss
    optimizer = {optimizer}
    {extra}
}}
"""


@pytest.mark.parametrize("optimizer, extra", [
    ("sgd(lr = 0.3)", "schedule = warmup(1, then = step(1, gamma = 0.5))"),
    ("momentum(lr = 0.1, beta = 0.9)", "schedule = exponential(0.5)\n    weight_decay = 0.01"),
    ("nesterov(lr = 0.1)", "schedule = cosine(total = 2, min_lr = 0.001)\n    clip = norm(0.5)"),
    ("adagrad(lr = 0.1, initial = 0.1)", "schedule = inverse(0.5, power = 2.0)\n    clip = value(0.05)"),
    ("rmsprop(lr = 0.01)", "schedule = exponential(0.5)\n    regularize = [l1(0.01), l2(0.02)]"),
    ("adadelta()", "schedule = step(1, gamma = 0.5)"),
    ("adam(lr = 0.01)", "schedule = cosine(total = 2)\n    weight_decay = decay(0.1, params = \"W\")"),
    ("adamw(lr = 0.01, weight_decay = 0.1)", "schedule = warmup(1)\n    clip = norm(0.5)"),
    ("ftrl(lr = 0.1, l1 = 0.01, l2 = 0.01)", "schedule = exponential(0.5)"),
], ids=lambda v: v.split("(")[0] if "=" not in v.split("(")[0] else None)
def test_exported_training_steps_follow_the_schedule_for_several_steps(optimizer, extra):
    """Six steps (a short last batch among them) of the exported step against NumPy's: 32 examples
    in batches of 8 make 4 steps per epoch, so the schedules move within the run; the NumPy step
    must count the export's steps per epoch (tests/step_parity.py read 10 whatever the data)."""
    from step_parity import check_groups_after_k_steps

    m = dlc.compile(TRAIN.format(optimizer=optimizer, extra=extra))
    r = np.random.default_rng(0)
    batches = [{"x": r.standard_normal((n, 2)).astype(np.float32), "y": r.integers(0, 2, n)}
               for n in (8, 8, 8, 8, 3, 8)]
    before = dict(m.params)
    after = check_groups_after_k_steps(m, batches, rtol=1e-5, atol=1e-6)
    assert all(not np.allclose(after[k], before[k]) for k in ("W", "V"))  # the steps trained


@pytest.mark.parametrize("shape, target, want", [
    ((0, 3, 2), "[B, T * 2]", (0, 6)),  # a copied B beside an inferred T * 2: -1 beside a 0
    ((3, 0, 2), "[2, T, B]", (2, 0, 3)),  # a copied T = 0 beside an inferred B
    ((3, 0, 2), "[T, B, 2]", (0, 3, 2)),  # computed dims: a run-time 0 read as "copy"
    ((3, 4, 2), "[2, T, B]", (2, 4, 3)),
])
def test_reshape_to_dims_that_are_zero_at_run_time(shape, target, want):
    """A symbolic dim may be 0 at run time; ONNX Reshape reads a 0 as "copy the input's dim"
    (without allowzero) and cannot infer a -1 beside one."""
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    src = f"model m {{ input x: f32[B, T, 2]\n output y = reshape(x, {target}) }}"
    assert_both(src, {"x": x}, {"y": x.reshape(want)})


def test_a_linear_layer_over_an_empty_sequence():
    """The fused Gemm of `x @ W + b` on [B, T, K] reshapes its rows back to [B, T, N]: T = 0 too."""
    src = ("model m { input x: f32[B, T, 3]\n param W: [3, 4] = ones()\n param b: [4] = ones()\n"
           " output y = x @ W + b }")
    m = dlc.compile(src)
    assert "Gemm" in {n.op_type for n in m.to_onnx().graph.node}
    for shape in ((3, 0, 3), (2, 5, 3)):
        x = np.ones(shape, np.float32)
        assert_both(src, {"x": x}, {"y": np.full(shape[:2] + (4,), 4.0, np.float32)})


def test_reshape_between_static_empty_shapes():
    """[2, 0] -> [0, 5]: both hold no element (the shape rule cancelled the 0s as common factors
    and compared 2 with 5)."""
    assert_both("model m { input x: f32[2, 0]\n output y = reshape(x, [0, 5]) }",
                {"x": np.zeros((2, 0), np.float32)}, {"y": np.zeros((0, 5), np.float32)})
    with pytest.raises(DlcError, match="15 elements"):
        dlc.compile("model m { input x: f32[2, 0]\n output y = reshape(x, [3, 5]) }")


@pytest.mark.parametrize("op", ["gather_grad", "max_pool1d_grad", "max_pool2d_grad", "max_pool3d_grad"])
def test_f16_scatter_add_gradients_run_in_onnxruntime(op):
    """The gradients of gather/embedding and max pooling scatter-add; onnxruntime's CPU
    ScatterElements has no f16 add (a run-time error): they must still give the kernel's values."""
    from dlc.compiler.onnx_export import export_graph, verify
    from dlc.compiler.ops.registry import get_op
    from dlc.runtime.ort import OrtSession
    from op_harness import materialise, seed_of
    from test_onnx_ops import build, kernel_outputs

    cls = get_op(op)
    for i, sample in enumerate(cls.samples):
        arrays = materialise(sample, np.float16, seed_of(f"{op}-{i}"))
        g, feeds, node = build(cls, sample, arrays)
        (want,) = kernel_outputs(g, feeds, node)
        model = export_graph(g, params={}, name=op)
        verify(model, g)
        got = OrtSession(model).run(feeds)["y0"]
        assert got.dtype == np.float16 and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_f16_arange_exports():
    """ONNX's Range takes no f16 (the export failed the checker at -O0, and always for a dim bound)."""
    src = "model m { input x: f32[T]\n output y = arange(T, dtype = f16)\n output z = arange(1, 7, 2, dtype = f16) }"
    m = dlc.compile(src)
    m.opt_level = 0
    m.to_onnx()
    for backend in ("numpy", "onnxruntime"):
        out = m.run({"x": np.zeros(4, np.float32)}, backend=backend)
        assert out["y"].dtype == np.float16 and out["z"].dtype == np.float16
        np.testing.assert_array_equal(out["y"], [0, 1, 2, 3])
        np.testing.assert_array_equal(out["z"], [1, 3, 5])


def test_flip_of_a_scalar():
    """flip of a rank-0 tensor is itself; its export was a Slice, which onnxruntime refuses on scalars."""
    src = "model m { input s: f32[]\n output y = flip(s)\n output z = flip(s * 2.0) }"
    assert_both(src, {"s": np.float32(1.5)}, {"y": np.float32(1.5), "z": np.float32(3.0)})


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_float_floor_division_and_mod_follow_numpy_at_rounding_boundaries(dtype):
    """NumPy's float // and % start from fmod (exact); the export floored a rounded a / b:
    1.5 // 0.3 (0.3 a little above 3/10) was 5 with remainder 0 where NumPy gives 4 and ~0.3."""
    np_dt = np.dtype({"f32": np.float32, "f64": np.float64}[dtype])
    a = np.array([1.5, -1.5, 1.5, 7.0, -7.5, 0.0, 1.0, -1.0, 0.0], np_dt)
    b = np.array([0.3, 0.3, -0.3, -0.7, 2.0, 0.3, 0.0, 0.0, 0.0], np_dt)
    src = f"model m {{ input a: {dtype}[9]\n input b: {dtype}[9]\n output q = a // b\n output r = a % b }}"
    with np.errstate(divide="ignore", invalid="ignore"):
        want_q, want_r = np.floor_divide(a, b), np.mod(a, b)
    if dtype == "f32":
        assert want_q[0] == 4  # the boundary case this is about (in f64, 0.3 rounds the other way)
    for backend, out in both(src, {"a": a, "b": b}).items():
        np.testing.assert_array_equal(out["q"], want_q, err_msg=backend)  # (nan == nan here)
        np.testing.assert_allclose(out["r"], want_r, rtol=1e-6, atol=0, err_msg=backend)

"""The nn (vision) ops beyond what the generic op tests see: symbolic batch and
spatial dims through the forward and backward graphs (interpreter vs
onnxruntime), tie-breaking of max pooling, and the shape rules' errors."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.builder import Builder
from dlc.compiler.dims import Sym, floordiv
from dlc.compiler.graph import Graph, Value
from dlc.compiler.onnx_export import export_graph, verify
from dlc.compiler.ops.registry import get_op
from dlc.compiler.passes.backprop import backprop
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

N, H, W = Sym.var("N"), Sym.var("H"), Sym.var("W")


def graph_with(*inputs):
    """A graph whose f32 inputs have the given (name, shape) and a train-mode builder."""
    g = Graph("t")
    b = Builder(g, mode="train")
    values = []
    for name, shape in inputs:
        n = g.add_node("input", (), {"name": name}, (TensorType("f32", shape),))
        g.add_input(n)
        values.append(Value(n))
    return g, b, values


def with_grads(g, b, out, wrt):
    """Outputs ``y`` and the gradient of sum(y * y) w.r.t. each of ``wrt``."""
    loss = b.sum(b.mul(out, out))
    grads = backprop(g, loss, wrt, builder=b)
    g.set_outputs({"y": out, **{f"d{i}": grads[v] for i, v in enumerate(wrt)}})


def check_both_backends(g, feeds_list):
    model = export_graph(g, params={}, name="t")
    verify(model, g)
    session = OrtSession(model)
    for feeds in feeds_list:
        want = Plan(g).run(feeds)
        got = session.run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_symbolic_batch_through_every_op_and_its_gradient():
    g, b, (x, w, wt) = graph_with(("x", (N, 4, 7, 6)), ("w", (6, 2, 3, 3)), ("wt", (6, 2, 3, 2)))
    y = b.conv2d(x, w, stride=2, padding=1, groups=2)                            # [N, 6, 4, 3]
    y = b.relu(b.conv_transpose2d(y, wt, stride=2, output_padding=1, groups=2))  # [N, 4, 10, 8]
    y = b.max_pool2d(y, kernel=3, stride=2, padding=1)                           # [N, 4, 5, 4]
    y = b.avg_pool2d(y, kernel=2, stride=1, padding=1, count_include_pad=False)  # [N, 4, 6, 5]
    y = b.upsample_nearest(b.global_avg_pool(y), scale=(2, 3))                   # [N, 4, 2, 3]
    assert b.type(y).shape == (N, 4, 2, 3)
    with_grads(g, b, y, [x, w, wt])
    ops = {g.op(n) for n in g.nodes()}
    assert {"conv2d_grad_input", "conv2d_grad_weight", "max_pool2d_grad", "avg_pool2d_grad"} <= ops
    check_both_backends(g, [{"x": rand(n, 4, 7, 6, seed=n), "w": rand(6, 2, 3, 3, seed=10),
                             "wt": rand(6, 2, 3, 2, seed=11)} for n in (2, 3)])


def test_symbolic_image_size_with_exact_strides():
    g, b, (x, w, wt) = graph_with(("x", (N, 3, H, W)), ("w", (4, 3, 3, 3)), ("wt", (4, 2, 3, 3)))
    y = b.conv2d(x, w, padding=1)                                               # stride 1: [N, 4, H, W]
    assert b.type(y).shape == (N, 4, H, W)
    up = b.conv_transpose2d(y, wt, stride=2, padding=1, output_padding=1)       # [N, 2, 2H, 2W]
    assert b.type(up).shape == (N, 2, 2 * H, 2 * W)
    down = b.max_pool2d(up, kernel=2)                                           # floor(2H / 2) = H
    assert b.type(down).shape == (N, 2, H, W)
    with_grads(g, b, down, [x, w, wt])  # the grads size strided convs over 2H: exact too
    check_both_backends(g, [{"x": rand(2, 3, 3, 4), "w": rand(4, 3, 3, 3, seed=1), "wt": rand(4, 2, 3, 3, seed=2)},
                            {"x": rand(1, 3, 5, 2), "w": rand(4, 3, 3, 3, seed=1), "wt": rand(4, 2, 3, 3, seed=2)}])


def test_strided_windows_over_symbolic_sizes_give_floor_dims():
    """Any image size: ⌊(H + 2p − k)/s⌋ + 1 stays symbolic, unifies across ops, prints,
    exports as dim_param and resolves at run time (both backends, two sizes)."""
    g, b, (x, w) = graph_with(("x", (N, 3, H, W)), ("w", (4, 3, 3, 3)))
    y = b.conv2d(x, w, stride=2, padding=1)                                  # ⌊(H − 1)/2⌋ + 1
    half = floordiv(H + 1, 2)
    assert b.type(y).shape == (N, 4, half, floordiv(W + 1, 2))
    assert str(half) == "(H + 1)//2"
    z = b.max_pool2d(y, kernel=2, ceil_mode=True)                           # ⌈half / 2⌉
    assert b.type(z).shape[2] == floordiv(half + 1, 2)
    g.set_outputs({"y": y, "z": z})
    model = export_graph(g, params={}, name="t")
    dims = [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[2] == "(H + 1)//2"
    wv = rand(4, 3, 3, 3, seed=1)
    check_both_backends(g, [{"x": rand(2, 3, h, w_), "w": wv} for h, w_ in ((16, 16), (24, 32), (7, 5))])
    got = Plan(g).run({"x": rand(1, 3, 7, 5), "w": wv})
    assert got["y"].shape == (1, 4, 4, 3) and got["z"].shape == (1, 4, 2, 2)


def test_gradients_over_floor_dims_on_both_backends():
    """The backward graph over (H + 1)//2 sizes: conv_grad_input's ConvTranspose pads
    by what the size lacks at run time; the pooling gradients follow."""
    g, b, (x, w) = graph_with(("x", (N, 2, H, W)), ("w", (3, 2, 3, 3)))
    y = b.conv2d(x, w, stride=2)
    y = b.avg_pool2d(b.max_pool2d(y, kernel=2, ceil_mode=True), kernel=3, stride=2, padding=1)
    with_grads(g, b, y, [x, w])
    g.verify()
    check_both_backends(g, [{"x": rand(2, 2, h, h + 1, seed=h), "w": rand(3, 2, 3, 3, seed=1)} for h in (9, 12)])


@pytest.mark.parametrize("args, attrs, message", [
    (((2, 3, 5, 5), (4, 2, 3, 3)), {}, "expects 2"),
    (((2, 4, 5, 5), (3, 2, 3, 3)), {"groups": 2}, "multiple of groups"),
    (((2, 3, 2, 2), (4, 3, 3, 3)), {}, "smaller than the window"),
    (((2, 3, 5, 5), (4, 3, 3, 3)), {"stride": (1, 2, 3)}, "list of 2 integers"),
    (((2, 3, 5, 5), (4, 3, 3, 3)), {"padding": (1, 0, 1, 0)}, "ambiguous"),
    (((2, 3, 5, 5), (4, 3, 3, 3)), {"padding": "same", "stride": 2}, "needs stride 1"),
    (((2, 3, 5, 5), (4, 3, 3, 3)), {"padding": "full"}, "must be"),
    (((2, 3, 5, 5), (4, 3, 3, 3)), {"stride": 0}, ">= 1"),
])
def test_conv2d_shape_errors(args, attrs, message):
    g, b, values = graph_with(*[(f"i{k}", s) for k, s in enumerate(args)])
    with pytest.raises(DlcError, match=message):
        b.conv2d(*values, **attrs)


def test_pool_padding_is_at_most_half_the_kernel():
    g, b, (x,) = graph_with(("x", (N, 3, 6, 6)))
    with pytest.raises(DlcError, match="more than half the kernel"):
        b.max_pool2d(x, kernel=2, padding=2)


def test_conv_transpose_needs_output_padding_below_the_stride():
    g, b, (x, w) = graph_with(("x", (N, 3, 4, 4)), ("w", (3, 2, 3, 3)))
    with pytest.raises(DlcError, match="output_padding < stride"):
        b.conv_transpose2d(x, w, stride=2, output_padding=2)


def test_max_pool_gradient_goes_to_the_first_maximum():
    x = np.array([[[[1., 1., 0., 2.],
                    [1., 0., 2., 2.],
                    [3., 3., 3., 3.],
                    [3., 3., 3., 3.]]]], dtype=np.float32)
    dy = np.array([[[[10., 20.], [30., 40.]]]], dtype=np.float32)
    dx = get_op("max_pool2d_grad").kernel(x, dy, kernel=(2,), stride=None, padding=0, dilation=(1,),
                                          ceil_mode=False)
    want = np.zeros_like(x)
    want[0, 0, 0, 0], want[0, 0, 0, 3], want[0, 0, 2, 0], want[0, 0, 2, 2] = 10, 20, 30, 40
    np.testing.assert_array_equal(dx, want)


def test_conv2d_matches_a_direct_sum():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    s, p, d, groups = (2, 1), (1, 2), (2, 1), 2
    y = get_op("conv2d").kernel(x, w, stride=s, padding=p, dilation=d, groups=groups)  # [h, w] pads both sides
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    want = np.zeros_like(y)
    for o in range(6):
        g = o // 3
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                patch = xp[:, 2 * g:2 * g + 2, i * s[0]:i * s[0] + d[0] * 2 + 1:d[0], j * s[1]:j * s[1] + d[1] * 1 + 1:d[1]]
                want[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(y, want, rtol=1e-12)

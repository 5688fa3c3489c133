"""``layer_norm_grad``: the backward pass of ``layer_norm`` as one kernel.

As graph nodes the backward pass recomputes the row statistics and makes ten
passes over the activations plus four row means and two bias-style sums,
each a node of its own (the Transformer block's two layer norms: ~0.5 ms of
its NumPy step each, PyTorch's fused ``native_layer_norm_backward`` 0.09 ms).
The kernel computes the same formula with the row statistics by BLAS row sums
and ``einsum`` row dots on rows of up to 4096 elements, ``np.sum`` on longer
ones (compiler/ops/rows.py) and its temporaries in place:
the same operations in the same order, so it agrees with the graph-node form
within float rounding (the row sums round in BLAS's order).

Its outputs are ``dx`` and ``dy * x̂`` (the per-element part of gamma's
gradient, which the backprop driver sums over the leading axes as before, so
the node keeps examples apart like ``layer_norm`` itself).  Its own gradient
— second derivatives of a layer norm — is the VJP of that same formula built
from primitives (``_formula``), so it is exact to every order; the ONNX
lowering emits the formula's nodes.
"""
from __future__ import annotations

import numpy as np

from ..dims import shape_str
from ..types import FLOATS, ShapeError, norm_axis, np_dtype, same_dtype
from . import jit
from .registry import Arg, Attr, Op, Sample, register
from .rows import dot_keepdims, sum_keepdims
from .shape import i64, prod_dims


def stats_dtype(x: np.ndarray):
    return np.float32 if x.dtype == np.float16 else x.dtype  # f16 statistics in f32, as ONNX's stash_type


def as_rows(x: np.ndarray, a: int) -> np.ndarray:
    """``x`` as [rows, prod(shape[a:])]: a view when C-contiguous, else a copy."""
    return x.reshape((prod_dims(x.shape[:a]), prod_dims(x.shape[a:])))


def standardise(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(x̂, 1/σ) of each row of a float [R, n]: x̂ = (x - mean) / sqrt(var + eps) in a fresh
    buffer, 1/σ as [R, 1].  The variance is the two-pass mean((x - mean)²), which does not
    cancel when |mean| >> std."""
    n = rows.shape[1]
    compiled = jit.for_size(rows.size)
    if compiled is not None and jit.rows_of(rows):
        xhat, inv = np.empty_like(rows), np.empty((rows.shape[0], 1), rows.dtype)
        dt = rows.dtype
        compiled.layer_norm_stats_rows(rows, jit.scalar(n, dt), jit.scalar(eps, dt), jit.scalar(1.0, dt),
                                       xhat, inv.reshape(-1))
        return xhat, inv
    xc = rows - sum_keepdims(rows, -1) / n
    var = dot_keepdims(xc, xc, -1) / n
    inv = 1.0 / np.sqrt(var + np.asarray(eps, rows.dtype))
    xc *= inv  # xc is ours: scale it in place
    return xc, inv


def grad_from_stats(dy, xhat: np.ndarray, inv: np.ndarray, gamma, shape: tuple, xhat_is_scratch: bool):
    """(dx, dy * x̂) of a layer norm from its statistics, all in one float dtype: ``xhat`` as
    [R, n] rows, ``inv`` (1/σ) as [R, 1], ``dy`` and ``gamma`` broadcasting to ``shape``.

    dx = inv * (g - mean(g) - x̂ * mean(g * x̂)) with g = dy * gamma, computed in g's buffer;
    ``xhat_is_scratch``: x̂'s buffer may hold the product x̂ * mean(g * x̂) (the same values
    as a temporary would)."""
    compiled = jit.for_size(xhat.size)
    if compiled is not None and jit.rows_of(xhat) and np.size(gamma) == xhat.shape[1]:  # gamma: one row's shape
        rows = np.ascontiguousarray(np.broadcast_to(dy, shape)).reshape(xhat.shape)  # dy: maybe a broadcast view
        dx, dgamma = np.empty(shape, xhat.dtype), np.empty(shape, xhat.dtype)
        compiled.layer_norm_grad_rows(rows, xhat, np.ascontiguousarray(inv).reshape(-1),
                                      np.ascontiguousarray(gamma, xhat.dtype).reshape(-1),
                                      jit.scalar(xhat.shape[1], xhat.dtype), dx.reshape(xhat.shape),
                                      dgamma.reshape(xhat.shape))
        return dx, dgamma
    # the products with dy in x's shape, into C-order buffers: dy may be a broadcast view
    # (a mean's gradient), which needs no copy that way
    g = np.multiply(dy, gamma, out=np.empty(shape, xhat.dtype))
    rows = g.reshape(xhat.shape)
    n = rows.shape[1]
    mean_g = sum_keepdims(rows, -1) / n
    mean_gx = dot_keepdims(rows, xhat, -1) / n
    if xhat_is_scratch:  # dy * x̂ before x̂'s buffer takes the product
        dgamma = np.multiply(dy, xhat.reshape(shape), out=np.empty(shape, xhat.dtype))
        along = np.multiply(xhat, mean_gx, out=xhat)
    else:
        along = np.multiply(xhat, mean_gx)
    rows -= mean_g
    rows -= along
    rows *= inv
    if not xhat_is_scratch:
        # the product's buffer, dead now, takes dy * x̂: two fresh buffers instead of three
        dgamma = np.multiply(dy, xhat.reshape(shape), out=along.reshape(shape))
    return g, dgamma


@register
class LayerNormGrad(Op):
    """``layer_norm_grad(dy, x, gamma, axis=-1, eps=1e-5)`` → (dx, dy * x̂): the gradient of
    ``layer_norm(x, gamma, beta, axis, eps)`` for the cotangent ``dy`` (see the module
    docstring); beta's gradient is ``dy`` itself."""

    name, family = "layer_norm_grad", "norm"
    inputs = ("dy", "x", "gamma")
    outputs = ("dx", "dgamma_rows")
    attrs = {"axis": Attr("int", -1, doc="first normalised axis"), "eps": Attr("float", 1e-5)}
    samples = [Sample((Arg((2, 3, 4)), Arg((2, 3, 4)), Arg((4,)))),
               Sample((Arg((2, 3, 4)), Arg((2, 3, 4)), Arg((3, 4))), {"axis": 1}),
               Sample((Arg((5,)), Arg((5,)), Arg((5,))), note="one vector"),
               Sample((Arg((3, 1)), Arg((3, 1)), Arg((1,))), note="one element: dx = 0")]

    def shape(self, dy, x, gamma, axis, eps):
        dtype = same_dtype("layer_norm_grad", dy, x, gamma)
        if dtype not in FLOATS or x.rank == 0:
            raise ShapeError(f"`layer_norm_grad` needs float tensors of rank >= 1, got {x}")
        if dy != x:
            raise ShapeError(f"`layer_norm_grad` needs a cotangent of its input's type, got {dy} and {x}")
        a = norm_axis(axis, x.rank)
        if gamma.shape != x.shape[a:]:
            raise ShapeError(f"gamma of `layer_norm_grad` must have shape {shape_str(x.shape[a:])}, "
                             f"got {shape_str(gamma.shape)}")
        return x, x

    def kernel(self, dy, x, gamma, axis, eps):
        a = norm_axis(axis, x.ndim)
        st = stats_dtype(x)
        xhat, inv = standardise(as_rows(x.astype(st, copy=False), a), eps)  # [R, n] and [R, 1]
        dx, dgamma = grad_from_stats(dy.astype(st, copy=False), xhat, inv, gamma.astype(st, copy=False),
                                     x.shape, xhat_is_scratch=True)
        return dx.astype(x.dtype, copy=False), dgamma.astype(x.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, axis, eps):
        # fresh stand-ins (in _vjp_of), so the VJP is of the formula alone: dy may itself depend on x
        return _vjp_of(b, lambda b, dy, x, gamma: _formula(b, dy, x, gamma, axis, eps), inputs, cts)

    def onnx(self, e, ins, outs, axis, eps):
        dy, x, gamma = ins
        t = e.in_types[1]
        a = norm_axis(axis, t.rank)
        stats = onnx_stats_dtype(t.dtype)
        if stats != t.dtype:
            dy, x, gamma = (e.node("Cast", [v], 1, to=e.onnx_dtype(stats))[0] for v in (dy, x, gamma))
        xhat, inv, mean = _onnx_stats(e, x, t, a, stats, eps)
        _onnx_grad_from_stats(e, dy, xhat, inv, gamma, mean, outs, stats, t.dtype)


def _formula(b, dy, x, gamma, axis, eps):
    """(dx, dy * x̂) of a layer norm as graph nodes: what the kernel computes (x̂ recomputed
    from x, not (y - beta) / gamma, which fails where gamma is 0)."""
    xhat, inv = _stats_formula(b, x, axis, eps)
    return _grad_stats_formula(b, dy, xhat, inv, gamma, axis)


# -- the statistics shared between a layer norm and its gradient ------------------------------
# ``layer_norm_grad`` recomputes x̂ and 1/σ from x (4 of its ~12 passes over the rows).  In a
# training step the NumPy backend's optimizer (compiler/passes/share_layer_norm_stats.py)
# computes them once, with ``layer_norm_stats``, for the forward affine part (primitive
# ``mul`` / ``add``) and ``layer_norm_grad_stats``: the same functions in the same order, so
# the values are the two kernels' bit for bit, at the cost of keeping x̂ until the backward pass.
def _stats_shape(x, axis: int):
    a = norm_axis(axis, x.rank)
    return x.with_shape(x.shape[:a] + (1,) * (x.rank - a))


def _vjp_of(b, formula, inputs, cts):
    """The VJP of ``formula(b, *stand-ins)`` at ``inputs`` for the output cotangents ``cts``."""
    from ..passes.backprop import vjp

    proxies = [b.identity(v) for v in inputs]  # fresh stand-ins: the VJP is of the formula alone
    results = formula(b, *proxies)
    seeds = {r: ct for r, ct in zip(results, cts) if ct is not None}
    grads = vjp(b.graph, seeds, proxies, b)
    return [grads[p] for p in proxies]


def _stats_formula(b, x, axis, eps):
    """(x̂, 1/σ) of the rows from ``axis`` on, as graph nodes: what ``standardise`` computes."""
    rank = b.type(x).rank
    ax = tuple(range(norm_axis(axis, rank), rank))
    xc = b.sub(x, b.mean(x, axes=ax, keepdims=True))
    inv = b.div(1.0, b.sqrt(b.add(b.mean(b.mul(xc, xc), axes=ax, keepdims=True), eps)))
    return b.mul(xc, inv), inv


def _grad_stats_formula(b, dy, xhat, inv, gamma, axis):
    """(dx, dy * x̂) of a layer norm from its statistics, as graph nodes."""
    rank = b.type(xhat).rank
    ax = tuple(range(norm_axis(axis, rank), rank))
    g = b.mul(dy, gamma)
    inner = b.sub(b.sub(g, b.mean(g, axes=ax, keepdims=True)),
                  b.mul(xhat, b.mean(b.mul(g, xhat), axes=ax, keepdims=True)))
    return b.mul(inv, inner), b.mul(dy, xhat)


@register
class LayerNormStats(Op):
    """``layer_norm_stats(x, axis=-1, eps=1e-5)`` → (x̂, 1/σ): the standardised rows from
    ``axis`` on and their reciprocal standard deviation (keepdims: 1 along the normalised
    axes), as ``layer_norm`` and ``layer_norm_grad`` compute them (float16 in float32)."""

    name, family = "layer_norm_stats", "norm"
    inputs = ("x",)
    outputs = ("xhat", "inv")
    attrs = {"axis": Attr("int", -1, doc="first normalised axis"), "eps": Attr("float", 1e-5)}
    samples = [Sample((Arg((2, 3, 4)),)), Sample((Arg((2, 3, 4)),), {"axis": 1}),
               Sample((Arg((3, 1)),), note="one element: x̂ = 0")]

    def shape(self, x, axis, eps):
        if x.dtype not in FLOATS or x.rank == 0:
            raise ShapeError(f"`layer_norm_stats` needs a float tensor of rank >= 1, got {x}")
        if eps < 0:
            raise ShapeError(f"`layer_norm_stats` needs eps >= 0, got {eps}")
        return x, _stats_shape(x, axis)

    def kernel(self, x, axis, eps):
        a = norm_axis(axis, x.ndim)
        xhat, inv = standardise(as_rows(x.astype(stats_dtype(x), copy=False), a), eps)
        return (xhat.reshape(x.shape).astype(x.dtype, copy=False),
                inv.reshape(x.shape[:a] + (1,) * (x.ndim - a)).astype(x.dtype, copy=False))

    def grad(self, b, inputs, outputs, cts, axis, eps):
        return _vjp_of(b, lambda b, x: _stats_formula(b, x, axis, eps), inputs, cts)

    def onnx(self, e, ins, outs, axis, eps):
        (x,), t = ins, e.in_types[0]
        a = norm_axis(axis, t.rank)
        stats = onnx_stats_dtype(t.dtype)
        if stats != t.dtype:
            (x,) = e.node("Cast", [x], 1, to=e.onnx_dtype(stats))
        xhat, inv, _ = _onnx_stats(e, x, t, a, stats, eps)
        for v, out in zip((xhat, inv), outs):
            if stats == t.dtype:
                e.node("Identity", [v], [out])
            else:
                e.node("Cast", [v], [out], to=e.onnx_dtype(t.dtype))


@register
class LayerNormGradStats(Op):
    """``layer_norm_grad_stats(dy, xhat, inv, gamma, axis=-1)`` → (dx, dy * x̂): ``layer_norm_grad``
    from the statistics ``layer_norm_stats`` computed (its kernel's second half)."""

    name, family = "layer_norm_grad_stats", "norm"
    inputs = ("dy", "xhat", "inv", "gamma")
    outputs = ("dx", "dgamma_rows")
    attrs = {"axis": Attr("int", -1, doc="first normalised axis")}
    samples = [Sample((Arg((2, 3, 4)), Arg((2, 3, 4)), Arg((2, 3, 1), "positive"), Arg((4,)))),
               Sample((Arg((2, 3, 4)), Arg((2, 3, 4)), Arg((2, 1, 1), "positive"), Arg((3, 4))), {"axis": 1})]

    def shape(self, dy, xhat, inv, gamma, axis):
        same_dtype("layer_norm_grad_stats", dy, xhat, inv, gamma)
        if xhat.dtype not in FLOATS or xhat.rank == 0 or dy != xhat:
            raise ShapeError(f"`layer_norm_grad_stats` needs float dy and x̂ of one type, got {dy} and {xhat}")
        a = norm_axis(axis, xhat.rank)
        if inv != _stats_shape(xhat, axis) or gamma.shape != xhat.shape[a:]:
            raise ShapeError(f"`layer_norm_grad_stats`: 1/σ must have shape {shape_str(_stats_shape(xhat, axis).shape)} "
                             f"and gamma {shape_str(xhat.shape[a:])}, got {shape_str(inv.shape)} and "
                             f"{shape_str(gamma.shape)}")
        return xhat, xhat

    def kernel(self, dy, xhat, inv, gamma, axis):
        a = norm_axis(axis, xhat.ndim)
        st = stats_dtype(xhat)
        xh = as_rows(xhat.astype(st, copy=False), a)
        iv = inv.astype(st, copy=False).reshape(xh.shape[0], 1)
        dx, dgamma = grad_from_stats(dy.astype(st, copy=False), xh, iv, gamma.astype(st, copy=False),
                                     xhat.shape, xhat_is_scratch=False)  # x̂ is shared: left unchanged
        return dx.astype(xhat.dtype, copy=False), dgamma.astype(xhat.dtype, copy=False)

    def grad(self, b, inputs, outputs, cts, axis):
        return _vjp_of(b, lambda b, *v: _grad_stats_formula(b, *v, axis), inputs, cts)

    def onnx(self, e, ins, outs, axis):
        dy, xhat, inv, gamma = ins
        t = e.in_types[1]
        a = norm_axis(axis, t.rank)
        stats = onnx_stats_dtype(t.dtype)
        if stats != t.dtype:
            dy, xhat, inv, gamma = (e.node("Cast", [v], 1, to=e.onnx_dtype(stats))[0] for v in ins)
        _onnx_grad_from_stats(e, dy, xhat, inv, gamma, _onnx_rows_mean(e, xhat, t, a, stats), outs, stats, t.dtype)


def _onnx_grad_from_stats(e, dy: str, xhat: str, inv: str, gamma: str, mean, outs: list[str], stats: str,
                          dtype: str) -> None:
    """Emit :func:`grad_from_stats`' formula into ``outs`` (dx, dy * x̂): the operands in dtype
    ``stats``, the outputs cast back to ``dtype`` when it differs; ``mean`` from
    :func:`_onnx_rows_mean`."""
    (g,) = e.node("Mul", [dy, gamma], 1)
    (centred,) = e.node("Sub", [g, mean(g)], 1)
    (along,) = e.node("Mul", [xhat, mean(e.node("Mul", [g, xhat], 1)[0])], 1)
    (inner,) = e.node("Sub", [centred, along], 1)
    for (u, v), out in zip(((inv, inner), (dy, xhat)), outs):
        if stats == dtype:
            e.node("Mul", [u, v], [out])
        else:
            e.node("Cast", [e.node("Mul", [u, v], 1)[0]], [out], to=e.onnx_dtype(dtype))


def onnx_stats_dtype(dtype: str) -> str:
    """The dtype the exported statistics are computed in: float32 for float16 (as the kernels'
    ``stats_dtype``, and ONNX's ``stash_type``), else the input's."""
    return "f32" if dtype == "f16" else dtype


def _onnx_stats(e, x: str, t, a: int, stats: str, eps: float):
    """Emit (x̂, 1/σ) of the rows of ``x`` (type ``t``, normalised from axis ``a``, already in
    dtype ``stats``), two-pass as ``standardise``; also returns the rows' mean emitter."""
    dt = np.dtype(np_dtype(stats))
    mean = _onnx_rows_mean(e, x, t, a, stats)
    (xc,) = e.node("Sub", [x, mean(x)], 1)
    (var,) = e.node("Add", [mean(e.node("Mul", [xc, xc], 1)[0]), e.const(np.asarray(eps, dt))], 1)
    (inv,) = e.node("Div", [e.const(np.asarray(1.0, dt)), e.node("Sqrt", [var], 1)[0]], 1)
    (xhat,) = e.node("Mul", [xc, inv], 1)
    return xhat, inv, mean


def _onnx_rows_mean(e, like: str, t, a: int, stats: str):
    """A function emitting the mean over the axes ``a``.. (ReduceSum and Div, as ``mean``
    exports) of values shaped like ``like`` (of type ``t``), in dtype ``stats``."""
    dt = np.dtype(np_dtype(stats))
    axes = i64(e, list(range(a, t.rank)))
    n = prod_dims(t.shape[a:])
    if isinstance(n, int):
        count = e.const(np.asarray(n, dt))
    else:  # a symbolic normalised dim: the count from the run-time shape
        (dims,) = e.node("Gather", [e.node("Shape", [like], 1)[0], e.const(np.arange(a, t.rank))], 1, axis=0)
        (count,) = e.node("Cast", [e.int_product(dims, t.rank - a)], 1, to=e.onnx_dtype(stats))

    def mean(v):
        return e.node("Div", [e.node("ReduceSum", [v, axes], 1, keepdims=1)[0], count], 1)[0]
    return mean

"""``grad(y, x)`` in the language: a gradient as ordinary graph nodes.

``grad(y, x)`` is the gradient of the scalar float expression ``y`` with
respect to ``x`` — any float value in scope: an input, a binding, a
parameter (``grad(y, [a, b])`` gives one gradient per entry).  It is built by
the same reverse-mode pass as training gradients (``passes.backprop.vjp``),
right where it is written, so the result is a value like any other: it can
be returned, reduced, fed to a layer, or put into a loss — and that loss is
differentiated again by training (second order), because every node the
first pass emits has a gradient rule of its own.  A ``y`` that does not
depend on ``x`` gives zeros.  Gradient nodes built for inputs nobody asked
about are removed again, so the graph holds only what the result needs.
"""
from __future__ import annotations

from ..graph import Value
from ..passes.backprop import vjp
from ..types import FLOATS
from .frame import Frame, describe, is_tensor


def grad_call(frame: Frame, args: list, kwargs: dict, e) -> Value | tuple[Value, ...]:
    """Lower ``grad(y, x)`` (evaluated arguments) in ``frame``; ``e`` is the call, for locations."""
    locs = [a.loc for a in getattr(e, "args", ())] or [e.loc, e.loc]
    if kwargs:
        raise frame.error("E0102", f"`grad` has no argument `{next(iter(kwargs))}`", e.loc,
                          hint="`grad(y, x)`: the gradient of scalar y with respect to x")
    if len(args) != 2:
        raise frame.error("E0102", f"`grad` takes 2 arguments (y, x), got {len(args)}", e.loc,
                          hint="`grad(y, x)`: the gradient of scalar y with respect to x")
    y, wrt = args
    b = frame.builder
    if not is_tensor(y):
        raise frame.error("E0103", f"the first argument of `grad` must be a tensor, got {describe(y)}", locs[0])
    ty = b.type(y)
    if ty.shape != () or ty.dtype not in FLOATS:
        raise frame.error("E0301", f"`grad` differentiates a float scalar, got {ty}", locs[0],
                          hint="reduce it first, e.g. `grad(sum(y), x)`")
    many = isinstance(wrt, (list, tuple))
    targets = list(wrt) if many else [wrt]
    for t in targets:
        if not is_tensor(t):
            raise frame.error("E0103", f"`grad` differentiates with respect to a tensor, got {describe(t)}",
                              locs[1])
        if b.type(t).dtype not in FLOATS:
            raise frame.error("E0301", f"`grad` with respect to {b.type(t)}: only float values have gradients",
                              locs[1], hint="integer and boolean values are constants to differentiation")
    graph = b.graph
    before = set(graph.nodes())
    with b.at(role="backward", grad_of=y.node, loc=e.loc, scope=frame.scope, context=frame.context or None):
        seed = b.const(1.0, ty.dtype)
        grads = vjp(graph, {y: seed}, targets, b)
        out = []
        for t in targets:
            g = grads[t]
            if g is None:  # y does not depend on t
                tt = b.type(t)
                g = b.zeros(shape=tt.shape, dtype=tt.dtype)
            out.append(g)
    _drop_unused(graph, before, out)
    return tuple(out) if many else out[0]


def _drop_unused(graph, before: set[int], results: list[Value]) -> None:
    """Remove this call's nodes (those not in ``before``) that the results do
    not need: cotangents of off-path inputs that rules build anyway."""
    new = {n for n in graph.nodes() if n not in before}
    needed = graph.ancestors(v.node for v in results)
    graph.remove_nodes(new - needed)


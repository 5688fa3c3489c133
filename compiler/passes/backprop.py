"""Symbolic reverse-mode differentiation: gradients as more graph nodes.

``backprop(graph, loss, wrt)`` prunes the graph to the nodes on a path from
the wanted parameters to the loss, walks them in reverse topological order
and calls each op's VJP rule through a builder in the ``backward`` role, so
every gradient node is tagged with the forward node it comes from
(``grad_of``).  A value's cotangent contributions are summed once, right
before its producer's rule runs; a value with no contribution is a symbolic
zero (``None``) and never materialised, except as the final gradient of a
parameter the loss does not depend on.  Broadcasting is undone here
(``sum_to``), not in the rules.  Integer and boolean values carry no
gradient.  Missing rules are reported together, with op and source line.
"""
from __future__ import annotations

from dlc.grammar.errors import DlcError, DlcErrors

from ..builder import Builder
from ..graph import SOURCE_OPS, Graph, Value
from ..ops.registry import get_op
from ..types import FLOATS


def backprop(graph: Graph, loss: Value, wrt: list[str] | list[Value], *,
             builder: Builder | None = None) -> dict:
    """Add the gradient of the scalar ``loss`` w.r.t. each of ``wrt``.

    ``wrt`` holds parameter names (→ returns ``{name: Value}``) or Values
    (→ returns ``{Value: Value}``).  Returned gradients have the exact type
    of their target; a target the loss does not depend on gets zeros.
    """
    b = builder or Builder(graph)
    loss_t = graph.type_of(loss)
    if loss_t.shape != ():
        raise DlcError("E0301", f"the loss must be a scalar, got {loss_t}", graph[loss.node].loc,
                       hint="reduce it, e.g. mean(...)")
    with b.at(role="backward", grad_of=loss.node):
        seed = b.const(1.0, loss_t.dtype)
    targets = [Value(graph.params[w]) if isinstance(w, str) else w for w in wrt]
    grads = vjp(graph, {loss: seed}, targets, b)
    result = {}
    for w, v in zip(wrt, targets):
        g = grads[v]
        if g is None:
            t = graph.type_of(v)
            with b.at(role="backward", grad_of=v.node, scope=graph[v.node].scope):
                g = b.zeros(shape=t.shape, dtype=t.dtype)
        result[w] = g
    return result


def vjp(graph: Graph, seeds: dict[Value, Value], wrt: list[Value], b: Builder) -> dict[Value, Value | None]:
    """Vector-Jacobian product: cotangents ``seeds`` (value → cotangent) pulled
    back to each of ``wrt``; ``None`` marks a symbolic zero."""
    on_path = _on_path(graph, {v.node for v in wrt}, {v.node for v in seeds})
    cts: dict[Value, list[Value]] = {v: [ct] for v, ct in seeds.items()}
    missing: list[DlcError] = []
    wanted = set(wrt)
    done: dict[Value, Value | None] = {}
    for n in reversed(graph.topo_order()):
        if n not in on_path:
            continue
        data = graph[n]
        out_cts = [_total(b, cts.pop(v, None)) for v in graph.out_values(n)]
        for v, ct in zip(graph.out_values(n), out_cts):
            if v in wanted:
                done[v] = ct
        if data.op in SOURCE_OPS or all(c is None for c in out_cts):
            continue
        opdef = get_op(data.op)
        if not opdef.differentiable:
            continue
        if not opdef.has("grad"):
            missing.append(DlcError("E0301", f"no gradient rule for `{data.op}`", data.loc,
                                    context=data.scope or None))
            continue
        ins = data.inputs
        with b.at(role="backward", grad_of=n, scope=data.scope, loc=data.loc):
            in_cts = opdef.grad(b, list(ins), graph.out_values(n), out_cts, **data.attrs)
            for v, ct in zip(ins, in_cts):
                if ct is None or v.node not in on_path or graph.type_of(v).dtype not in FLOATS:
                    continue
                cts.setdefault(v, []).append(_fit(b, ct, graph.type_of(v)))
    if missing:
        raise DlcErrors(missing) if len(missing) > 1 else missing[0]
    return {v: done.get(v) for v in wrt}


def _on_path(graph: Graph, sources: set[int], sinks: set[int]) -> set[int]:
    """Nodes that are descendants of ``sources`` and ancestors of ``sinks``."""
    up = graph.ancestors(sinks)
    return up & graph.descendants(s for s in sources if s in up)


def _total(b: Builder, parts: list[Value] | None) -> Value | None:
    if not parts:
        return None
    total = parts[0]
    for p in parts[1:]:
        total = b.add(total, p)
    return total


def _fit(b: Builder, ct: Value, target) -> Value:
    """Undo broadcasting: sum ``ct`` down to ``target``'s shape."""
    t = b.type(ct)
    if t.shape != target.shape:
        ct = b.sum_to(ct, shape=target.shape)
    if b.type(ct).dtype != target.dtype:
        ct = b.cast(ct, dtype=target.dtype)
    return ct


def gradient_graph(graph: Graph, loss: str, mode: str = "train") -> tuple[Graph, dict]:
    """A copy of ``graph`` extended with the gradients of output ``loss`` with
    respect to every parameter; returns (the copy, {param name: gradient Value})."""
    from ..builder import Builder

    g = graph.copy()
    names = sorted(g.params)
    grads = backprop(g, g.outputs[loss], names, builder=Builder(g, mode=mode, role="backward"))
    return g, grads

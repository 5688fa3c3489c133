"""``max_pool(relu(z))`` rewritten as ``relu(max_pool(z))``, with its gradient (both backends).

ReLU is monotone non-decreasing, so it commutes with a window maximum:
``max(relu(a), relu(b)) == relu(max(a, b))`` bit for bit.  After the swap the
ReLU and its gradient ``relu_grad`` run on the pooled tensor: a quarter of the
elements under LeNet's 2x2 pools.  The training graph's backward pair
``relu_grad(max_pool_grad(relu(z), dy), relu(z))`` becomes
``max_pool_grad(z, relu_grad(dy, relu(max_pool(z))))``.

Why the gradient is the same (max pooling routes ``dy`` of each window to its
first maximum in row-major order; ``relu_grad`` masks with ``x > 0``; a
finite ``dy``).  Take one window with maximum ``m`` over ``z``:

- ``m > 0``: ``relu(z_i) == m`` exactly where ``z_i == m`` (ReLU is the
  identity above 0), so the first maximum of ``relu(z)`` is the first
  maximum of ``z``; there ``z > 0``, and both sides deliver ``dy`` to it.
- ``m <= 0`` (or NaN): every ``relu(z_i)`` is 0 (the first maximum is the
  window's first element) and every mask is 0, so before the swap the window
  sends ``dy * 0``; after it, ``relu_grad`` at ``m`` sends ``0 * dy`` to the
  first maximum of ``z``.  Zero either way; it lands on an element with
  ``z <= 0``, whose gradient is zero before the swap too.  (A NaN maximum is
  the first NaN in both orders and its mask is 0.)

Where windows overlap, an element with ``z > 0`` receives the same
contributions in the same window order on both sides; an element with
``z <= 0`` receives zeros.  So the results are equal as values (the sign of
a zero may differ).  A non-finite ``dy`` (docs/guarantees.md) may put its
NaN on another element of a window whose maximum is <= 0.

Only ReLU (``relu``; ``leaky_relu`` with alpha 0 is already ``relu``) is
rewritten.  A leaky ReLU with ``0 < alpha < 1`` is monotone but not
injective in floating point: ``alpha * a`` and ``alpha * b`` can round to
one float for ``a != b`` (and underflow to zero for subnormals), which
makes a tie in the activated window that is not a tie in ``z``, so the first
maximum, hence where the gradient goes, can differ (the tests show such a
pair).  ``tanh`` and ``sigmoid`` saturate the same way.  Pools with padding
(or ceil mode's overhang) are left alone: a window of ``-inf`` inputs could
send its (zero) gradient to a padding position.

It fires only when the ReLU's value has no other reader than the pool (and,
in a training graph, the pool's gradient and ReLU's gradient, the pool
gradient read by ``relu_grad`` alone), is no named output or next state, and
the pool's attrs match its gradient's.  One sweep: O(nodes).
"""
from __future__ import annotations

from ..graph import Graph, Value
from ..ops import nn  # noqa: F401  (registers the window ops; pool.py imports from nn)
from ..ops.pool import Window
from .rewrite import Uses

POOLS = {f"max_pool{k}d" for k in (1, 2, 3)}


def pool_before_relu(graph: Graph) -> int:
    """Move every ReLU that only a max pool reads after that pool; returns how many."""
    uses = Uses(graph)
    swapped = 0
    for r in list(graph.nodes()):
        if r not in graph or graph.op(r) != "relu":
            continue
        match = _match(graph, uses, r)
        if match is None:
            continue
        pool, pool_grad, mask_grad = match
        _swap(graph, uses, r, pool, pool_grad, mask_grad)
        swapped += 1
    return swapped


def _match(graph: Graph, uses: Uses, r: int):
    """``(pool, pool_grad, relu_grad)`` around relu node ``r`` (the last two None in a
    graph without the gradient), or None when the rewrite does not apply."""
    if uses.external_indices(r):
        return None
    readers = graph.consumers(r)
    pools = [c for c in readers if graph.op(c) in POOLS]
    if len(pools) != 1 or not _unpadded(graph, pools[0]):
        return None
    pool = pools[0]
    if len(readers) == 1:
        return pool, None, None
    if len(readers) != 3:
        return None
    grad_op = graph.op(pool) + "_grad"
    pool_grads = [c for c in readers if graph.op(c) == grad_op]
    masks = [c for c in readers if graph.op(c) == "relu_grad"]
    if len(pool_grads) != 1 or len(masks) != 1:
        return None
    pool_grad, mask_grad = pool_grads[0], masks[0]
    pg, mg = graph[pool_grad], graph[mask_grad]
    if (pg.inputs[0] != Value(r) or pg.inputs[1].node == r or pg.attrs != graph[pool].attrs
            or mg.inputs != (Value(pool_grad), Value(r)) or mg.attrs.get("alpha", 0.0) != 0.0
            or graph.consumers(pool_grad) != [mask_grad] or uses.external_indices(pool_grad)):
        return None
    return pool, pool_grad, mask_grad


def _unpadded(graph: Graph, pool: int) -> bool:
    """Does every window of ``pool`` lie inside the image (no padding, no ceil-mode overhang)?"""
    rec = graph[pool]
    size = graph.type_of(rec.inputs[0]).shape[2:]
    win = Window(rec.op, len(size), size, **{k: v for k, v in rec.attrs.items() if v is not None})
    return (win.static or not win.ceil) and not any(map(any, win.eff))


def _swap(graph: Graph, uses: Uses, r: int, pool: int, pool_grad: int | None, mask_grad: int | None) -> None:
    rr, pr = graph[r], graph[pool]
    z = rr.inputs[0]
    pooled = graph.add_node(pr.op, [z], pr.attrs, pr.types, loc=pr.loc, scope=pr.scope, role=pr.role,
                            grad_of=pr.grad_of)
    act = graph.add_node("relu", [Value(pooled)], rr.attrs, pr.types, loc=rr.loc, scope=rr.scope,
                         role=rr.role, grad_of=rr.grad_of)
    uses.replace(pool, [Value(act)])
    gone = [pool, r]
    if pool_grad is not None:
        pg, mg = graph[pool_grad], graph[mask_grad]
        dy = pg.inputs[1]
        # the mask from the activated output, as relu's own gradient rule reads it
        masked = graph.add_node("relu_grad", [dy, Value(act)], mg.attrs, (graph.type_of(dy),), loc=mg.loc,
                                scope=mg.scope, role=mg.role, grad_of=act)
        routed = graph.add_node(pg.op, [z, Value(masked)], pg.attrs, pg.types, loc=pg.loc, scope=pg.scope,
                                role=pg.role, grad_of=pooled)
        uses.replace(mask_grad, [Value(routed)])
        gone += [mask_grad, pool_grad]
    graph.remove_nodes(gone)

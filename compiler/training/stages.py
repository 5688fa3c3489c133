"""Partition a gradient graph at its cross-batch reductions, for data-parallel workers.

A data-parallel worker runs the gradient graph on its shard of the batch.  That
is the global batch's step as long as no value reduced over the batch feeds
further per-example computation: the shards' losses and gradients are then
just averaged.  Batch normalisation breaks this: its mean and variance (and
the sums in its gradient) are reductions over the batch that every example's
output depends on, so each shard must see the *global* sums.

:func:`stage_plan` finds those dependencies and cuts the graph there.  Every
value gets a distribution class, in one walk in topological order:

- ``sharded``: per-example, its type mentions the batch dim (the leading dim of
  the data inputs) — each worker holds its rows;
- ``partial``: a sum over the batch of sharded values (``sum``/``sum_to``/a
  contraction over the batch, and ``count`` of batch axes), or a linear function
  of such sums — each worker holds its shard's term and the global value is the
  sum over the workers;
- ``replicated``: everything else (parameters, state, constants and what is
  computed from them and from reduced values) — the same on every worker.

A partial value that something non-linear consumes (``sum / count``, a
broadcast back over the batch, …) is a *reduction point*: its consumers read
the workers' summed value instead.  Nodes fall into stages by the reduction
points on their paths (stage = the most reduction points crossed); each stage
is an ordinary graph whose outputs are its reduction points (``sum/…``, to be
summed across the workers), the values later stages read (``keep/…``, kept on
the worker) and the final outputs it computes; later stages take them as
inputs of the same names.  A stage graph also keeps every input of the
original graph, so the symbolic dims stay bound the same way.

Two rules keep the rounds few.  Before the walk, :func:`distribute_sums` moves
each batch ``sum_to`` of the gradient below ``neg``/``add``/``sub`` and out of
a ``mul`` by a factor constant along the summed axes, so a sum does not wait
for a factor that needs an earlier round; and in the walk a partial value
times a factor ready only in a later stage is summed across the workers first
(the sum travels while the factor is computed).  Batch norm's gradient then
takes one round per layer, not two.

Counts over the batch are partial too, so every mean over the batch divides
by the global count, the loss is the global mean and the final gradients are
partial — the sum of the workers' outputs.  A graph whose only reductions
feeding per-example values are counts, and whose sums over the batch are all
divided by counts (a per-example-mean loss: the backward pass scales by
1 / count), needs no stages: the workers' gradients, averaged weighted by shard
size, are already the global ones, and :func:`stage_plan` returns None.  A sum
loss (or a sum added to a mean) gets a plan instead — one stage for a plain
sum — whose partial outputs the driver sums.

A value is sharded only if the op computing it keeps the examples apart
(compiler/training/rowwise.py: ``softmax(x, axis = 0)``, ``h @ transpose(h)``
or ``h[1:]`` do not); otherwise it is opaque, and a per-example value computed
from an opaque one is an error (:class:`SyncError`, E0201 with several workers).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..dims import Sym
from ..graph import RNG_INPUT, SOURCE_OPS, Graph, Value
from ..ops.reduction import reduced_axes
from ..passes.distribute_sums import distribute_sums
from .rowwise import row_wise

REPLICATED, SHARDED, PARTIAL, OPAQUE = "replicated", "sharded", "partial", "opaque"
SUMMED, SAME = "sum", "same"  # how the workers' final outputs combine: summed, or identical on every worker

# Ops that, given per-example inputs and an output without the batch dim, sum over the batch
# (a contraction is a sum of per-example products).
BATCH_SUMS = frozenset({"sum", "sum_to", "matmul", "matmul_t", "conv1d_grad_weight", "conv2d_grad_weight",
                        "conv3d_grad_weight", "gather_grad"})
# Ops linear in a partial argument when their other arguments are replicated: unary ones, and
# mul / div (numerator) by a replicated factor.  add / sub are linear when every argument is partial.
_LINEAR_UNARY = frozenset({"reshape", "unsqueeze", "squeeze", "transpose", "neg", "sum", "sum_to", "flatten",
                           "slice", "slice_grad", "broadcast_to"})


class SyncError(ValueError):
    """A reduction over the batch that cannot be split into per-worker sums (e.g. a max), or
    an op that mixes the examples of a batch; ``loc``: where the spec computes it, if known."""

    def __init__(self, message: str, loc=None):
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class StagePlan:
    """The stages of a gradient graph: run ``graphs`` in order on every worker; after
    stage ``k`` sum the workers' ``sum/…`` outputs (``reduced[k]``) and feed those sums
    to the later stages' inputs of the same names.  ``outputs`` says how each final
    output combines across the workers (:data:`SUMMED` or :data:`SAME`)."""

    graphs: tuple[Graph, ...]
    reduced: tuple[tuple[str, ...], ...]
    outputs: dict[str, str]


def batch_dims(graph: Graph) -> frozenset[str]:
    """The names in the leading dim of the data inputs (every input but the random key)."""
    names: set[str] = set()
    for n in graph.inputs:
        rec = graph[n]
        if rec.attrs["name"] != RNG_INPUT and rec.types[0].rank:
            names |= _names(rec.types[0].shape[0])
    return frozenset(names)


def _names(d) -> set[str]:
    return {name for mono in d.terms for name, _ in mono} if isinstance(d, Sym) else set()


def _mentions(t, batch: frozenset[str]) -> bool:
    return any(_names(d) & batch for d in t.shape)


def classify(graph: Graph, batch: frozenset[str]) -> tuple[dict[Value, str], set[Value]]:
    """(class of every value, the reduction points): iterated until no consumer needs a
    partial value it cannot take.  A round adds the reduction points it found and drops
    those that are no longer partial (a value that looked partial only because an earlier
    point was not reduced yet); few rounds."""
    reduce_at: set[Value] = set()
    order = graph.topo_order()
    for _ in range(len(order) + 1):
        cls, new = _walk(graph, order, batch, reduce_at)
        stale = {v for v in reduce_at if cls[v] != PARTIAL}
        if not new and not stale:
            return cls, reduce_at
        reduce_at = (reduce_at - stale) | new
    raise SyncError("the batch reductions of this graph do not settle into stages")  # not seen: a guard


def _walk(graph, order, batch, reduce_at):
    cls: dict[Value, str] = {}
    new: set[Value] = set()
    depth: dict[int, int] = {}  # the stage a node would run in with these reduction points

    def ready(v: Value) -> int:
        return depth[v.node] + (v in reduce_at) if v.node in depth else 0

    for n in order:
        rec = graph[n]
        outs = graph.out_values(n)
        if rec.op in SOURCE_OPS:
            sharded = rec.op == "input" and rec.attrs["name"] != RNG_INPUT and _mentions(rec.types[0], batch)
            twice = sum(bool(_names(d) & batch) for d in rec.types[0].shape) > 1  # [B, B]: not split by rows
            cls[outs[0]] = (OPAQUE if twice else SHARDED) if sharded else REPLICATED
            continue
        depth[n] = max((ready(v) for v in rec.inputs), default=0)
        ins = [REPLICATED if v in reduce_at else cls[v] for v in rec.inputs]
        if OPAQUE in ins:  # stays opaque; where it meets the batch again it is per-example in name only
            cls.update({v: SHARDED if _mentions(t, batch) else OPAQUE for v, t in zip(outs, rec.types)})
            continue
        if PARTIAL in ins:
            # a partial times a factor that is ready only later is summed first: the sum then
            # crosses the workers while the factor is still being computed, one round earlier
            late = any(c == REPLICATED and ready(v) > min(ready(u) for u, d in zip(rec.inputs, ins) if d == PARTIAL)
                       for v, c in zip(rec.inputs, ins))
            if _linear(rec.op, ins) and not late and not any(_mentions(t, batch) for t in rec.types):
                cls.update({v: PARTIAL for v in outs})
            else:
                new |= {v for v, c in zip(rec.inputs, ins) if c == PARTIAL}
                cls.update({v: REPLICATED for v in outs})  # provisional: the next round reduces first
            continue
        sharded_in = SHARDED in ins
        rowwise = not sharded_in or row_wise(graph, rec, [v for v, c in zip(rec.inputs, ins) if c == SHARDED], batch)
        for v, t in zip(outs, rec.types):
            if _mentions(t, batch):
                # per-example (also a broadcast of replicated values to the local batch), unless the
                # op mixes the examples: then each worker's rows are not the global batch's rows
                cls[v] = SHARDED if rowwise else OPAQUE
            elif not sharded_in:
                cls[v] = REPLICATED
            elif rec.op == "count":
                x = graph.type_of(rec.inputs[0])
                axes = reduced_axes("count", rec.attrs.get("axes"), x.rank)
                cls[v] = PARTIAL if any(_names(x.shape[a]) & batch for a in axes) else REPLICATED
            elif rec.op in BATCH_SUMS:
                cls[v] = PARTIAL
            else:  # a max over the batch, a scan's accumulators, ...: not known to be a sum
                cls[v] = OPAQUE
    return cls, new


def _linear(op: str, ins: list[str]) -> bool:
    if op in _LINEAR_UNARY:
        return len(ins) == 1
    if op in ("add", "sub"):
        return all(c == PARTIAL for c in ins)
    if op in ("mul", "matmul"):
        return sorted(ins) == [PARTIAL, REPLICATED]
    if op == "div":
        return ins == [PARTIAL, REPLICATED]
    return False


def _opaque_roots(graph: Graph, cls: dict[Value, str]) -> list[int]:
    """The nodes where opaque values start (no opaque input), in topological order."""
    return sorted({v.node for v, c in cls.items() if c == OPAQUE
                   and not any(cls.get(u) == OPAQUE for u in graph.in_values(v.node))})


def _loc(graph: Graph, nodes) -> object:
    return next((graph[n].loc for n in nodes if graph[n].loc is not None), None)


def _check_examples_stay_apart(graph: Graph, cls: dict[Value, str]) -> None:
    """Raise :class:`SyncError` when a per-example value is computed from an opaque one (an op
    that mixes examples, a reduction not known to be a sum): each worker would compute its rows
    from its own shard's mixture, not the global batch's.  Opaque values that only reach the
    final outputs (a scan's accumulated gradients) keep per-shard semantics and are left alone."""
    for n in graph.topo_order():
        rec = graph[n]
        if any(cls.get(v) == OPAQUE for v in rec.inputs) and any(cls[v] == SHARDED for v in graph.out_values(n)):
            root = _root(graph, cls, n)
            raise SyncError(f"`{graph.op(root)}` mixes the examples of the batch (or reduces over it with an op "
                            "that is not a sum) and per-example values depend on it: each worker would see its "
                            "own shard's mixture, not the global batch's", graph[root].loc)


def _root(graph: Graph, cls: dict[Value, str], n: int) -> int:
    """The node where the opaque values ``n`` reads start, following opaque inputs back."""
    while True:
        up = next((v.node for v in graph.in_values(n) if cls.get(v) == OPAQUE), None)
        if up is None:
            return n
        n = up


def cross_batch(graph: Graph, cls: dict[Value, str], reduce_at: set[Value]) -> bool:
    """Whether a reduction point other than a count feeds a per-example value."""
    points = {v.node for v in reduce_at if graph.op(v.node) != "count"}
    if not points:
        return False
    below = graph.descendants(points) - points
    return any(c == SHARDED for v, c in cls.items() if v.node in below)


def weighted_mean_is_exact(graph: Graph, cls: dict[Value, str], reduce_at: set[Value]) -> bool:
    """Whether the shards' outputs averaged weighted by shard size are the global batch's, for a
    graph without cross-batch dependencies: every sum over the batch is divided by a count over
    it (a per-example mean — ``sum / count``), every partial output (a gradient) is scaled by
    one over such a count, and every other output is such a mean or affine in them.  A sum
    loss (no count) or a sum added to a mean is not: the mean of the shards' sums is 1/N of
    the global sum; nor is a squared mean.  Such graphs run as a plan instead: their partial
    outputs are summed over the workers, the counts global."""
    counts = {v for v in reduce_at if graph.op(v.node) == "count"}
    for v in reduce_at - counts:
        for user in graph.consumers(v.node):
            ins = graph.in_values(user)
            if not (graph.op(user) == "div" and ins[0] == v and ins[1] in counts and v not in ins[1:]):
                return False
    count_nodes = {v.node for v in counts}
    batch_nodes = {v.node for v, c in cls.items() if c == SHARDED} | {v.node for v in reduce_at}
    for v in graph.outputs.values():
        if cls[v] == PARTIAL and not graph.ancestors({v.node}) & count_nodes:
            return False
        if cls[v] == REPLICATED and not _a_mean(graph, v, reduce_at, counts, batch_nodes):
            return False
    return True


def _a_mean(graph: Graph, v: Value, reduce_at: set[Value], counts: set[Value], batch_nodes: set[int]) -> bool:
    """Whether replicated ``v`` is a per-example mean (``sum / count``) or an affine function of
    such means — what a size-weighted mean of the shards' values preserves (not ``mean · mean``)."""
    def free(u: Value) -> bool:  # nothing of the batch in it
        return not ({u.node} | graph.ancestors({u.node})) & batch_nodes

    if free(v):
        return True
    op, ins = graph.op(v.node), graph.in_values(v.node)
    if op == "div" and ins[0] in reduce_at and ins[1] in counts:
        return True
    if op in ("add", "sub"):
        return all(_a_mean(graph, u, reduce_at, counts, batch_nodes) for u in ins)
    if op in ("mul", "div"):
        tied = [u for u in ins if not free(u)]
        return len(tied) == 1 and (op == "mul" or tied[0] == ins[0]) and \
            _a_mean(graph, tied[0], reduce_at, counts, batch_nodes)
    if op in ("neg", "reshape", "squeeze", "unsqueeze", "cast", "identity"):
        return _a_mean(graph, ins[0], reduce_at, counts, batch_nodes)
    return False


def stage_plan(graph: Graph) -> StagePlan | None:
    """The stages of gradient graph ``graph`` for data-parallel workers (module docstring),
    or None when there is no cross-batch dependency to synchronise and the shards' size-weighted
    mean is the step (:func:`weighted_mean_is_exact`; a sum loss gets a plan, maybe of one stage,
    whose partial outputs are summed).  Raises :class:`SyncError` when a per-example value
    depends on an *opaque* one — an op that mixes the examples (compiler/training/rowwise.py) or
    a reduction over the batch not known to be a sum (a max over the batch) — and when the graph
    needs synchronising but also has opaque reductions (a scan's accumulated gradients), whose
    shards cannot be combined.  Opaque reductions that only reach the final outputs, in a graph
    that needs no synchronising, keep today's semantics: each shard's, averaged."""
    batch = batch_dims(graph)
    if not batch:
        return None
    cls, reduce_at = classify(graph, batch)
    _check_examples_stay_apart(graph, cls)
    if not cross_batch(graph, cls, reduce_at) and weighted_mean_is_exact(graph, cls, reduce_at):
        return None
    graph = distribute_sums(graph, batch)
    cls, reduce_at = classify(graph, batch)
    roots = _opaque_roots(graph, cls)
    if roots:
        opaque = sorted({graph.op(n) for n in roots})
        raise SyncError(f"{', '.join(f'`{o}`' for o in opaque)} reduce{'s' if len(opaque) == 1 else ''} over "
                        "the batch in a way that cannot be split into per-worker sums", _loc(graph, roots))
    order = graph.topo_order()
    stage: dict[int, int] = {}
    for n in order:
        if graph.op(n) not in SOURCE_OPS:
            stage[n] = max((stage[v.node] + (v in reduce_at) for v in graph.in_values(n) if v.node in stage),
                           default=0)
    last = max(stage.values(), default=0)
    finals = graph.outputs
    produced_in = {name: stage.get(v.node, last) for name, v in finals.items()}
    for name, v in finals.items():
        if cls[v] == SHARDED:
            raise SyncError(f"output `{name}` is per-example; a data-parallel step returns batch values only")
    # what each stage reads from earlier ones, by name
    reads: list[dict[Value, str]] = [{} for _ in range(last + 1)]
    for n, k in stage.items():
        for v in graph.in_values(n):
            if v.node in stage and stage[v.node] < k:
                reads[k][v] = _name(v, v in reduce_at)
    graphs, reduced = [], []
    for k in range(last + 1):
        outputs = {_name(v, True): v for v in sorted(reduce_at, key=_key) if stage[v.node] == k}
        later = {v for j in range(k + 1, last + 1) for v in reads[j] if v not in reduce_at and stage[v.node] == k}
        outputs.update({_name(v, False): v for v in sorted(later, key=_key)})
        outputs.update({name: v for name, v in finals.items() if produced_in[name] == k})
        nodes = {n for n, s in stage.items() if s == k}
        graphs.append(_extract(graph, nodes, reads[k], outputs, f"{graph.name}.stage{k}"))
        reduced.append(tuple(o for o in outputs if o.startswith("sum/")))
    kinds = {name: SUMMED if cls[v] == PARTIAL else SAME for name, v in finals.items()}
    return StagePlan(tuple(graphs), tuple(reduced), kinds)


def _key(v: Value) -> tuple[int, int]:
    return v.node, v.index


def _name(v: Value, reduced: bool) -> str:
    return f"{'sum' if reduced else 'keep'}/n{v.node}_{v.index}"


def _extract(graph: Graph, nodes: set[int], reads: dict[Value, str], outputs: dict[str, Value], name: str) -> Graph:
    """A graph of ``nodes`` (and the source nodes they use) whose values ``reads`` are inputs
    of the given names, with ``outputs``; every input of ``graph`` stays an input."""
    g = Graph(name)
    g.salt_counter = graph.salt_counter
    remap: dict[Value, Value] = {}

    def copy(n: int) -> None:
        rec = graph[n]
        forward = remap.get(Value(rec.grad_of)) if rec.grad_of is not None else None  # None: in another stage
        new = g.add_node(rec.op, [remap[v] for v in rec.inputs], rec.attrs, rec.types, loc=rec.loc,
                         scope=rec.scope, role=rec.role, grad_of=forward.node if forward else None)
        remap.update({Value(n, i): Value(new, i) for i in range(len(rec.types))})
        if rec.op == "input":
            g.add_input(new)
        elif rec.op == "param":
            g.add_param(rec.attrs["name"], new)
        elif rec.op == "state":
            g.set_state(rec.attrs["name"], new)

    for n in graph.inputs:
        copy(n)
    for v, input_name in reads.items():
        node = g.add_node("input", (), {"name": input_name}, (graph.type_of(v),), role=graph[v.node].role)
        g.add_input(node)
        remap[v] = Value(node)
    wanted = set(nodes) | {v.node for v in outputs.values()}
    sources = {u.node for n in wanted for u in graph.in_values(n) if graph.op(u.node) in SOURCE_OPS}
    for n in graph.topo_order():
        if (n in wanted or n in sources) and Value(n) not in remap:
            copy(n)
    for dim, (input_name, axis) in graph.dims.items():
        g.add_dim(dim, input_name, axis)
    g.set_outputs({k: remap[v] for k, v in outputs.items()})
    return g

"""Elementwise fusion for the NumPy backend: chains of elementwise ops become one ``fused`` node.

Groups grow backwards from a root (the last op of a chain, in a topological
order): a producer joins its consumer's group when it is elementwise and
every node that reads it is in the group already or comes after the root in
that order — then no path leaves the group and comes back (a node after the
root cannot lead to a member), so the group can run as one step.  A member
read after the group (``tanh``'s output, read again by its gradient),
or that is a named output or a next state (the Adam moments ``m``, ``v``),
becomes an extra output of the fused node.  So the Adam update of one
parameter (17 ops: moments, bias corrections, square root, step) is one node
with three outputs, ``bias + relu`` is one node, and so is an LSTM cell's
gate arithmetic.  A ``concat`` may be a root (never a member): the chains it
joins run in its kernel call (an LSTM's backward step: the four gate
cotangents and their concat, one call instead of five).  Values read by several groups (the learning rate, a shared
bias correction) stay the output of their own group.  Between the groups of
one round every edge runs from a lower root position to a higher one, so the
fused graph is acyclic too.

The fused kernel writes into buffers it allocated itself whenever a value of
the same type is dead (planned here from the static types, checked by the
op's shape rule), and into the buffers of its donated inputs: fresh arrays of
a product, ``fused`` or ``softmax_grad`` (:data:`FRESH_RESULTS`) that only the group
reads (a gradient that the update consumes); see compiler/ops/fused.py (whose kernel
allocates instead when its inputs are in different memory orders, so every value has
the layout, hence every reduction downstream the rounding, of ``-O0``).  A lone
elementwise node with such an input of its own type is a group too (a one-op
``fused`` node computing in place: the attention scores times their scale).  One reverse topological sweep,
each edge counted once per group reaching it, with a binary search over its
consumers' positions: O(edges · log).  ONNX exports run on unfused
graphs (the pipeline's ``backend="onnx"``), although ``fused`` lowers to its
primitive chain too.
"""
from __future__ import annotations

import bisect

from ..graph import Graph, Value
from ..ops.fused import ELEMENTWISE, INPLACE
from ..ops.registry import get_op
from .rewrite import Uses, topo_order


def fuse_elementwise(graph: Graph) -> int:
    """Fuse every chain of two or more elementwise nodes (and each lone one that can compute
    in place, see :func:`_in_place_alone`); returns how many nodes were absorbed.

    Rounds repeat (at most :data:`ROUNDS`) with the fused nodes of the last round
    fusible in turn: which group a node joins depends on the order roots are met, so
    a chain split in one round (a cell's forward gates and their gradient) can join
    in the next."""
    total = 0
    for _ in range(ROUNDS):
        absorbed = _fuse_round(graph)
        total += absorbed
        if not absorbed:
            break
    return total


ROUNDS = 3


def _fuse_round(graph: Graph) -> int:
    uses = Uses(graph)
    order = topo_order(graph)
    pos = {n: i for i, n in enumerate(order)}
    group_of: dict[int, int] = {}
    settled: dict[int, tuple[int, int]] = {}  # node → (group, its consumers in the group or after its root)
    groups: list[list[int]] = []
    consumer_pos: dict[int, list[int]] = {}  # node → its consumers' positions, sorted
    for root in reversed(order):
        if root in group_of or not _fusible_root(graph, root):
            continue
        gid = len(groups)
        members = [root]
        group_of[root] = gid
        todo = [root]
        while todo:
            w = todo.pop()
            for u in {v.node for v in graph[w].inputs}:
                if u in group_of or not _fusible(graph, u):
                    continue
                if u not in consumer_pos:
                    consumer_pos[u] = sorted(pos[c] for c in graph.consumers(u))
                after = consumer_pos[u]
                g, count = settled.get(u, (-1, 0))
                if g != gid:  # first seen from this group: its consumers after the root count as settled
                    count = len(after) - bisect.bisect_right(after, pos[root])
                count += 1
                settled[u] = (gid, count)
                if count == len(after):
                    group_of[u] = gid
                    members.append(u)
                    todo.append(u)
        groups.append(members)
    absorbed: list[int] = []
    made = 0
    for members in groups:
        if len(members) > 1 or _in_place_alone(graph, uses, members[0]):
            _fuse(graph, uses, sorted(members, key=pos.__getitem__))
            absorbed += members
            made += 1
    graph.remove_nodes(absorbed)  # unused now; at once, since each call rebuilds the containers
    return len(absorbed) - made


def _in_place_alone(graph: Graph, uses: Uses, n: int) -> bool:
    """A lone elementwise node that may write its result into a donated input's buffer
    (a fresh product of its own type that only it reads: the attention scores times the
    scale, [16, 4, 64, 64] in the Transformer block, 37 -> 16 µs in place).  As a one-op
    ``fused`` node it does; the ufunc and its operands are the same, so are the values."""
    rec = graph[n]
    if rec.op not in INPLACE or len(rec.types) != 1:
        return False
    out = rec.types[0]
    inputs = list(dict.fromkeys(rec.inputs))
    return any(graph.type_of(inputs[i]) == out for i in _donated(graph, uses, inputs, {n}))


def _fusible(graph: Graph, n: int) -> bool:
    """``n`` may join a group (as its root or a member)."""
    rec = graph[n]
    return rec.op == "fused" or rec.op in ELEMENTWISE and len(rec.types) == 1


def _fusible_root(graph: Graph, n: int) -> bool:
    """``n`` may end a group: an elementwise op, or a ``concat`` of the chains it joins."""
    return _fusible(graph, n) or graph[n].op == "concat"


def _fuse(graph: Graph, uses: Uses, members: list[int]) -> None:
    """Make one ``fused`` node compute ``members`` (topologically ordered, the root last)
    and rewire their uses to it (the caller removes them); a member that is a ``fused``
    node already (an earlier round's) is inlined."""
    member_set = set(members)
    number: dict[Value, int] = {}
    inputs: list[Value] = []
    for m in members:
        for v in graph[m].inputs:
            if v.node not in member_set and v not in number:
                number[v] = len(inputs)
                inputs.append(v)
    types = [graph.type_of(v) for v in inputs]
    program: list = []

    def emit(op, args, kw) -> int:
        program.append((op, args, kw))
        types.append(get_op(op).shape(*[types[a] for a in args], **dict(kw)))
        return len(types) - 1

    for m in members:
        rec = graph[m]
        args = [number[v] for v in rec.inputs]
        if rec.op == "fused":
            local = list(args)  # the inlined program's value numbers → ours
            for op, a, kw in rec.attrs["program"]:
                local.append(emit(op, tuple(local[i] for i in a), kw))
            for k, o in enumerate(rec.attrs["outputs"]):
                number[Value(m, k)] = local[o]
        else:
            number[Value(m)] = emit(rec.op, tuple(args), tuple(sorted(rec.attrs.items())))
    n_in = len(inputs)
    read_outside: dict[Value, bool] = {}
    for m in members:
        wanted = uses.external_indices(m) | ({0} if m == members[-1] and graph[m].op != "fused" else set())
        for c in graph.consumers(m):
            if c not in member_set:
                wanted |= {v.index for v in graph[c].inputs if v.node == m}
        if m == members[-1] and not wanted:
            wanted = {0}
        for k in sorted(wanted):
            read_outside[Value(m, k)] = True
    leaving = list(read_outside)
    outputs = tuple(number[v] for v in leaving)
    donated = _donated(graph, uses, inputs, member_set)
    reuse = _plan_buffers(program, types, n_in, set(outputs), set(donated))
    attrs = {"program": tuple(program), "outputs": outputs, "reuse": reuse}
    if any(0 <= r < n_in for r in reuse):
        attrs["donated"] = tuple(sorted({r for r in reuse if 0 <= r < n_in}))
    out_types = get_op("fused").shape(*types[:n_in], **attrs)
    last = graph[members[-1]]
    f = graph.add_node("fused", inputs, attrs, out_types, loc=last.loc, scope=last.scope, role=last.role,
                       grad_of=last.grad_of)
    slot = {v: Value(f, k) for k, v in enumerate(leaving)}
    for m in members:
        uses.replace(m, [slot.get(Value(m, k), Value(f, 0)) for k in range(len(graph[m].types))])


# ops whose kernels always return a fresh array (never a view of an argument), so a value
# they made that only one fused node reads is that node's to overwrite
FRESH_RESULTS = frozenset({"matmul", "matmul_t", "matmul_add", "matmul_permuted", "fused", "softmax_grad"})


def _donated(graph: Graph, uses: Uses, inputs: list[Value], members: set) -> tuple[int, ...]:
    """The inputs of the group that are fresh arrays read by the group alone: made by a
    kernel of :data:`FRESH_RESULTS` (not a source: the caller's feeds, parameters and state
    are never written), no named output or next state, every reader a member."""
    donated = []
    for i, v in enumerate(inputs):
        src = graph[v.node]
        if src.op not in FRESH_RESULTS or graph.type_of(v).rank == 0 or v.index in uses.external_indices(v.node):
            continue
        if all(c in members for c in graph.consumers(v.node) if v in graph[c].inputs):
            donated.append(i)
    return tuple(donated)


def _plan_buffers(program, types, n_in: int, outputs: set, donated: set = frozenset()) -> tuple:
    """Per step, a dead buffer of the step's type that the chain allocated or was donated (or -1)."""
    last_use: dict[int, int] = {}
    for j, (_, args, _) in enumerate(program):
        for a in args:
            last_use[a] = j
    free: dict = {}  # type → value numbers whose buffers may be overwritten
    dying: dict[int, list[int]] = {}
    for v, j in last_use.items():
        if (v >= n_in or v in donated) and v not in outputs and types[v].rank > 0:
            dying.setdefault(j, []).append(v)
    reuse = []
    for j, (op, _, _) in enumerate(program):
        for v in dying.get(j, ()):  # operands read for the last time here may take the result
            free.setdefault(types[v], []).append(v)
        v = n_in + j
        pool = free.get(types[v]) if op in INPLACE else None
        reuse.append(pool.pop() if pool else -1)
    return tuple(reuse)

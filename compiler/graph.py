"""The IR: a directed multigraph of op applications (networkx's MultiDiGraph model).

A node is one op application, a :class:`Node` record: ``op`` (registry key),
``attrs`` (dict, treated as frozen), ``types`` (one TensorType per output),
``inputs`` (the ordered input Values), ``loc``, ``scope`` (``enc.0.attn``),
``role`` (one of :data:`ROLES`) and ``grad_of`` (for backward nodes: the
forward node they differentiate).  Argument ``i`` of node ``v`` reading output
``j`` of node ``u`` is an edge ``u → v`` with ``src_out = j``, ``dst_in = i``;
``x * x`` has two.

The edges are stored here, not in a ``networkx.MultiDiGraph``: each node's
ordered ``inputs`` are the edges into it, and a reverse index counts each
node's users.  The compiler needs only adjacency, a deterministic topological
order and reachability, and importing networkx costs a fresh process ~80 ms (a
third of ``dlc check``).  :meth:`Graph.to_networkx` builds the MultiDiGraph on
demand (compiler/graph_nx.py, the compiler's only networkx importer), and
:meth:`Graph.verify` checks the graph's own order and acyclicity against it.

The graph owns every mutation: only its methods add or remove nodes, rewire
arguments, and write the ordered inputs, the named outputs, the parameters
and the state pairs (state input node → value of its next state).  The
containers are exposed read-only (a tuple and mapping proxies), so a pass
cannot put the graph into an inconsistent state by accident, and
:meth:`Graph.verify` checks what the methods maintain.

Inputs, parameters, state and constants are nodes too (ops ``input``,
``param``, ``state``, ``const``).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from .types import TensorType

ROLES = ("forward", "backward", "optimizer", "state")  # what a node is for (pictures group by it)
SOURCE_OPS = ("input", "param", "state", "const")  # nodes with no inputs whose value comes from outside
RNG_INPUT = "__rng"  # name of the i64 scalar random-key input


@dataclass(frozen=True, slots=True)
class Value:
    """Output ``index`` of ``node``.  Deliberately not a tuple, so a Value is
    never mistaken for a tuple of Values (multi-output ops return those)."""

    node: int
    index: int = 0


@dataclass(slots=True, eq=False)
class Node:
    """One op application.  Records are owned by their graph: change
    ``inputs`` through :meth:`Graph.set_input` (which keeps the users index
    in step); ``attrs`` is treated as frozen once the node exists."""

    id: int
    op: str
    attrs: dict
    types: tuple
    inputs: tuple
    loc: Any = None
    scope: str = ""
    role: str = "forward"
    grad_of: int | None = None

    @property
    def name(self) -> str | None:
        """The declared name of a source node (input, param, state), else None."""
        return self.attrs.get("name") if self.op in ("input", "param", "state") else None


class GraphError(AssertionError):
    """A broken IR invariant (a compiler bug, never a user error)."""


class Graph:
    def __init__(self, name: str = ""):
        self.name = name
        self._nodes: dict[int, Node] = {}
        self._users: dict[int, dict[int, int]] = {}  # node → {consumer: number of its arguments that read it}
        self._inputs: list[int] = []
        self._outputs: dict[str, Value] = {}
        self._params: dict[str, int] = {}
        self._state: dict[str, tuple[int, Value | None]] = {}
        self._dims: dict[str, tuple[str, int]] = {}  # symbolic dim → (input name, axis) where it appears
        self._next_id = 0
        self.salt_counter = 0

    # -- the containers (read-only views) ------------------------------------
    @property
    def inputs(self) -> tuple[int, ...]:
        """Input nodes in feed order."""
        return tuple(self._inputs)

    @property
    def outputs(self) -> Mapping[str, Value]:
        return MappingProxyType(self._outputs)

    @property
    def params(self) -> Mapping[str, int]:
        return MappingProxyType(self._params)

    @property
    def state(self) -> Mapping[str, tuple[int, Value | None]]:
        """State name → (its input node, the Value of its next state or None)."""
        return MappingProxyType(self._state)

    @property
    def dims(self) -> Mapping[str, tuple[str, int]]:
        return MappingProxyType(self._dims)

    # -- construction ----------------------------------------------------
    def add_node(self, op: str, inputs: Iterable[Value], attrs: dict, types, *, loc=None,
                 scope: str = "", role: str = "forward", grad_of: int | None = None) -> int:
        n = self._next_id
        self._next_id += 1
        inputs = tuple(inputs)
        self._nodes[n] = Node(n, op, attrs, tuple(types), inputs, loc, scope, role, grad_of)
        self._users[n] = {}
        for v in inputs:
            self._add_use(v.node, n)
        return n

    def _add_use(self, producer: int, consumer: int) -> None:
        users = self._users.get(producer)
        if users is None:  # a dangling argument: verify() reports it
            return
        users[consumer] = users.get(consumer, 0) + 1

    def _drop_use(self, producer: int, consumer: int) -> None:
        users = self._users.get(producer)
        if users is None:
            return
        left = users.get(consumer, 0) - 1
        if left > 0:
            users[consumer] = left
        else:
            users.pop(consumer, None)

    def set_input(self, node: int, index: int, value: Value) -> None:
        """Rewire argument ``index`` of ``node`` to ``value``."""
        rec = self._nodes[node]
        if not 0 <= index < len(rec.inputs):
            raise IndexError(f"%{node} ({rec.op}) has {len(rec.inputs)} arguments, not an argument {index}")
        self._drop_use(rec.inputs[index].node, node)
        rec.inputs = rec.inputs[:index] + (value,) + rec.inputs[index + 1:]
        self._add_use(value.node, node)

    def extend_outputs(self, node: int, attrs: dict, types) -> None:
        """Give ``node`` new ``attrs`` and more outputs: ``types`` starts with
        the node's current output types, so every Value that refers to the
        node stays valid (a scan asked to also emit the residuals its gradient
        reads).  ``attrs`` replaces the dict (records may share theirs with a
        copy of the graph)."""
        rec = self._nodes[node]
        types = tuple(types)
        if types[:len(rec.types)] != rec.types:
            raise GraphError(f"%{node} ({rec.op}): extending outputs must keep the existing ones")
        rec.attrs, rec.types = dict(attrs), types

    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every argument, output and next-state that reads ``old`` read ``new``."""
        for user in self.consumers(old.node):
            for i, v in enumerate(self._nodes[user].inputs):
                if v == old:
                    self.set_input(user, i, new)
        self._outputs = {k: new if v == old else v for k, v in self._outputs.items()}
        self._state = {k: (n, new if v == old else v) for k, (n, v) in self._state.items()}

    def remove_nodes(self, nodes: Iterable[int]) -> None:
        """Remove nodes and everything that refers to them in the containers."""
        gone = set(nodes)
        for n in gone:
            rec = self._nodes.pop(n, None)
            if rec is None:
                continue
            for v in rec.inputs:
                self._drop_use(v.node, n)
            self._users.pop(n, None)
        self._inputs = [n for n in self._inputs if n not in gone]
        self._params = {k: n for k, n in self._params.items() if n not in gone}
        self._state = {k: s for k, s in self._state.items() if s[0] not in gone}

    def add_input(self, node: int) -> None:
        """Append an ``input`` node to the feed order."""
        self._inputs.append(node)

    def set_inputs(self, nodes: Iterable[int]) -> None:
        """Replace the feed order (the nodes must be ``input`` nodes of this graph)."""
        self._inputs = list(nodes)

    def set_output(self, name: str, value: Value) -> None:
        self._outputs[name] = value

    def set_outputs(self, outputs: Mapping[str, Value]) -> None:
        """Replace every named output (order kept as given)."""
        self._outputs = dict(outputs)

    def remove_output(self, name: str) -> Value:
        return self._outputs.pop(name)

    def add_param(self, name: str, node: int) -> None:
        self._params[name] = node

    def set_state(self, name: str, node: int, next_value: Value | None = None) -> None:
        """Declare state ``name`` read by ``node``; ``next_value`` is what the step carries on."""
        self._state[name] = (node, next_value)

    def add_dim(self, dim: str, input_name: str, axis: int) -> None:
        """Record where symbolic ``dim`` first appears (first declaration wins)."""
        self._dims.setdefault(dim, (input_name, axis))

    # -- queries -----------------------------------------------------------
    def __getitem__(self, n: int) -> Node:
        return self._nodes[n]

    def __contains__(self, n: int) -> bool:
        return n in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> Iterator[int]:
        """Node ids in insertion order."""
        return iter(self._nodes)

    def op(self, n: int) -> str:
        return self._nodes[n].op

    def type_of(self, v: Value) -> TensorType:
        return self._nodes[v.node].types[v.index]

    def in_values(self, n: int) -> tuple[Value, ...]:
        return self._nodes[n].inputs

    def out_values(self, n: int) -> list[Value]:
        return [Value(n, i) for i in range(len(self._nodes[n].types))]

    def consumers(self, n: int) -> list[int]:
        """The nodes that read an output of ``n``, ascending."""
        return sorted(self._users[n])

    def topo_order(self) -> list[int]:
        """Deterministic topological order: among ready nodes the smallest id
        (insertion order) goes first — networkx's lexicographical topological
        sort, which :meth:`verify` checks it against.  Raises GraphError on a cycle."""
        waiting = {n: len({v.node for v in rec.inputs if v.node in self._nodes})
                   for n, rec in self._nodes.items()}
        ready = [n for n, k in waiting.items() if k == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            n = heapq.heappop(ready)
            order.append(n)
            for m in self._users[n]:
                waiting[m] -= 1
                if waiting[m] == 0:
                    heapq.heappush(ready, m)
        if len(order) != len(self._nodes):
            raise GraphError(f"graph {self.name!r} has a cycle")
        return order

    def input_names(self) -> list[str]:
        return [self._nodes[n].attrs["name"] for n in self._inputs]

    def input_node(self, name: str) -> int:
        for n in self._inputs:
            if self._nodes[n].attrs["name"] == name:
                return n
        raise KeyError(name)

    def ancestors(self, nodes: Iterable[int]) -> set[int]:
        """``nodes`` and everything they depend on (one walk for all of them: linear in the graph)."""
        return self.reach(nodes, lambda n: [v.node for v in self._nodes[n].inputs if v.node in self._nodes])

    def descendants(self, nodes: Iterable[int]) -> set[int]:
        """``nodes`` and everything that depends on them (one walk for all of them)."""
        return self.reach(nodes, lambda n: self._users.get(n, ()))

    @staticmethod
    def reach(nodes: Iterable[int], neighbours) -> set[int]:
        """``nodes`` and every node reachable from them through ``neighbours(node)``."""
        out = set(nodes)
        todo = list(out)
        while todo:
            for m in neighbours(todo.pop()):
                if m not in out:
                    out.add(m)
                    todo.append(m)
        return out

    def prune(self, keep: Iterable[int]) -> None:
        """Remove every node that is not an ancestor of ``keep`` (inputs stay)."""
        live = self.ancestors(keep) | set(self._inputs)
        self.remove_nodes([n for n in self._nodes if n not in live])

    def copy(self) -> "Graph":
        g = Graph(self.name)
        g._nodes = {n: replace(rec) for n, rec in self._nodes.items()}
        g._users = {n: dict(users) for n, users in self._users.items()}
        g._inputs = list(self._inputs)
        g._outputs = dict(self._outputs)
        g._params = dict(self._params)
        g._state = dict(self._state)
        g._dims = dict(self._dims)
        g._next_id = self._next_id
        g.salt_counter = self.salt_counter
        return g

    def to_networkx(self):
        """A ``networkx.MultiDiGraph`` snapshot of this graph (see compiler/graph_nx.py)."""
        from .graph_nx import to_networkx

        return to_networkx(self)

    # -- invariants --------------------------------------------------------
    def _verify_edges(self) -> None:
        """The users index mirrors the arguments; networkx agrees on order and acyclicity."""
        from .graph_nx import agrees_with_networkx

        want: dict[int, dict[int, int]] = {n: {} for n in self._nodes}
        for n, rec in self._nodes.items():
            for v in rec.inputs:
                want[v.node][n] = want[v.node].get(n, 0) + 1
        if want != self._users:
            bad = sorted(n for n in set(want) | set(self._users) if want.get(n) != self._users.get(n))
            raise GraphError(f"the users of %{bad[0]} are {self._users.get(bad[0])}, "
                             f"but its consumers' arguments say {want.get(bad[0])}")
        problem = agrees_with_networkx(self)
        if problem:
            raise GraphError(problem)

    def verify(self) -> None:
        """Check the invariants every pass must keep; raises :class:`GraphError`.

        - every argument refers to an existing output, and the reverse index of
          users mirrors the arguments exactly;
        - the graph is acyclic, and :meth:`topo_order` is networkx's
          lexicographical topological sort of :meth:`to_networkx`;
        - every node's ``types`` has one entry per output its op declares, and
          re-running the op's shape rule on the input types gives them;
        - inputs are ``input`` nodes, params ``param`` nodes, state ``state``
          nodes; every output and next-state Value refers to an existing output;
        - graphs held in attrs (scan bodies) verify too.
        """
        from .ops.registry import get_op  # the registry imports types only; no cycle at call time

        for n, rec in self._nodes.items():
            if rec.id != n:
                raise GraphError(f"node {n} records id {rec.id}")
            for i, v in enumerate(rec.inputs):
                if v.node not in self._nodes:
                    raise GraphError(f"%{n} ({rec.op}) argument {i} refers to missing node {v.node}")
                if v.index >= len(self._nodes[v.node].types):
                    raise GraphError(f"%{n} ({rec.op}) argument {i} reads output {v.index} of "
                                     f"%{v.node}, which has {len(self._nodes[v.node].types)}")
            if rec.role not in ROLES:
                raise GraphError(f"%{n} ({rec.op}) has the role {rec.role!r}, not one of {ROLES}")
            if rec.op in SOURCE_OPS:
                if rec.inputs:
                    raise GraphError(f"source node %{n} ({rec.op}) has inputs")
                continue
            opdef = get_op(rec.op)
            if opdef.outputs is not None and len(rec.types) != len(opdef.outputs):
                raise GraphError(f"%{n} ({rec.op}) has {len(rec.types)} types for "
                                 f"{len(opdef.outputs)} outputs")
            for sub in rec.attrs.values():
                if isinstance(sub, Graph):  # a scan body: the same invariants, recursively
                    sub.verify()
            got = opdef.shape(*[self.type_of(v) for v in rec.inputs], **rec.attrs)
            got = got if isinstance(got, tuple) else (got,)
            if tuple(got) != tuple(rec.types):
                raise GraphError(f"%{n} ({rec.op}) is typed {list(map(str, rec.types))} but its shape "
                                 f"rule gives {list(map(str, got))}")
        self._verify_edges()
        for kind, nodes in (("input", self._inputs), ("param", self._params.values()),
                            ("state", [s[0] for s in self._state.values()])):
            for n in nodes:
                if n not in self._nodes or self._nodes[n].op != kind:
                    raise GraphError(f"{kind} container lists %{n}, which is not a live {kind} node")
        if len(set(self._inputs)) != len(self._inputs):
            raise GraphError("an input is listed twice")
        refs = list(self._outputs.items()) + [(f"next state {k}", s[1]) for k, s in self._state.items()
                                               if s[1] is not None]
        for name, v in refs:
            if v.node not in self._nodes or v.index >= len(self._nodes[v.node].types):
                raise GraphError(f"output {name!r} refers to a missing value {v}")

"""The IR: a networkx MultiDiGraph of op applications.

A node is one op application with data ``op`` (registry key), ``attrs``
(dict, treated as frozen), ``types`` (one TensorType per output), ``inputs``
(the ordered input Values), ``loc``, ``scope`` (``enc.0.attn``), ``role``
(forward / loss / backward / optimizer / state) and ``grad_of`` (for backward
nodes: the forward node they differentiate).  An edge ``u → v`` carries
``src_out`` and ``dst_in``; ``inputs`` mirrors the edges in argument order so
the hot paths need not sort edges.  Only :meth:`Graph.add_node` and
:meth:`Graph.set_input` write either, which keeps the two in step.

Inputs, parameters, state and constants are nodes too (ops ``input``,
``param``, ``state``, ``const``).  The graph records ordered inputs, outputs,
parameters and state pairs (state input node → value of its next state).
This is the only module that imports networkx.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import networkx as nx

from .types import TensorType

ROLES = ("forward", "loss", "backward", "optimizer", "state")
SOURCE_OPS = ("input", "param", "state", "const")  # nodes with no inputs whose value comes from outside
RNG_INPUT = "__rng"  # name of the i64 scalar random-key input


@dataclass(frozen=True, slots=True)
class Value:
    """Output ``index`` of ``node``.  Deliberately not a tuple, so a Value is
    never mistaken for a tuple of Values (multi-output ops return those)."""

    node: int
    index: int = 0


class Graph:
    def __init__(self, name: str = ""):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.inputs: list[int] = []
        self.outputs: dict[str, Value] = {}
        self.params: dict[str, int] = {}
        self.state: dict[str, tuple[int, Value | None]] = {}
        self.dims: dict[str, tuple[str, int]] = {}  # symbolic dim → (input name, axis) where it appears
        self._next_id = 0
        self.salt_counter = 0

    # -- construction ----------------------------------------------------
    def add_node(self, op: str, inputs: Iterable[Value], attrs: dict, types, *, loc=None,
                 scope: str = "", role: str = "forward", grad_of: int | None = None) -> int:
        n = self._next_id
        self._next_id += 1
        inputs = tuple(inputs)
        self.nx.add_node(n, op=op, attrs=attrs, types=tuple(types), inputs=inputs, loc=loc,
                         scope=scope, role=role, grad_of=grad_of)
        for i, v in enumerate(inputs):
            self.nx.add_edge(v.node, n, src_out=v.index, dst_in=i)
        return n

    def set_input(self, node: int, index: int, value: Value) -> None:
        """Rewire argument ``index`` of ``node`` to ``value``."""
        data = self.nx.nodes[node]
        old = data["inputs"][index]
        for key, d in list(self.nx.get_edge_data(old.node, node, default={}).items()):
            if d["dst_in"] == index:
                self.nx.remove_edge(old.node, node, key)
        data["inputs"] = data["inputs"][:index] + (value,) + data["inputs"][index + 1:]
        self.nx.add_edge(value.node, node, src_out=value.index, dst_in=index)

    def remove_nodes(self, nodes: Iterable[int]) -> None:
        self.nx.remove_nodes_from(list(nodes))

    # -- queries -----------------------------------------------------------
    def __getitem__(self, n: int) -> dict:
        return self.nx.nodes[n]

    def __contains__(self, n: int) -> bool:
        return n in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def op(self, n: int) -> str:
        return self.nx.nodes[n]["op"]

    def type_of(self, v: Value) -> TensorType:
        return self.nx.nodes[v.node]["types"][v.index]

    def in_values(self, n: int) -> tuple[Value, ...]:
        return self.nx.nodes[n]["inputs"]

    def out_values(self, n: int) -> list[Value]:
        return [Value(n, i) for i in range(len(self.nx.nodes[n]["types"]))]

    def consumers(self, n: int) -> list[int]:
        return sorted(set(self.nx.successors(n)))

    def topo_order(self) -> list[int]:
        """Deterministic topological order: insertion order breaks ties."""
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: n))

    def input_names(self) -> list[str]:
        return [self[n]["attrs"]["name"] for n in self.inputs]

    def input_node(self, name: str) -> int:
        for n in self.inputs:
            if self[n]["attrs"]["name"] == name:
                return n
        raise KeyError(name)

    def ancestors(self, nodes: Iterable[int]) -> set[int]:
        out: set[int] = set()
        for n in nodes:
            if n not in out:
                out |= nx.ancestors(self.nx, n)
                out.add(n)
        return out

    def descendants(self, nodes: Iterable[int]) -> set[int]:
        out: set[int] = set()
        for n in nodes:
            if n not in out:
                out |= nx.descendants(self.nx, n)
                out.add(n)
        return out

    def prune(self, keep: Iterable[int]) -> None:
        """Remove every node that is not an ancestor of ``keep`` (inputs stay)."""
        live = self.ancestors(keep) | set(self.inputs)
        self.remove_nodes(n for n in list(self.nx) if n not in live)
        self.params = {k: n for k, n in self.params.items() if n in live}

    def copy(self) -> "Graph":
        g = Graph(self.name)
        g.nx = self.nx.copy()
        g.inputs = list(self.inputs)
        g.outputs = dict(self.outputs)
        g.params = dict(self.params)
        g.state = dict(self.state)
        g.dims = dict(self.dims)
        g._next_id = self._next_id
        g.salt_counter = self.salt_counter
        return g

"""Shared machinery of the optimizing passes: rewiring every use of a value.

A value is used by node arguments (the graph's edges), by named outputs and
by next-state references.  :class:`Uses` indexes the latter two by node once
per pass, so replacing a node's outputs costs O(its consumers), never a walk
over the whole graph; every pass that replaces nodes goes through it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from ..dims import Sym
from ..graph import Graph, Value
from ..ops.registry import get_op
from ..types import FLOATS, ShapeError


class Uses:
    """The outputs and next-state entries that refer to each node of ``graph``."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._outputs: dict[int, list[str]] = defaultdict(list)
        self._states: dict[int, list[str]] = defaultdict(list)
        for name, v in graph.outputs.items():
            self._outputs[v.node].append(name)
        for name, (_, v) in graph.state.items():
            if v is not None:
                self._states[v.node].append(name)

    def external_indices(self, n: int) -> set[int]:
        """The output indices of ``n`` that named outputs or next states refer to."""
        g = self.graph
        return ({g.outputs[k].index for k in self._outputs.get(n, ())}
                | {g.state[k][1].index for k in self._states.get(n, ())})

    def read_only_by(self, v: Value, reader: int) -> bool:
        """``v``'s node is read by node ``reader`` alone, which reads ``v`` once, and no named
        output or next state refers to it: folding it into ``reader`` computes nothing twice."""
        g = self.graph
        return (g.consumers(v.node) == [reader] and sum(u == v for u in g[reader].inputs) == 1
                and not self.external_indices(v.node))

    def replace(self, old: int, new: Sequence[Value]) -> None:
        """Make every use of ``Value(old, i)`` a use of ``new[i]`` (``old`` is left unused)."""
        g = self.graph
        for c in g.consumers(old):
            for i, v in enumerate(g[c].inputs):
                if v.node == old:
                    g.set_input(c, i, new[v.index])
        for name in self._outputs.pop(old, ()):
            v = new[g.outputs[name].index]
            g.set_output(name, v)
            self._outputs[v.node].append(name)
        for name in self._states.pop(old, ()):
            node, nxt = g.state[name]
            v = new[nxt.index]
            g.set_state(name, node, v)
            self._states[v.node].append(name)


def hashable(value: Any):
    """A hashable, equality-preserving key for an attr value (None when there is none).

    Floats key by their value's bits (``-0.0`` and ``0.0`` differ: ``1 / x`` tells them
    apart), arrays by dtype, shape and bytes; graphs (scan bodies) by identity,
    since two bodies are only known equal when they are one object."""
    if isinstance(value, (bool, int, str, Sym)) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, float):  # by its bits: -0.0 == 0.0, but pad(value = -0.0) is not pad(value = 0.0)
        return None if value != value else ("float", value.hex())  # NaN never equals itself
    if isinstance(value, (tuple, list)):
        parts = tuple(hashable(v) for v in value)
        return None if any(p is None for p in parts) else ("seq", parts)
    if isinstance(value, dict):
        parts = tuple((k, hashable(v)) for k, v in sorted(value.items()))
        return None if any(p[1] is None for p in parts) else ("dict", parts)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.tobytes())
    if isinstance(value, Graph):
        return ("graph", id(value))
    return None


def const_value(graph: Graph, v: Value) -> np.ndarray | None:
    """The array of ``v`` when it is a ``const`` node's value, else None."""
    rec = graph[v.node]
    return rec.attrs["value"] if rec.op == "const" else None


def topo_order(graph: Graph) -> list[int]:
    """A deterministic topological order (each node after its inputs, otherwise insertion
    order), by one iterative depth-first walk over the argument lists: O(nodes + edges)
    and several times faster than the networkx sort, which the passes would pay for
    once each."""
    order: list[int] = []
    done: set[int] = set()
    for start in graph.nodes():
        if start in done:
            continue
        stack = [(start, iter(graph[start].inputs))]
        while stack:
            n, args = stack[-1]
            for v in args:
                if v.node not in done:
                    stack.append((v.node, iter(graph[v.node].inputs)))
                    break
            else:
                stack.pop()
                if n not in done:
                    done.add(n)
                    order.append(n)
    return order


def fold_adds(graph: Graph, fused_op: Callable[[str], str | None], skip: Callable[[int], bool] = lambda n: False) -> int:
    """Rewrite ``add(c, f(*args))`` as ``fused(*args, c)`` with ``f``'s attrs, where
    ``fused_op(f)`` names the fused op (None: not foldable), ``f``'s output is read by that
    add alone (once, under no output name), and the fused op's shape rule gives the add's
    own float type (so ``c`` never enlarges the result); ``skip(add node)`` leaves an add
    alone.  The shared mechanism of ``fold_matmul_add`` and ``fold_conv_add``; returns how
    many adds were folded.  One sweep: O(nodes)."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in list(graph.nodes()):
        rec = graph[n]
        if rec.op != "add" or skip(n):
            continue
        for i in (0, 1):
            v, c = rec.inputs[i], rec.inputs[1 - i]
            src = graph[v.node]
            name = fused_op(src.op)
            if name is None or c == v or not uses.read_only_by(v, n):
                continue
            try:
                t = get_op(name).shape(*(graph.type_of(u) for u in (*src.inputs, c)), **src.attrs)
            except ShapeError:
                continue
            if t != rec.types[0] or t.dtype not in FLOATS:
                continue
            m = graph.add_node(name, [*src.inputs, c], src.attrs, (t,), loc=rec.loc, scope=rec.scope,
                               role=rec.role, grad_of=rec.grad_of)
            uses.replace(n, [Value(m)])
            folded.append(n)
            break
    graph.remove_nodes(folded)
    return len(folded)

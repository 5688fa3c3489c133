"""The IR as a ``networkx.MultiDiGraph``, on demand, and networkx as the IR's referee.

:class:`~dlc.compiler.graph.Graph` stores its edges itself (see its module);
this module is the one place in the compiler that imports networkx — only
when a graph is converted or verified, never on the way to running one
(networkx costs a fresh process ~80 ms of imports).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx

    from .graph import Graph


def to_networkx(graph: "Graph") -> "networkx.MultiDiGraph":
    """A snapshot of ``graph``: one node per op application (its Node record
    under ``"node"``), one edge per argument with ``src_out`` and ``dst_in`` (the
    two edges of ``x * x`` stay two).  Edits to it do not reach the graph."""
    import networkx as nx

    g = nx.MultiDiGraph(name=graph.name)
    for n in graph.nodes():
        g.add_node(n, node=graph[n])
    for n in graph.nodes():
        for i, v in enumerate(graph.in_values(n)):
            if v.node in graph:
                g.add_edge(v.node, n, src_out=v.index, dst_in=i)
    return g


def agrees_with_networkx(graph: "Graph") -> str | None:
    """None when ``graph`` is acyclic and its :meth:`~Graph.topo_order` is
    networkx's lexicographical topological sort of the same edges; else what is wrong."""
    import networkx as nx

    reference = to_networkx(graph)
    if not nx.is_directed_acyclic_graph(reference):
        return f"graph {graph.name!r} has a cycle"
    if graph.topo_order() != list(nx.lexicographical_topological_sort(reference, key=lambda n: n)):
        return f"graph {graph.name!r}: topo_order() disagrees with networkx's"
    return None

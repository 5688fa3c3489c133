"""Dead-code elimination: remove every node no output, next state or container needs."""
from __future__ import annotations

from ..graph import Graph


def dce(graph: Graph) -> int:
    """Remove the nodes that no named output or next state depends on; returns how many.

    The declared sources stay — inputs, parameters and state — so the graph's
    calling convention (what it is fed, what a checkpoint holds) does not
    change when a value stops being read.  One reverse walk: O(nodes + edges)."""
    roots = [v.node for v in graph.outputs.values()]
    roots += [v.node for _, v in graph.state.values() if v is not None]
    roots += list(graph.inputs) + list(graph.params.values()) + [n for n, _ in graph.state.values()]
    live: set[int] = set()
    todo = [n for n in roots if n in graph]
    while todo:
        n = todo.pop()
        if n in live:
            continue
        live.add(n)
        todo.extend(v.node for v in graph[n].inputs if v.node not in live)
    dead = [n for n in graph.nodes() if n not in live]
    graph.remove_nodes(dead)
    return len(dead)

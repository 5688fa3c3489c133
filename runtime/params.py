"""Initial values of a graph's parameters and state, drawn from their initialisers.

Every tensor gets its own generator seeded by (seed, crc32 of its name), so
adding a parameter never changes the others and the same seed always gives
the same numbers.  Optimizer slots are not here: they belong to the training
step (``compiler/training/step.py``'s ``initial_state``).
"""
from __future__ import annotations

import zlib

import numpy as np

from dlc.compiler.graph import Graph
from dlc.compiler.ops.init import initialize
from dlc.grammar.errors import DlcError


def init_params(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Every parameter of ``graph`` from its initialiser."""
    return _initialise(graph, graph.params, seed)


def init_state(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """The spec's ``state`` tensors (running statistics) from their initialisers."""
    return _initialise(graph, {k: n for k, (n, _) in graph.state.items()}, seed)


def _initialise(graph: Graph, nodes, seed: int) -> dict[str, np.ndarray]:
    out = {}
    for name, n in nodes.items():
        init_name, kwargs = graph[n].attrs["init"]
        t = graph[n].types[0]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        try:
            out[name] = initialize(init_name, kwargs, tuple(t.shape), t.dtype, rng)
        except ValueError as e:
            raise DlcError("E0110", f"cannot initialise `{name}`: {e}", graph[n].loc) from None
    return out

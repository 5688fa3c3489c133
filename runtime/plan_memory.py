"""The planned peak memory of a plan's schedule, from the declared types alone.

A plan checks it against the memory budget (compiler/budget.py) before it runs
anything, so an oversized batch is E0003 instead of an allocation failure
half-way through a step.
"""
from __future__ import annotations

import numpy as np

from dlc.compiler import budget
from dlc.compiler.dims import Sym, evaluate_shape
from dlc.compiler.graph import Graph
from dlc.compiler.types import FLOATS, np_dtype


def planned_peak(graph: Graph, sources, steps, env: dict, compute_dtype=None) -> tuple[int, int | None]:
    """(bytes, node) of the largest live set of the schedule: the sources (feeds,
    params, state, constants: ``(kind, key, slot, node)``) held throughout, every
    step's outputs from that step to their last use (``step.frees``).  A dim that
    ``env`` leaves symbolic counts 0: the run itself will tell."""
    def nbytes(t) -> int:
        shape = evaluate_shape(t.shape, env)
        if any(isinstance(d, Sym) for d in shape):
            return 0
        dt = np.dtype(compute_dtype) if compute_dtype is not None and t.dtype in FLOATS else np_dtype(t.dtype)
        return budget.nbytes_of(shape, dt)

    size = {}
    live = 0
    for _kind, _key, slot, n in sources:
        size[slot] = nbytes(graph[n].types[0])
        live += size[slot]
    peak, where = live, None
    for st in steps:
        for i, s in enumerate(st.outs):
            size[s] = nbytes(graph[st.node].types[i])
            live += size[s]
        if live > peak:
            peak, where = live, st.node
        for s in st.frees:
            live -= size.get(s, 0)
    return peak, where

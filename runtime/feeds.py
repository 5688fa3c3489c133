"""Feeds for a graph's inputs: the index bounds of integer inputs and random feeds of the
declared types (``dlc run`` without data, gradient checks, tests)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dlc.compiler import budget
from dlc.compiler.dims import concrete_shape, size_of
from dlc.compiler.graph import Graph
from dlc.compiler.ops.registry import get_op
from dlc.compiler.types import FLOATS, np_dtype
from dlc.grammar.errors import DlcError

MAX_ELEMENTS = 2**31  # per tensor; checked before allocating feeds of symbolic shape


def index_bounds(graph: Graph) -> dict[str, int]:
    """For integer inputs used as indices, the exclusive upper bound their values
    may take (each op says, ``Op.index_bound``: the rows of a ``gather`` table, a
    ``one_hot`` depth, the classes of ``softmax_xent`` labels; the smallest when
    used several ways), followed through ops that only move values
    (``Op.moves_values``: reshape, slice, cast, ...)."""
    bounds: dict[str, int] = {}
    for n in graph.inputs:
        name = graph[n].attrs["name"]
        seen, todo = {n}, [n]
        while todo:
            src = todo.pop()
            for user in graph.consumers(src):
                data = graph[user]
                op = get_op(data.op)
                if op.moves_values:
                    if user not in seen:
                        seen.add(user)
                        todo.append(user)
                    continue
                types = [graph.type_of(v) for v in data.inputs]
                for slot in [i for i, v in enumerate(data.inputs) if v.node == src]:
                    bound = op.index_bound(types, slot, **data.attrs)
                    if isinstance(bound, int) and bound > 0:
                        bounds[name] = min(bound, bounds.get(name, bound))
    return bounds


def random_feeds(graph: Graph, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the declared types: floats ~ N(0, 1); integers that index
    something (see :func:`index_bounds`) anywhere in their valid range, others in [0, 2).

    Symbolic dims come from ``dims``; sizes are checked with Python ints
    before anything is allocated."""
    rng = np.random.default_rng(seed)
    bounds = index_bounds(graph)
    feeds, total = {}, 0
    for n in graph.inputs:
        name = graph[n].attrs["name"]
        t = graph[n].types[0]
        if name.startswith("__"):
            continue
        try:
            shape = concrete_shape(t.shape, dims)
        except KeyError as e:
            raise DlcError("E0105", f"input `{name}` has the symbolic dim {e.args[0]} with no value",
                           graph[n].loc, hint=f"bind it, e.g. --bind {e.args[0]}=4") from None
        if size_of(shape) > MAX_ELEMENTS:
            raise DlcError("E0003", f"input `{name}` would have {size_of(shape)} elements "
                           f"(limit {MAX_ELEMENTS})", graph[n].loc)
        total += budget.nbytes_of(shape, t.dtype)
        budget.check(f"random input `{name}` ({t.dtype}{list(shape)})", total + budget.nbytes_of(shape, "f64"),
                     graph[n].loc)
        if t.dtype in FLOATS:
            feeds[name] = rng.standard_normal(shape).astype(np_dtype(t.dtype))
        elif t.dtype == "bool":
            feeds[name] = rng.random(shape) < 0.5
        else:
            feeds[name] = rng.integers(0, bounds.get(name, 2), size=shape).astype(np_dtype(t.dtype))
    return feeds

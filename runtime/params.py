"""Initial values of a graph's parameters and state, drawn from their initialisers.

Every tensor gets its own generator seeded by (seed, crc32 of its name), so
adding a parameter never changes the others and the same seed always gives
the same numbers.  Optimizer slots are not here: they belong to the training
step (``compiler/training/step.py``'s ``initial_state``).
"""
from __future__ import annotations

import numbers
import zlib

import numpy as np

from dlc.compiler import budget
from dlc.compiler.graph import Graph
from dlc.compiler.ops.init import initialize, scratch_bytes
from dlc.grammar.errors import DlcError


def nonnegative_int(value, what: str = "seed") -> int:
    """``value`` as an int, or E0110 naming ``what``: a seed (every generator takes an integer
    >= 0; NumPy refuses others with a bare ValueError, deep in the first draw) or a count."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise DlcError("E0110", f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def init_params(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Every parameter of ``graph`` from its initialiser."""
    return _initialise(graph, graph.params, seed)


def init_state(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """The spec's ``state`` tensors (running statistics) from their initialisers."""
    return _initialise(graph, {k: n for k, (n, _) in graph.state.items()}, seed)


def _initialise(graph: Graph, nodes, seed: int) -> dict[str, np.ndarray]:
    """Each array drawn after the memory budget allowed it (in its own dtype, with the
    initialiser's scratch space, on top of everything drawn before)."""
    out, total = {}, 0
    for name, n in nodes.items():
        init_name, kwargs = graph[n].attrs["init"]
        t = graph[n].types[0]
        size = budget.nbytes_of(t.shape, t.dtype)
        scratch = scratch_bytes(init_name, tuple(t.shape))
        budget.check(f"parameter `{name}` ({t}: {budget.fmt_bytes(size)}, and {budget.fmt_bytes(scratch)} while "
                     f"`{init_name}` draws it)", size + scratch, graph[n].loc)
        total += size
        budget.check(f"the parameters up to `{name}` together", total, graph[n].loc)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        try:
            out[name] = initialize(init_name, kwargs, tuple(t.shape), t.dtype, rng)
        except ValueError as e:
            raise DlcError("E0110", f"cannot initialise `{name}`: {e}", graph[n].loc) from None
    return out

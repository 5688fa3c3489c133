"""Constant folding: evaluate, at compile time, nodes whose value is already known.

A node folds when every input is a ``const`` and its op is a pure function of
its inputs and attrs: not random (their values depend on the run's key, and
reading ``__rng`` makes an input non-constant anyway), not control flow, and
with no symbolic dim in its attrs.  ``count`` of a statically shaped value
folds whatever that value is (it reads only the shape).  The op's own NumPy
kernel computes the value, so a folded graph gives the same numbers as the
unfolded one; results larger than :data:`MAX_FOLDED` elements are left to run
time, so a folded model file does not grow by a materialised ``zeros``.  A kernel
that fails on its constants (an index out of range, an integer to a negative
power) is left to run time too, which reports it (E0401) as the unoptimized
graph does, and so is a result that is not C-contiguous (a transposed, broadcast or
strided view of a constant): a folded constant is a C-order array, and NumPy
reduces in memory order, so a ``sum`` downstream of the view would round otherwise.
"""
from __future__ import annotations

import numpy as np

from ..dims import is_static, mentions_sym
from ..graph import SOURCE_OPS, Graph, Value
from ..ops.registry import get_op
from ..types import np_dtype
from .rewrite import Uses, const_value, topo_order

MAX_FOLDED = 4096  # elements
_NEVER = {"random", "control"}  # families whose ops are not pure functions of their inputs


def fold_constants(graph: Graph) -> int:
    """Replace foldable nodes by ``const`` nodes (in one topological sweep); returns how many."""
    uses = Uses(graph)
    folded: list[int] = []
    for n in topo_order(graph):
        rec = graph[n]
        if rec.op in SOURCE_OPS or len(rec.types) != 1:
            continue
        if rec.op == "count" and is_static(graph.type_of(rec.inputs[0]).shape):
            x = graph.type_of(rec.inputs[0])
            args = [np.empty(x.shape, np_dtype(x.dtype))]
        else:
            args = [const_value(graph, v) for v in rec.inputs]  # the cheap test first: most nodes stop here
            if any(a is None for a in args):
                continue
        opdef = get_op(rec.op)
        if opdef.family in _NEVER or opdef.takes_context or mentions_sym(rec.attrs):
            continue
        t = rec.types[0]
        if not is_static(t.shape) or int(np.prod(t.shape, dtype=np.int64)) > MAX_FOLDED:
            continue
        try:
            with np.errstate(all="ignore"):  # a folded 1/0 is inf, as it would be at run time
                value = opdef.kernel(*args, **rec.attrs)
        except Exception:  # noqa: BLE001  (a failing kernel, e.g. an index out of range: run time reports it as E0401)
            continue
        value = np.asarray(value[0] if isinstance(value, tuple) else value)  # a one-output op may return a 1-tuple
        if value.dtype != np_dtype(t.dtype) or value.shape != tuple(t.shape):
            continue  # a kernel whose result type differs from its rule: leave it to run time
        if not value.flags.c_contiguous:
            continue  # a view in another layout (a transpose, a broadcast): a C-order copy would sum otherwise
        value = value.copy()
        value.setflags(write=False)
        c = graph.add_node("const", (), {"value": value}, (t,), loc=rec.loc, scope=rec.scope, role=rec.role,
                           grad_of=rec.grad_of)
        uses.replace(n, [Value(c)])
        folded.append(n)
    graph.remove_nodes(folded)  # once: each call rebuilds the containers
    return len(folded)

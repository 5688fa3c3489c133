"""The optimizing pipeline: ``optimize(graph, level, backend)`` → a new, equivalent graph.

It runs between building a graph (lowering, backprop, the training step) and
running or exporting it.  The passes, in their fixed order:

====== ===========================================================================
level  passes
====== ===========================================================================
0      none (the graph as built)
1      simplify → fold_constants → cse → simplify → dce        (cleanup, any backend)
2      level 1, then, for ``backend="numpy"``, fuse_elementwise → dce
====== ===========================================================================

Fusion is a NumPy-backend step: onnxruntime fuses on its own and should
receive primitive ops, so ``backend="onnx"`` (exports, the onnxruntime
runner) stops after the cleanup passes at every level.  Every pass keeps the
results identical within float32 rounding (most are exact) and is linear in
the graph size, or ``n log n`` where it sorts.  The input graph is not
changed; the result passes ``Graph.verify()``.  Scan bodies are left as
built (their optimisation belongs with the scan lowering).
"""
from __future__ import annotations

from typing import Callable

from ..graph import Graph
from .cse import cse
from .dce import dce
from .fold_constants import fold_constants
from .fuse_elementwise import fuse_elementwise
from .simplify import simplify

LEVELS = (0, 1, 2)
DEFAULT_LEVEL = 2
BACKENDS = ("numpy", "onnx")
CLEANUP: tuple[Callable[[Graph], int], ...] = (simplify, fold_constants, cse, simplify, dce)
NUMPY_ONLY: tuple[Callable[[Graph], int], ...] = (fuse_elementwise, dce)


def passes_for(level: int, backend: str = "numpy") -> tuple[Callable[[Graph], int], ...]:
    """The passes ``optimize`` runs, in order."""
    if level not in LEVELS:
        raise ValueError(f"optimization level must be one of {LEVELS}, got {level!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if level == 0:
        return ()
    if level == 1 or backend != "numpy":
        return CLEANUP
    return CLEANUP + NUMPY_ONLY


def optimize(graph: Graph, level: int = DEFAULT_LEVEL, backend: str = "numpy", *,
             report: list | None = None, check: bool = False) -> Graph:
    """An optimized copy of ``graph`` (``graph`` itself at level 0).

    ``report``, when given, receives one ``(pass name, changes)`` pair per pass
    run; ``check`` runs ``verify()`` after every pass (the tests do)."""
    steps = passes_for(level, backend)
    if not steps:
        return graph
    g = graph.copy()
    for step in steps:
        changes = step(g)
        if report is not None:
            report.append((step.__name__, changes))
        if check:
            g.verify()
    return g

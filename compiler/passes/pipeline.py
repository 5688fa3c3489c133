"""The optimizing pipeline: ``optimize(graph, level, backend)`` → a new, equivalent graph.

It runs between building a graph (lowering, backprop, the training step) and
running or exporting it.  The passes, in their fixed order:

====== ===========================================================================
level  passes
====== ===========================================================================
0      none (the graph as built)
1      hoist_scan_invariants, then in bodies and graph: simplify → fold_constants → cse →
       pool_before_relu → simplify → dce   (any backend)
2      level 1, then, for ``backend="numpy"``, fold_transposes → fold_product_transposes →
       share_layer_norm_stats → fold_matmul_add → fold_conv_add → fuse_elementwise → dce
====== ===========================================================================

``hoist_scan_invariants`` runs first, on the graph that holds the scans and
before their bodies are optimized: it recognises the ops backprop and
lowering emit (``matmul``, ``add``, ``split``), which fusion would hide.

Fusion (of elementwise chains, of transposes into matmuls) is a
NumPy-backend step: onnxruntime fuses on its own and should receive
primitive ops, so ``backend="onnx"`` (exports, the onnxruntime
runner) stops after the cleanup passes at every level.  The cleanup passes,
``fold_transposes`` and fusion are exact on NumPy (the same kernels in the same
order; ``fold_product_transposes`` writes a batched product into its transposed
layout, the same BLAS calls; ``share_layer_norm_stats`` hands a layer norm's x̂ and 1/σ
to its gradient, the same functions); ``fold_matmul_add``'s GEMM accumulating onto the added term (with MKL) agrees
within float32 rounding; ``fold_conv_add`` adds a conv's bias to its output chunk by chunk, the
same additions; ``pool_before_relu`` (a graph rewrite, both backends) moves a ReLU after
the max pool that reads it, which leaves values and gradients equal; hoisting's batched GEMMs agree within float32 rounding.  Every pass is
linear in the graph size, or ``n log n`` where it sorts.  The input graph is not
changed; the result passes ``Graph.verify()``.

Scan bodies (graphs in a node's ``body`` attr) go through the same passes
first, each body once however many nodes share it: a body runs once per
step of its sequence, so a node saved there is saved T times.  A body keeps
its inputs and outputs (the scan's calling convention), so the scan node is
re-made with the optimized body and otherwise the same arguments and types.
"""
from __future__ import annotations

from typing import Callable

from ..graph import Graph
from .cse import cse
from .dce import dce
from .fold_constants import fold_constants
from .fold_conv_add import fold_conv_add
from .fold_matmul_add import fold_matmul_add
from .fold_product_transposes import fold_product_transposes
from .fold_transposes import fold_transposes
from .fuse_elementwise import fuse_elementwise
from .hoist_scan_invariants import hoist_scan_invariants
from .pool_before_relu import pool_before_relu
from .rewrite import Uses
from .share_layer_norm_stats import share_layer_norm_stats
from .simplify import simplify

LEVELS = (0, 1, 2)
DEFAULT_LEVEL = 2
BACKENDS = ("numpy", "onnx")
CLEANUP: tuple[Callable[[Graph], int], ...] = (simplify, fold_constants, cse, pool_before_relu, simplify, dce)
NUMPY_ONLY: tuple[Callable[[Graph], int], ...] = (fold_transposes, fold_product_transposes, share_layer_norm_stats,
                                                  fold_matmul_add, fold_conv_add, fuse_elementwise, dce)


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
    hoisted = hoist_scan_invariants(g, backend)  # loop-invariant work out of the loops, before bodies are fused
    if report is not None:
        report.append(("hoist_scan_invariants", hoisted))
    if check:
        g.verify()
    bodies = _optimize_bodies(g, steps, {})
    if report is not None:
        report.append(("scan bodies", bodies))
    for step in steps:
        changes = step(g)
        if report is not None:
            report.append((step.__name__, changes))
        if check:
            g.verify()
    return g


def _optimize_bodies(graph: Graph, steps, done: dict) -> int:
    """Run ``steps`` on every body graph inside ``graph`` (nested ones too); returns how many.
    ``done`` maps id(original body) → (original, optimized), so a shared body stays shared."""
    uses = Uses(graph)
    count = 0
    for n in list(graph.nodes()):
        rec = graph[n]
        body = rec.attrs.get("body")
        if not isinstance(body, Graph):
            continue
        hit = done.get(id(body))
        if hit is None or hit[0] is not body:
            new = body.copy()
            count += 1 + _optimize_bodies(new, steps, done)
            for step in steps:
                step(new)
            hit = done[id(body)] = (body, new)
        m = graph.add_node(rec.op, rec.inputs, {**rec.attrs, "body": hit[1]}, rec.types, loc=rec.loc,
                           scope=rec.scope, role=rec.role, grad_of=rec.grad_of)
        uses.replace(n, graph.out_values(m))
        graph.remove_nodes([n])
    return count

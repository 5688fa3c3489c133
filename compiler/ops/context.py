"""What a kernel that runs a subgraph gets from the runtime calling it.

Control-flow ops (``scan``) run a body graph once per step.  The op layer
does not know how graphs are executed — that is the runtime's business, and
imports run one way (compiler → runtime) — so an op that declares
``takes_context = True`` receives a :class:`KernelContext` as the keyword
argument ``context``, supplied by whichever executor runs it (the NumPy
interpreter's is ``runtime.interpreter.RunContext``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    from ..graph import Graph


class KernelContext(Protocol):
    """The executor's side of a kernel call.

    ``dims`` are the symbolic dims bound by the enclosing run (a cell's
    ``zeros([B, n])`` needs ``B``); ``compute_dtype`` is the precision floats
    run at (``None``: as declared; float64 under gradient checks).
    ``run_body(body, feeds)`` executes ``body`` on ``feeds`` (body input name →
    array) at that precision with those dims and returns ``{output name:
    array}``; the executor plans each body once and reuses the plan, so a
    kernel may call it once per step."""

    dims: Mapping[str, int]
    compute_dtype: Any

    def run_body(self, body: "Graph", feeds: Mapping[str, Any]) -> dict[str, Any]: ...

"""What a kernel that runs a subgraph gets from the runtime calling it.

Control-flow ops (``scan``) run a body graph once per step.  The op layer
does not know how graphs are executed — that is the runtime's business, and
imports run one way (compiler → runtime) — so an op that declares
``takes_context = True`` receives a :class:`KernelContext` as the keyword
argument ``context``, supplied by whichever executor runs it (the NumPy
interpreter's is ``runtime.run_context.RunContext``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    from ..graph import Graph


class KernelContext(Protocol):
    """The executor's side of a kernel call.

    ``dims`` are the symbolic dims bound by the enclosing run (a cell's
    ``zeros([B, n])`` needs ``B``); ``compute_dtype`` is the precision floats
    run at (``None``: as declared; float64 under gradient checks).
    ``bind_body(body, feeds)`` prepares ``body`` to run on inputs shaped like
    ``feeds`` (body input name → array), at that precision with those dims,
    and returns ``step(values) -> outputs``: ``values`` a list of the body's
    inputs in ``body.inputs`` order, ``outputs`` a tuple in ``body.outputs``
    order.  Dims are bound and the feeds checked once, when binding, so every
    call must pass arrays of the same shapes and dtypes (a scan step's carries
    and slices do); the executor plans each body once and reuses the plan."""

    dims: Mapping[str, int]
    compute_dtype: Any

    def bind_body(self, body: "Graph", feeds: Mapping[str, Any]) -> Callable[[list], tuple]: ...

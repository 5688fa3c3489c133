"""One memory budget, checked before anything big is allocated.

Every allocation dlc can predict from types — parameters (in their own
dtype), feeds and random inputs, a ``--bind``, the interpreter's planned peak,
arrays declared by ``.npy``/``.npz`` headers, files by their ``stat`` size — is
compared with the budget first; a refusal is E0003 naming the value, its size
and the budget, instead of a MemoryError (or the kernel's OOM killer) later.

The budget is, in order: :func:`set_budget` (the CLI's ``--max-memory``), the
``DLC_MAX_MEMORY`` environment variable, else :data:`FRACTION` of the physical
memory — and never more than what an address-space limit (``ulimit -v``) leaves.
Sizes accept ``512M``, ``2G``, ``1.5GiB`` or plain bytes.

Also here: the structural limits, which bound work rather than bytes.
"""
from __future__ import annotations

import os
import re

from dlc.grammar.errors import DlcError

FRACTION = 0.5
MAX_NODES = 1_000_000  # graph nodes one graph may hold (nested `repeat` multiplies)
NODE_BYTES = 2_000  # about what one node costs (record, networkx adjacency, types): the budget bounds nodes too
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
_override: int | None = None


def parse_size(text: str) -> int:
    """``"512M"`` → bytes; E0110 when it is not a size."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise DlcError("E0110", f"`{text}` is not a memory size", hint="write e.g. 512M, 2G or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def set_budget(nbytes: int | None) -> None:
    """Fix the budget for this process (None: back to the default)."""
    global _override
    _override = nbytes


def _physical() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_left() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        used = 0
    return max(soft - used, 0) // 2  # NumPy temporaries and fragmentation need room too


def budget() -> int:
    """The memory budget in bytes."""
    if _override is not None:
        limit = _override
    elif os.environ.get("DLC_MAX_MEMORY"):
        limit = parse_size(os.environ["DLC_MAX_MEMORY"])
    else:
        phys = _physical()
        limit = int(phys * FRACTION) if phys else 8 * 2**30
    left = _address_space_left()
    return min(limit, left) if left is not None else limit


def fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check(what: str, nbytes: int, loc=None, *, hint: str | None = None) -> None:
    """E0003 when ``what`` (e.g. "parameter `W` f32[16384, 16384]") needs more than the budget."""
    limit = budget()
    if nbytes > limit:
        raise DlcError("E0003", f"{what} needs {fmt_bytes(nbytes)}, more than the memory budget of "
                                f"{fmt_bytes(limit)}", loc,
                       hint=hint or "make it smaller, or raise the budget with --max-memory (DLC_MAX_MEMORY)")


def nbytes_of(shape, dtype) -> int:
    """Bytes of an array of ``shape`` (ints) and ``dtype`` (a NumPy dtype or a dlc name), in Python ints."""
    import numpy as np

    from .types import DTYPES

    itemsize = np.dtype(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype).itemsize
    n = itemsize
    for d in shape:
        n *= int(d)
    return n


def check_nodes(count: int, loc=None, what: str = "the graph has grown to") -> None:
    """E0003 once a graph reaches MAX_NODES nodes, or more than the memory budget holds."""
    limit = min(MAX_NODES, budget() // NODE_BYTES)
    if count >= limit:
        raise DlcError("E0003", f"{what} {count:,} nodes (limit {limit:,}: "
                                f"{'MAX_NODES' if limit == MAX_NODES else 'the memory budget of ' + fmt_bytes(budget())})",
                       loc, hint="a nested `repeat` multiplies its counts; use `scan` to iterate without unrolling")

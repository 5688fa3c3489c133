"""The names an expression mentions, found without recursion.

Used by :meth:`Frame.force` to evaluate the bindings a binding depends on
first, deepest first, with an explicit stack: a chain of bindings of any length
lowers in any declaration order, within Python's recursion limit."""
from __future__ import annotations

import dataclasses

from dlc.grammar import ast as A


def mentioned_names(expr) -> list[str]:
    """Every ``Name`` in ``expr`` in first-seen order (keyword labels and attribute fields are not Names)."""
    out, seen, stack = [], set(), [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, A.Name):
            if node.id not in seen:
                seen.add(node.id)
                out.append(node.id)
            continue
        if isinstance(node, (tuple, list)):
            stack.extend(reversed(node))
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            stack.extend(getattr(node, f.name) for f in reversed(dataclasses.fields(node)) if f.name != "loc")
    return out

"""The op tables of the docs, generated from the registry (so they cannot drift).

- ``docs/language.md`` §13 holds the *op index*: every op by family with its
  signature (inputs, then attributes with their defaults), whether it has a
  gradient, whether it is a composite, its attributes' docs and its samples'
  notes;
- ``docs/architecture.md`` holds the canonical op names by family.

Each sits between ``<!-- ops:NAME:begin -->`` and ``<!-- ops:NAME:end -->``;
``tests/test_docs.py`` checks that they equal what this module generates, and

    python -m dlc.compiler.ops.reference --write

rewrites them.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .registry import REQUIRED, all_ops

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"index": ROOT / "docs" / "language.md", "names": ROOT / "docs" / "architecture.md"}


def _default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"' if v not in ("f16", "f32", "f64", "i32", "i64", "bool") else v
    if isinstance(v, tuple):
        return "[" + ", ".join(_default(x) for x in v) + "]"
    return "None" if v is None else repr(v)


def signature(cls) -> str:
    parts = [i.lstrip("*") + ("..." if i.startswith("*") else "") for i in cls.inputs]
    for name, attr in cls.attrs.items():
        parts.append(name if attr.default is REQUIRED else f"{name} = {_default(attr.default)}")
    return f"`{cls.name}({', '.join(parts)})`"


def _by_family() -> dict[str, list]:
    out: dict[str, list] = {}
    for cls in all_ops().values():
        out.setdefault(cls.family or "other", []).append(cls)
    return dict(sorted(out.items()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def op_index() -> str:
    """The markdown table of every op, by family."""
    lines = ["| family | op | gradient | notes |", "|---|---|---|---|"]
    for family, ops in _by_family().items():
        for cls in ops:
            grad = "composite" if cls.composite else ("yes" if cls.differentiable else "no")
            notes = [f"`{k}`: {a.doc}" for k, a in cls.attrs.items() if a.doc]
            notes += sorted({s.note for s in cls.samples if s.note})
            lines.append(f"| {family} | {_cell(signature(cls))} | {grad} | {_cell('; '.join(notes))} |")
    return "\n".join(lines)


def op_names() -> str:
    """The canonical op names by family (what gradient rules of one family call)."""
    return "\n".join(f"- {family}: " + " ".join(cls.name for cls in ops) for family, ops in _by_family().items())


GENERATORS = {"index": op_index, "names": op_names}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- ops:{name}:begin -->\n)(.*?)(<!-- ops:{name}:end -->)", re.S)


def current(name: str) -> str | None:
    m = _block(name).search(DOCS[name].read_text(encoding="utf-8"))
    return m.group(2).rstrip("\n") if m else None


def write() -> None:
    for name, gen in GENERATORS.items():
        text = DOCS[name].read_text(encoding="utf-8")
        new = _block(name).sub(lambda m: m.group(1) + gen() + "\n" + m.group(3), text)
        DOCS[name].write_text(new, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(op_index())

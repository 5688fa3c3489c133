"""Imports run one way: grammar -> compiler -> runtime -> API/CLI (``dlc/``).

The compiler side (no runtime import, statically and at import time) is checked in
test_scan_optimize.py; these check the grammar and the runtime, statically, so that a
function-local import counts as much as a top-level one."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TOP = r"dlc(?:\s|$|\.(?:cli\w*|model|exports|__main__)\b)"  # the package itself or its API/CLI modules


def _offenders(folder: str, forbidden: str, root: Path = ROOT) -> list[str]:
    pattern = re.compile(rf"^\s*(?:from|import)\s+(?:{forbidden})", re.M)
    return sorted(f"{p.relative_to(root)}:{p.read_text()[:m.start()].count(chr(10)) + 1}"
                  for p in (root / folder).rglob("*.py") for m in pattern.finditer(p.read_text()))


def test_the_runtime_does_not_import_the_api_or_cli():
    assert _offenders("runtime", rf"{_TOP}|\.\.") == []


def test_the_grammar_imports_neither_compiler_nor_runtime():
    assert _offenders("grammar", rf"{_TOP}|dlc\.(?:compiler|runtime)\b|\.\.") == []


def test_the_check_sees_an_offending_import(tmp_path):
    """The patterns match what they forbid (else the tests above could never fail)."""
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "x.py").write_text("def f():\n    from dlc.model import Model\n")
    (tmp_path / "grammar").mkdir()
    (tmp_path / "grammar" / "y.py").write_text("import os\nfrom dlc.compiler.graph import Graph\n")
    assert _offenders("runtime", rf"{_TOP}|\.\.", tmp_path) == ["runtime/x.py:2"]
    assert _offenders("grammar", rf"{_TOP}|dlc\.(?:compiler|runtime)\b|\.\.", tmp_path) == ["grammar/y.py:2"]

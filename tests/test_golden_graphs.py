"""Golden graph dumps: `dlc graph specs/<spec>.dl` must print exactly tests/golden/<spec>.txt.

A change to lowering, shape inference or the printer shows up here as a diff
to review; when it is intended, rewrite the files:

    DLC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_graphs.py
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_harness import assert_matches_golden
from dlc.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


@pytest.mark.parametrize("spec", ["mlp", "lstm"])
def test_graph_dump_matches_golden(spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["graph", f"specs/{spec}.dl"])
    assert result.exit_code == 0, result.output
    assert_matches_golden(result.output, GOLDEN / f"{spec}.txt")

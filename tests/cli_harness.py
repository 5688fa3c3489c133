"""Running the command line in-process for tests (click's CliRunner)."""
from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from dlc.cli import main


def runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout on every click version."""
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by itself


def cli(*args, code: int = 0):
    """``dlc ARGS...``; asserts the exit status is ``code``, no traceback was printed and,
    on success, nothing was raised."""
    result = runner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    if code == 0:
        assert result.exception is None, result.exception
    return result


def assert_matches_golden(text: str, golden: Path) -> None:
    """``text`` must equal the file ``golden``; with DLC_UPDATE_GOLDEN=1 it is first rewritten."""
    if os.environ.get("DLC_UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no {golden.name}; run with DLC_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8")

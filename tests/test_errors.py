"""Golden error messages: `dlc check tests/bad/X.dl` prints exactly X.expected.

Each program in tests/bad/ (and its subfolders) has one mistake; its .expected
file holds the rendered stderr of `dlc check`, run from the repository root so
paths are relative.  Files whose name starts with `_` are helpers imported by
others and are not checked on their own.  A program whose mistake shows only
in another command says so in its first lines:

    # dlc: run --input x=tests/bad/data/x_3x5.npy     (the command and its options; the file goes after
                                                      the command name)
    # without: onnxruntime                            (run as if that package were not installed)

Every error code of grammar/errors.py has at least one golden program.

    DLC_UPDATE_GOLDEN=1 python -m pytest tests/test_errors.py   # rewrite the .expected files
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_harness import assert_matches_golden, runner
from dlc.cli import main

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "bad"
PROGRAMS = sorted(p for p in BAD.rglob("*.dl") if not p.name.startswith("_"))


def check(monkeypatch, *paths: str):
    monkeypatch.chdir(ROOT)
    return runner().invoke(main, ["check", *paths])


def _id(p: Path) -> str:
    return p.relative_to(BAD).as_posix()


def directives(program: Path) -> tuple[list[str], list[str]]:
    """(the command and its options, modules to hide) from the program's `# dlc:` / `# without:` lines."""
    command, without = ["check"], []
    for line in program.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# dlc:"):
            command = line[len("# dlc:"):].split()
        elif line.startswith("# without:"):
            without = line[len("# without:"):].split()
    return command, without


@pytest.mark.parametrize("program", PROGRAMS, ids=_id)
def test_golden_error_message(program, monkeypatch, tmp_path):
    import sys

    rel = program.relative_to(ROOT).as_posix()
    command, without = directives(program)
    for module in without:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    monkeypatch.chdir(ROOT)
    result = runner().invoke(main, [command[0], rel, *command[1:]])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    if command == ["check"]:
        assert result.stdout == ""
    assert_matches_golden(result.stderr, program.with_suffix(".expected"))


def test_messages_have_relative_paths_and_a_caret():
    for program in PROGRAMS:
        text = program.with_suffix(".expected").read_text(encoding="utf-8")
        assert str(ROOT) not in text and "/tmp" not in text, program.name
        first = next(line for line in text.splitlines() if line.startswith("error["))  # `run` may note first
        text = text[text.index(first):]
        assert re.match(r"error\[E\d{4}\]: ", first), first
        if not text.startswith(("error[E0004]", "error[E0403]")):  # no span: not the spec's fault
            assert re.search(r"--> tests/bad/\S+:\d+:\d+", text), program.name
            assert re.search(r"^ *\d* \| +\^+", text, re.M), program.name


def test_no_stale_expected_files():
    for expected in BAD.rglob("*.expected"):
        assert expected.with_suffix(".dl").exists(), f"{expected} has no program"


def test_the_required_mistakes_are_covered():
    codes = {}
    for program in PROGRAMS:
        lines = program.with_suffix(".expected").read_text(encoding="utf-8").splitlines()
        first = next(line for line in lines if line.startswith("error["))
        codes.setdefault(first[6:11], []).append(program.stem)
    from dlc.grammar.errors import CODES

    # E0501 (export) has no golden program: every graph that passes `dlc check` exports (the shape
    # rules refuse what ONNX cannot express); its messages are tested in test_onnx_export.py.
    # E0404 (a data-parallel worker failed) needs a killed Ray worker: tests/test_distributed.py.
    for code in set(CODES) - {"E0501", "E0404"}:
        assert code in codes, f"no golden error for {code}"
    text = {p.stem: p.with_suffix(".expected").read_text(encoding="utf-8") for p in PROGRAMS}
    assert "did you mean `relu`?" in text["unknown_name"]
    assert "f32[B, 4] @ f32[3, 5]" in text["matmul_shape"]
    assert all(f"`{n}`" in text["binding_cycle"].splitlines()[0] for n in "abc")
    assert "did you mean `units`?" in text["unknown_kwarg"]
    assert "model dim 6 is not divisible by heads = 4" in text["require_failed"]
    assert "did you mean `optimizer`?" in text["unknown_train_key"]
    assert "unknown optimizer `adma`" in text["unknown_optimizer"]
    assert "import cycle: a.dl → b.dl → a.dl" in text["a"]


def test_several_files_are_all_reported(monkeypatch):
    result = check(monkeypatch, "tests/bad/unknown_name.dl", "specs/mlp.dl", "tests/bad/matmul_shape.dl")
    assert result.exit_code == 2
    assert "specs/mlp.dl: ok" in result.stdout
    assert result.stderr.count("error[") == 2
    assert result.stderr.rstrip().endswith("2 of 3 file(s) have errors")


def test_debug_shows_the_traceback_instead(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner().invoke(main, ["--debug", "graph", "tests/bad/unknown_name.dl"])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "DlcError"

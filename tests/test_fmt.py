"""`dlc fmt`: the specs are formatted, formatting is idempotent and keeps the
program (the same tree) and its comments, on every spec and every doc example."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.grammar.formatter import format_source
from dlc.grammar.parse import parse

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").rglob("*.dl")) + sorted((ROOT / "benchmarks" / "specs").glob("*.dl"))
DOC_EXAMPLES = []
for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
    text = doc.read_text(encoding="utf-8")
    for m in re.finditer(r"^([ \t]*)```dl\n(.*?)^\1```", text, re.S | re.M):
        DOC_EXAMPLES.append((f"{doc.name}:{text[:m.start()].count(chr(10)) + 2}", textwrap.dedent(m.group(2))))


def _comments(text: str) -> list[str]:
    return [c.strip() for c in re.findall(r'#[^\n]*', re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text))]


@pytest.mark.parametrize("text", [p.read_text(encoding="utf-8") for p in SPECS] + [t for _, t in DOC_EXAMPLES],
                         ids=[p.relative_to(ROOT).as_posix() for p in SPECS] + [n for n, _ in DOC_EXAMPLES])
def test_fmt_keeps_the_program_and_its_comments_and_is_idempotent(text):
    once = format_source(text)
    assert parse(once) == parse(text)
    assert _comments(once) == _comments(text)
    assert format_source(once) == once


def test_the_specs_are_formatted(monkeypatch):
    monkeypatch.chdir(ROOT)
    files = [p.relative_to(ROOT).as_posix() for p in SPECS]
    result = CliRunner().invoke(main, ["fmt", "--check", *files])
    assert result.exit_code == 0, result.output


def test_fmt_rewrites_and_check_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    messy = ("# a model\nmodel m(){input  x:f32[B,4] ; param W:[4,2]=zeros()\n"
             "  h=x@W   # the product\n  output y=relu( h )+-1.0}\n")
    Path("m.dl").write_text(messy)
    result = CliRunner().invoke(main, ["fmt", "--check", "m.dl"])
    assert result.exit_code == 1 and "would reformat m.dl" in result.output
    assert Path("m.dl").read_text() == messy
    result = CliRunner().invoke(main, ["fmt", "m.dl"])
    assert result.exit_code == 0
    assert Path("m.dl").read_text() == ("# a model\nmodel m() {\n    input x: f32[B, 4]\n    param W: [4, 2] = zeros()\n"
                                        "    h = x @ W  # the product\n    output y = relu(h) + -1.0\n}\n")
    assert CliRunner().invoke(main, ["fmt", "--check", "m.dl"]).exit_code == 0


MESSY = "model m(){input  x:f32[B,4]\n  output y=relu( x )}\n"


def test_fmt_rewrites_atomically_and_keeps_the_files_permissions(tmp_path, monkeypatch):
    """A failure while writing leaves the user's spec whole (it was rewritten in place, so an
    interrupted write truncated it); the rewritten file keeps its mode, not the umask's."""
    import os

    from dlc.runtime import files

    monkeypatch.chdir(tmp_path)
    Path("m.dl").write_text(MESSY)
    os.chmod("m.dl", 0o640)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", disk_full)
        result = CliRunner().invoke(main, ["fmt", "m.dl"])
    assert result.exit_code == 2 and "error[E0002]" in result.output and "No space left" in result.output
    assert Path("m.dl").read_text() == MESSY and sorted(os.listdir()) == ["m.dl"]
    assert CliRunner().invoke(main, ["fmt", "m.dl"]).exit_code == 0
    assert Path("m.dl").read_text() == "model m() {\n    input x: f32[B, 4]\n    output y = relu(x)\n}\n"
    assert os.stat("m.dl").st_mode & 0o777 == 0o640


def test_fmt_does_not_write_through_a_symbolic_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("real.dl").write_text(MESSY)
    Path("link.dl").symlink_to("real.dl")
    result = CliRunner().invoke(main, ["fmt", "link.dl"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert Path("real.dl").read_text() == MESSY and Path("link.dl").is_symlink()


def test_fmt_keeps_what_the_user_wrote():
    text = "model m() {\n    input x: f32[B, 4]\n    output y = (x |> relu |> sum(axis = 1)) * 3e-3\n}\n"
    assert format_source(text) == text  # pipelines and number spellings are not rewritten
    text = ('model m(heads: int = 2) {\n    input x: f32[B, 4]\n    require 4 % heads == 0 : "{heads} heads"\n'
            "    output y = x[:, 1:3]\n}\n")
    assert format_source(text) == text


def test_fmt_of_a_broken_file_is_the_syntax_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b.dl").write_text("model m( {\n")
    result = CliRunner().invoke(main, ["fmt", "b.dl"])
    assert result.exit_code == 2 and "error[E0001]" in result.output


def test_a_comment_inside_a_statement_spanning_lines_moves_above_it():
    text = ("model m() {\n    input x: f32[B, 4]\n    y = concat([x,   # the input\n                x], axis = 1)\n"
            "    output z = y\n}\n")
    assert format_source(text) == ("model m() {\n    input x: f32[B, 4]\n    # the input\n"
                                   "    y = concat([x, x], axis = 1)\n    output z = y\n}\n")

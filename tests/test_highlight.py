"""The Pygments lexer for `.dl`: found through its entry point, no error tokens on any spec."""
from __future__ import annotations

from pathlib import Path

import pytest

pygments = pytest.importorskip("pygments")  # in the `test` extra; the compiler itself never needs it
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename  # noqa: E402
from pygments.token import Comment, Error, Keyword, Name, Number  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").rglob("*.dl"))


def test_the_entry_point_registers_the_lexer():
    assert type(get_lexer_by_name("dl")).__name__ == "DlLexer"
    assert type(get_lexer_for_filename("model.dl")).__name__ == "DlLexer"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_every_spec_highlights_without_errors(spec):
    tokens = list(get_lexer_by_name("dl").get_tokens(spec.read_text(encoding="utf-8")))
    assert not [t for t in tokens if t[0] in Error]


def test_token_kinds():
    text = 'model m() {\n    input x: f32[B, 4]  # x\n    output y = scan cell over x axis 1 + sum(x, axis = 1) * 2.5\n}\n'
    kinds = {v: k for k, v in get_lexer_by_name("dl").get_tokens(text)}
    assert kinds["model"] in Keyword and kinds["m"] in Name.Class and kinds["f32"] in Keyword.Type
    assert kinds["# x"] in Comment and kinds["sum"] in Name.Function and kinds["2.5"] in Number
    assert kinds["over"] in Keyword and kinds["scan"] in Keyword
    tokens = list(get_lexer_by_name("dl").get_tokens(text))
    axes = [k for k, v in tokens if v == "axis"]
    assert axes[0] in Keyword and axes[1] in Name  # `axis 1` of scan; the keyword argument `axis = 1`

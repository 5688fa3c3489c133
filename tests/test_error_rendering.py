"""Error messages as a user reads them: the op written, aligned notes, colour, call sites."""
from __future__ import annotations

import re

import pytest

import dlc
from dlc.grammar.errors import DlcError, Loc, Source


def _error(body: str) -> DlcError:
    with pytest.raises(DlcError) as e:
        dlc.compile("model m() {\n" + body + "\n}\n")
    return e.value


@pytest.mark.parametrize("body, shown, hidden", [
    ("    input x: f32[B, 4]\n    input y: i64[B]\n    output l = x - y", "`-`", "`sub`"),
    ("    input x: f32[B, 4]\n    input y: i64[B, 3]\n    output l = cross_entropy(x, y)", "`cross_entropy`",
     "softmax_xent"),
    ("    input x: f32[B]\n    input y: i64[B]\n    output l = mse(x, y)", "`mse`", "`sub`"),
])
def test_messages_name_the_op_the_user_wrote(body, shown, hidden):
    message = _error(body).render()
    assert shown in message and hidden not in message


def test_note_lines_stand_under_the_bar_for_any_line_number_width():
    for line in (3, 42, 1234):
        src = Source("a.dl", "\n" * (line - 1) + "y = x @ W\n")
        text = DlcError("E0104", "m", Loc(src, line, 5, line, 10), hint="h", notes=[("n", None)]).render()
        bar = [row for row in text.splitlines() if row.rstrip().endswith("|")][0]
        for row in text.splitlines():
            if row.lstrip().startswith("="):
                assert row.index("=") == bar.index("|"), text


def test_colour_codes_only_when_asked_and_the_plain_text_underneath():
    src = Source("a.dl", "y = x\n")
    e = DlcError("E0101", "unknown name `x`", Loc(src, 1, 5, 1, 6), hint="did you mean `y`?")
    plain, coloured = e.render(), e.render(color=True)
    assert "\x1b[" not in plain and "\x1b[1;31m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_an_error_in_a_layer_body_notes_every_call_on_the_way():
    text = ("layer inner(x: f32[B, I]) {\n    param W: [3, 3] = zeros()\n    return x @ W\n}\n"
            "layer outer(x: f32[B, I]) {\n    return inner(x)\n}\n"
            "model m() {\n    input x: f32[B, 4]\n    output y = outer(x)\n}\n")
    with pytest.raises(DlcError) as e:
        dlc.compile(text)
    calls = [(n, loc.line) for n, loc in e.value.notes if n.startswith("in this call")]
    assert calls == [("in this call of `inner`", 6), ("in this call of `outer`", 10)]


def test_the_caret_lines_up_under_a_tab_indented_line():
    """The caret was padded with one space per tab, so a terminal (tab stops of 8) showed it
    columns left of the error; the padding now repeats the line's tabs."""
    with pytest.raises(DlcError) as e:
        dlc.compile("model m() {\n\tinput x: f32[N, 2]\n\toutput y = x +* 2\n}\n")
    lines = e.value.render().splitlines()
    source, caret = lines[lines.index("3 | \toutput y = x +* 2") :][:2]
    assert caret == "  | \t" + " " * 14 + "^"
    assert source.expandtabs(8).index("*") == caret.expandtabs(8).index("^")

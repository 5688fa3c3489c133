"""Lark's parse failures → E0001 :class:`DlcError`\\ s that point at the
offending token, say what was expected in words, and add a hint for common
mistakes (``:=``, single quotes, ``def``, a missing comma, a misspelt keyword).
A bracket left open is reported at the bracket itself (as rustc does), with a
note saying where parsing stopped.
"""
from __future__ import annotations

import re

import lark
from lark import Token

from .errors import DlcError, Loc, Source, suggest

KEYWORDS = {"use", "const", "layer", "model", "train", "input", "param", "state", "update", "output", "return",
            "require", "repeat", "scan", "over", "and", "or", "not", "true", "false"}
_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
          "ADD_OP": "`+` or `-`", "MUL_OP": "an operator", "COMP_OP": "a comparison", "$END": "end of file",
          "SCAN_AXIS": "`axis`", "SCAN_INIT": "`init`", "SCAN_REVERSE": "`reverse`"}
_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS", "PLUS", "NOT", "TRUE", "FALSE",
               "REPEAT", "SCAN"}
_OPERATORS = {"ADD_OP", "MUL_OP", "FLOOR_DIV", "COMP_OP", "STAR", "MINUS", "PLUS", "__ANON_0", "__ANON_1", "DOT", "LPAR",
              "LSQB", "AND", "OR", "SLASH", "PERCENT", "AT"}
_BRACKETS = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"?|[\[\](){}]')


def syntax_error(e: lark.exceptions.UnexpectedInput, source: Source, parser: lark.Lark) -> DlcError:
    line, col = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else ""
        loc = Loc(source, line, col, line, col + 1)
        if ch == '"':  # the STRING terminal did not match: no closing quote on this line
            return DlcError("E0001", "unterminated string", loc, hint="a string ends with `\"` on the same line")
        hint = {"'": "strings use double quotes: \"...\""}.get(ch)
        if ch == ":" and source.text[e.pos_in_stream:e.pos_in_stream + 2] == ":=":
            hint = "bindings use `=`, not `:=`"
        return DlcError("E0001", f"unexpected character {ch!r}", loc,
                        hint=hint or (f"expected {_expected(e.allowed, parser)}" if e.allowed else None))
    if isinstance(e, lark.exceptions.UnexpectedEOF) or (
            isinstance(e, lark.exceptions.UnexpectedToken) and e.token.type == "$END"):
        last = source.text.rstrip().splitlines() or [""]
        line = len(last)
        loc = Loc(source, line, len(last[-1]) + 1, line, len(last[-1]) + 2)
        expected = getattr(e, "expected", None) or getattr(e, "accepts", None) or ()
        message = f"unexpected end of file; expected {_expected(expected, parser)}"
        opener = _open_bracket(source, len(source.text)) if {"RBRACE", "RPAR", "RSQB"} & set(expected) else None
        if opener is not None:
            return _unclosed_error(opener, f"the file ends at {loc}: {message}")
        return DlcError("E0001", message, loc)
    tok: Token = e.token
    end = col + max(len(str(tok)), 1)
    loc = Loc(source, line, col, tok.end_line or line, tok.end_column or end)
    expected = set(getattr(e, "accepts", None) or e.expected)
    message = f"unexpected {_token_words(tok)}; expected {_expected(expected, parser)}"
    opener = _open_bracket(source, tok.start_pos) if tok.start_pos is not None else None
    bracket = source.text[_offset(source, opener)] if opener is not None else None
    if bracket in ("(", "[") and opener.line < line and _CLOSER_TERMINAL[bracket] in expected:
        # `h = relu(x` then a new statement: the `(` is what is wrong, not the next line
        # (a `{` spans lines by design: a statement the block cannot hold is the error there)
        return _unclosed_error(opener, f"parsing stopped at {loc}: {message}")
    return DlcError("E0001", message, loc, hint=_hint(tok, expected, source, line, parser))


_CLOSER_TERMINAL = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}
_CLOSER = {"(": ")", "[": "]", "{": "}"}


def _offset(source: Source, loc: Loc) -> int:
    """The character offset of ``loc``'s start in the source text."""
    lines = source.text.split("\n")
    return sum(len(x) + 1 for x in lines[:loc.line - 1]) + loc.col - 1


def _open_bracket(source: Source, stop: int) -> Loc | None:
    """The innermost bracket still open at offset ``stop`` (comments and strings skipped)."""
    stack: list[int] = []
    for m in _BRACKETS.finditer(source.text, 0, stop):
        ch = m.group()
        if ch in "([{":
            stack.append(m.start())
        elif ch in ")]}" and stack:
            stack.pop()  # a mismatched closer is the parser's own error, reported before
    if not stack:
        return None
    pos = stack[-1]
    line = source.text.count("\n", 0, pos) + 1
    col = pos - (source.text.rfind("\n", 0, pos) + 1) + 1
    return Loc(source, line, col, line, col + 1)


def _unclosed_error(opener: Loc, note: str) -> DlcError:
    ch = opener.source.line(opener.line)[opener.col - 1]
    return DlcError("E0001", f"unclosed `{ch}`", opener, label="unclosed delimiter", notes=[(note, None)],
                    hint=f"close it with `{_CLOSER[ch]}`")


def _describe_terminal(name: str, parser: lark.Lark) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"`{pattern.value}`"
    return name.lower()


def _expected(names, parser: lark.Lark) -> str:
    names = {n for n in names if not n.startswith("_") or n.startswith("__ANON")}
    words = set()
    if {"NAME", "INT", "LPAR"} <= names:  # everything that can start an expression
        words.add("an expression")
        names -= _EXPR_START
    if {"ADD_OP", "MUL_OP"} <= names:  # everything that can continue one
        words.add("an operator")
        names -= _OPERATORS
    words |= {_describe_terminal(n, parser) for n in names}
    words = sorted(words or {"something else"}, key=lambda w: (w.startswith("`"), w))
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _is_name(tok: Token) -> bool:
    """A name, also when the contextual lexer took it for a soft keyword (`axis`, `init`, `reverse`)."""
    return tok.type == "NAME" or (re.fullmatch(r"[A-Za-z_]\w*", str(tok)) is not None and str(tok) not in KEYWORDS)


def _token_words(tok: Token) -> str:
    if _is_name(tok):
        return f"name `{tok}`"
    if tok.type in ("INT", "FLOAT"):
        return f"number `{tok}`"
    if tok.type == "STRING":
        return f"string {tok}"
    return f"`{tok}`"


def _keyword_words(expected: set, parser: lark.Lark) -> list[str]:
    """The keywords among the expected terminals (`model`, `return`, ...)."""
    words = []
    for name in expected:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if isinstance(pattern, lark.lexer.PatternStr) and pattern.value.isidentifier():
            words.append(pattern.value)
    return words


_STATEMENT_KEYWORDS = ("input", "output", "param", "state", "update", "return", "require", "const")


def _hint(tok: Token, expected: set, source: Source, line: int, parser: lark.Lark) -> str | None:
    text = str(tok)
    first = (source.line(line).split() or [""])[0]
    if _is_name(tok) and "NAME" not in expected:  # `modle m() {`: a keyword was due here
        close = suggest(text, _keyword_words(expected, parser))
        if close:
            return close
    if _is_name(tok) and first.isidentifier() and first not in KEYWORDS and tok.column > len(first) \
            and source.line(line).lstrip().startswith(first + " ") and source.line(line).lstrip()[len(first) + 1:].startswith(text):
        close = suggest(first, _STATEMENT_KEYWORDS)  # `retrun x`: the misspelt keyword came first
        if close:
            return close
    if text == ":" and source.line(line)[tok.column:tok.column + 1] == "=":
        return "bindings use `=`, not `:=`"
    if text in ("def", "fn", "function", "class"):
        return "layers are declared with `layer NAME(args) { ... }`"
    if text in ("let", "var") or (first in ("let", "var", "val") and tok.column > len(first)):
        return "bindings need no keyword: `h = relu(x)`"
    if text in KEYWORDS and "NAME" in expected:
        return f"`{text}` is a keyword; choose another name"
    value = _is_name(tok) or tok.type in ("INT", "FLOAT", "STRING")
    if value and "RPAR" in expected:
        return "is a `,` missing between arguments?"
    if value and "RSQB" in expected:
        return "is a `,` missing between items?"
    if text == "=" and ("NAME" not in expected or "RBRACE" in expected):
        return "to compare, use `==`; a binding has a single name (or names) on its left"
    if text == "{" and "LPAR" in expected and "NAME" not in expected:
        return "a layer needs a parameter list, even an empty one: `layer f() { ... }`"
    if expected == {"COLON"}:
        return "declarations need a type: `input x: f32[B, 4]`"
    return None

"""`dlc fmt`: the canonical layout of a `.dl` file, comments kept.

The parser gives the structure (declarations, statements and their spans); the
text of each statement is re-spaced token by token, so what the user wrote —
pipelines, number spellings such as ``3e-3``, parentheses — is kept, while the
layout is fixed:

- four spaces per block level, one statement per line, no ``;``; a train
  block's step group on one line (``step d { loss = l; optimizer = sgd() }``);
- one space around binary operators, ``=`` and ``|>``, after ``,`` and the
  ``:`` of a type; none inside brackets, before ``(``/``[`` of a call, an index
  or a type, around ``.`` and the ``:`` of a slice; unary ``-`` attached;
- in a run of consecutive lines (no blank line or comment line between), the
  declarations (``input``/``param``/``state``) align their types and ``=``,
  single-name bindings, outputs, updates and train items their ``=``, step
  groups their ``{``, and trailing comments their ``#`` (two spaces after the
  longest code among the commented lines);
- blank lines are kept (at most one in a row; one always separates layers,
  models and train blocks); comment lines stay above what follows them;
- a header longer than 100 columns wraps its formals under the first one.

``format_source(format_source(t)) == format_source(t)``, and the result parses
to the same tree (``tests/test_fmt.py`` checks both on every spec and every
example of the docs).
"""
from __future__ import annotations

import re

from . import ast as A
from .parse import parse

WIDTH = 100
INDENT = "    "

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+) | (?P<comment>\#[^\n]*) | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<num>[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+)
  | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>\|>|\*\*|//|==|!=|<=|>=|[-+*/%@<>=])
  | (?P<punct>\.\.\.|[()\[\]{},.:;])
""", re.X)
_WORD_OPS = {"and", "or", "not"}
_SOFT_KEYWORDS = {"over", "steps", "axis", "init", "lengths", "reverse", "scan", "repeat", "return", "require",
                  "use", "const",
                  "input", "param", "state", "update", "output", "layer", "model", "train", "step"}
_DECLS = (A.InputDecl, A.ParamDecl, A.StateDecl)


class _Tok:
    __slots__ = ("kind", "text", "pos", "gap")

    def __init__(self, kind: str, text: str, pos: int, gap: bool):
        self.kind, self.text, self.pos, self.gap = kind, text, pos, gap  # gap: whitespace before it


def _tokens(text: str, start: int, end: int) -> list[_Tok]:
    out, gap, pos = [], False, start
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:  # cannot happen for text the parser accepted
            raise ValueError(f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            gap = True
        elif kind == "punct" and m.group() == ";":
            gap = True
        else:
            out.append(_Tok(kind, m.group(), pos, gap))
            gap = False
        pos = m.end()
    return out


def _join(toks: list[_Tok], colon: str = ": ") -> str:
    """Tokens as canonically spaced text (``colon``: how a ``:`` outside brackets reads)."""
    out: list[str] = []
    stack: list[str] = []  # open brackets: a `:` directly inside `[` is a slice's
    prev: _Tok | None = None
    attach = False  # the previous token was a unary sign: its operand follows directly
    for t in toks:
        s = t.text
        unary = s in ("-", "+") and (prev is None or prev.text in ("(", "[", ",", "=", ":", "{")
                                     or prev.kind == "op" or prev.text in _WORD_OPS
                                     or prev.text in ("return", "axis"))
        if prev is None or attach:
            space = ""
        elif s in (",", ")", "]", ".") or prev.text in ("(", "[", "."):
            space = ""
        elif s == ":":
            space = "" if (stack and stack[-1] == "[") or (not stack and colon == ": ") or stack else " "
        elif prev.text == ":":
            space = "" if stack and stack[-1] == "[" else " "
        elif s in ("(", "["):
            space = " " if (prev.kind == "word" and prev.text in _SOFT_KEYWORDS and t.gap) or \
                prev.kind == "op" or prev.text in (",", "{") or prev.text in _WORD_OPS else ""
        else:
            space = " "
        out.append(space + s)
        if s in ("(", "["):
            stack.append(s)
        elif s in (")", "]") and stack:
            stack.pop()
        attach = unary
        prev = t
    return "".join(out)


def _comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment, strings skipped."""
    out, line, line_start = [], 1, 0
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "comment":
            out.append((line, m.start() - line_start + 1, m.group().rstrip()))
        chunk = m.group()
        if "\n" in chunk:
            line += chunk.count("\n")
            line_start = m.start() + chunk.rfind("\n") + 1
    return out


class _Source:
    def __init__(self, text: str):
        self.text = text
        self.line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        self.comments = _comments(text)
        self.used: set[int] = set()
        self.lines = text.split("\n")

    def offset(self, line: int, col: int) -> int:
        return self.line_starts[line - 1] + col - 1

    def span_tokens(self, loc) -> list[_Tok]:
        return _tokens(self.text, self.offset(loc.line, loc.col), self.offset(loc.end_line, loc.end_col))

    def blank_between(self, a: int, b: int) -> bool:
        """Is there an empty line strictly between lines a and b?"""
        return any(not self.lines[i - 1].strip() for i in range(a + 1, b))

    def own_line_comments(self, before: int) -> list[tuple[int, int, str]]:
        """Unused comments alone on their line before line ``before``."""
        out = []
        for i, (line, col, text) in enumerate(self.comments):
            if i in self.used or line >= before:
                continue
            self.used.add(i)
            out.append((line, col, text))
        return out

    def inside(self, first: int, last: int) -> list[tuple[int, int, str]]:
        """Unused comments on lines first..last-1 (inside a statement that spans lines: they
        move above it, since the statement becomes one line)."""
        out = []
        for i, (line, col, text) in enumerate(self.comments):
            if i not in self.used and first <= line < last:
                self.used.add(i)
                out.append((line, col, text))
        return out

    def trailing(self, line: int) -> str | None:
        for i, (cline, col, text) in enumerate(self.comments):
            if i not in self.used and cline == line and self.lines[line - 1][:col - 1].strip():
                self.used.add(i)
                return text
        return None


class _Line:
    """One output line: its alignment class, cells (aligned parts) and trailing comment."""

    def __init__(self, indent: str, cells: list[str], kind: str | None, comment: str | None, first: int, last: int):
        self.indent, self.cells, self.kind, self.comment = indent, cells, kind, comment
        self.first, self.last = first, last  # source lines


def format_source(text: str, path: str = "<string>") -> str:
    """The canonical layout of ``text`` (raises the parser's DlcError when it does not parse)."""
    module = parse(text, path)
    src = _Source(text)
    out: list[str] = []
    last_line = 0
    for k, d in enumerate(module.decls):
        lead = src.own_line_comments(d.loc.line)
        blocky = not isinstance(d, (A.Use, A.Const))
        prev_blocky = k > 0 and not isinstance(module.decls[k - 1], (A.Use, A.Const))
        first = lead[0][0] if lead else d.loc.line
        if out and (src.blank_between(last_line, first) or blocky or prev_blocky):
            out.append("")
        for i, (line, _, c) in enumerate(lead):
            if i and src.blank_between(lead[i - 1][0], line):
                out.append("")
            out.append(c)
        if lead and src.blank_between(lead[-1][0], d.loc.line):
            out.append("")
        out.extend(_decl(d, src))
        last_line = d.loc.end_line
    rest = src.own_line_comments(len(src.lines) + 1)
    if rest and out and src.blank_between(last_line, rest[0][0]):
        out.append("")
    out.extend(c for _, _, c in rest)
    return "\n".join(out).rstrip("\n") + "\n"


def _decl(d, src: _Source) -> list[str]:
    if isinstance(d, (A.Use, A.Const)):
        code = _join(src.span_tokens(d.loc))
        comment = src.trailing(d.loc.end_line)
        return [code + (f"  {comment}" if comment else "")]
    # a declaration's span starts at its name: the keyword before it, the body through its `}`
    keyword = {A.LayerDef: "layer", A.ModelDef: "model", A.TrainDef: "train"}[type(d)]
    name_at = src.offset(d.loc.line, d.loc.col)
    start = src.text.rindex(keyword, 0, name_at)
    toks = _tokens(src.text, start, len(src.text))
    depth, open_at, close_at = 0, None, None
    for i, t in enumerate(toks):  # the `{` that opens the body (the first outside parentheses), its `}`
        if t.text in ("(", "["):
            depth += 1
        elif t.text in (")", "]"):
            depth -= 1
        elif t.text == "{":
            if depth == 0 and open_at is None:
                open_at = i
            depth += 1
        elif t.text == "}":
            depth -= 1
            if depth == 0 and open_at is not None:
                close_at = i
                break
    header = _wrap_header(toks[:open_at])
    header = header + " {" if isinstance(header, str) else header[:-1] + [header[-1] + " {"]
    header_line = src.text.count("\n", 0, toks[open_at].pos) + 1
    comment = src.trailing(header_line)
    lines = [header] if isinstance(header, str) else header
    lines[-1] += f"  {comment}" if comment else ""
    items = d.items if isinstance(d, A.TrainDef) else d.body
    body = _block(items, src, INDENT, after=header_line)
    closing = src.text.count("\n", 0, toks[close_at].pos) + 1
    inner = src.own_line_comments(closing)
    if inner:
        if body and src.blank_between(body_end(items), inner[0][0]):
            body.append(_Line("", [""], None, None, 0, 0))
        body.extend(_Line(INDENT, [c], None, None, line, line) for line, _, c in inner)
    comment = src.trailing(closing)
    return lines + _render(body) + ["}" + (f"  {comment}" if comment else "")]


def body_end(items) -> int:
    return items[-1].loc.end_line if items else 0


def _wrap_header(toks: list[_Tok]):
    text = _join(toks)
    if len(text) + 2 <= WIDTH or "(" not in text:
        return text
    head, _, rest = text.partition("(")
    parts, depth, cur = [], 0, ""
    for ch in rest:  # split the formals at top-level commas
        cur += ch
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
    parts.append(cur.strip())
    lines, line = [], head + "("
    pad = " " * len(line)
    for p in parts:
        candidate = line + ("" if line.endswith("(") else " ") + p
        if len(candidate) + 2 > WIDTH and not line.endswith("("):
            lines.append(line)
            line = pad + p
        else:
            line = candidate
    lines.append(line)
    return lines


def _block(items, src: _Source, indent: str, after: int) -> list[_Line]:
    out: list[_Line] = []
    prev_end = after
    for s in items:
        lead = src.own_line_comments(s.loc.line) + src.inside(s.loc.line, s.loc.end_line)
        first = lead[0][0] if lead else s.loc.line
        if out and src.blank_between(prev_end, first):
            out.append(_Line("", [""], None, None, 0, 0))
        for i, (line, _, c) in enumerate(lead):
            if i and src.blank_between(lead[i - 1][0], line):
                out.append(_Line("", [""], None, None, 0, 0))
            out.append(_Line(indent, [c], None, None, line, line))
        if lead and lead[-1][0] < s.loc.line and src.blank_between(lead[-1][0], s.loc.line):
            out.append(_Line("", [""], None, None, 0, 0))
        kind, cells = _statement(s, src)
        out.append(_Line(indent, cells, kind, src.trailing(s.loc.end_line), s.loc.line, s.loc.end_line))
        prev_end = s.loc.end_line
    return out


def _split(toks: list[_Tok], at: str) -> tuple[list[_Tok], list[_Tok]] | None:
    depth = 0
    for i, t in enumerate(toks):
        if t.text in ("(", "[", "{"):
            depth += 1
        elif t.text in (")", "]", "}"):
            depth -= 1
        elif t.text == at and depth == 0:
            return toks[:i], toks[i + 1:]
    return None


def _statement(s, src: _Source) -> tuple[str | None, list[str]]:
    toks = src.span_tokens(s.loc)
    if isinstance(s, _DECLS):
        head, rest = _split(toks, ":")
        parts = _split(rest, "=")
        if parts is None:
            return "decl", [_join(head) + ":", _join(rest)]
        return "decl", [_join(head) + ":", _join(parts[0]), "= " + _join(parts[1])]
    if isinstance(s, A.StepGroup):
        inner = src.span_tokens(s.loc)
        name = _join(inner[:2])
        items = "; ".join(_join(src.span_tokens(i.loc)) for i in s.items)
        return "step", [name, "{ " + items + " }" if items else "{ }"]
    if isinstance(s, A.Require):
        return None, [_join(toks, colon=" : ")]
    kind = {A.OutputDecl: "output", A.Update: "update", A.TrainItem: "item"}.get(type(s))
    if isinstance(s, A.Binding):
        kind = "bind" if len(s.targets) == 1 else None
    parts = _split(toks, "=") if kind else None
    if parts is None:
        return None, [_join(toks)]
    return kind, [_join(parts[0]), "= " + _join(parts[1])]


def _render(lines: list[_Line]) -> list[str]:
    """Align cells within runs of lines of one kind, and trailing comments within runs of lines."""
    texts: list[str] = [""] * len(lines)
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].kind is not None and lines[j].kind == lines[i].kind:
            j += 1
        if j == i:  # a line outside any alignment class
            texts[i] = lines[i].indent + " ".join(lines[i].cells)
            i += 1
            continue
        group = lines[i:j]
        width = max(len(g.cells) for g in group)
        widths = [max((len(g.cells[c]) for g in group if c < len(g.cells) - 1), default=0) for c in range(width)]
        for k, g in enumerate(group):
            cells = [c.ljust(widths[n]) if n < len(g.cells) - 1 else c for n, c in enumerate(g.cells)]
            texts[i + k] = g.indent + " ".join(cells).rstrip()
        i = j
    # trailing comments: aligned within runs of code lines (a blank or comment line ends a run)
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].kind is not None or (j < len(lines) and lines[j].cells != [""]
                                                              and lines[j].first and not lines[j].cells[0].startswith("#")):
            j += 1
        j = max(j, i + 1)
        commented = [k for k in range(i, j) if lines[k].comment]
        if commented:
            col = max(len(texts[k]) for k in commented) + 2
            for k in commented:
                texts[k] = texts[k].ljust(col) + lines[k].comment
        i = j
    return texts

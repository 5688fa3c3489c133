"""Text → AST.  ``parse(text, path)`` returns a :class:`~dlc.grammar.ast.Module`
or raises a :class:`DlcError` (E0001) that points at the offending token,
says what was expected in words, and adds a hint for common mistakes.

The grammar (``dl.lark``) is compiled once per process (its tables cached across
processes, see ``parser_cache.py``); the tree → AST transformer (``to_ast.py``)
desugars pipelines (``x |> f(a)``) into calls (``f(x, a)``), so later stages
never see them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import lark

from . import ast as A
from .errors import DlcError, Loc, Source
from .parser_cache import cache_file
from .syntax_errors import syntax_error as _syntax_error
from .to_ast import ToAst

MAX_SOURCE_CHARS = 2_000_000
MAX_NESTING = 256  # open brackets at once: deeper is never written by hand, and costs the parser dearly
_OPEN, _CLOSE = "([{", ")]}"


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = (Path(__file__).with_name("dl.lark")).read_text()
    return lark.Lark(grammar, start="module", parser="lalr", lexer="contextual",
                     propagate_positions=True, maybe_placeholders=True, cache=cache_file(grammar))


def parse(text: str, path: str = "<string>") -> A.Module:
    """Parse ``text`` (the contents of ``path``) into a Module."""
    source = Source(path, text)
    if len(text) > MAX_SOURCE_CHARS:
        raise DlcError("E0003", f"{path} is {len(text)} characters long (limit {MAX_SOURCE_CHARS})")
    _check_nesting(text, source)
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, source, _parser()) from None
    except RecursionError:
        raise DlcError("E0003", "the expression nests too deeply", Loc(source, 1, 1, 1, 2)) from None
    try:
        return ToAst(source).transform(tree)
    except RecursionError:
        raise _too_deep(tree, source) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, DlcError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(tree, source) from None
        raise


def _check_nesting(text: str, source: Source) -> None:
    """E0003 at the first bracket opened more than MAX_NESTING deep (comments and strings skipped),
    found in one linear scan before the parser sees the text."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            j = text.find('"', i + 1)
            i = n if j < 0 else j + 1
            continue
        if c in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, i) + 1
                col = i - (text.rfind("\n", 0, i) + 1) + 1
                raise DlcError("E0003", f"brackets nest more than {MAX_NESTING} deep",
                               Loc(source, line, col, line, col + 1), hint="split the expression into bindings")
        elif c in _CLOSE:
            depth = max(depth - 1, 0)
        i += 1


def _too_deep(tree: lark.Tree, source: Source) -> DlcError:
    """E0003 at the statement holding the most deeply nested expression (found without recursion)."""
    deepest, where, stack = -1, None, [(tree, 0, None)]
    while stack:
        node, depth, stmt = stack.pop()
        if depth <= 3 and getattr(node.meta, "line", None) is not None:
            stmt = node  # module → declaration → block → statement: remember the outermost spans
        if depth > deepest:
            deepest, where = depth, stmt
        stack.extend((c, depth + 1, stmt) for c in node.children if isinstance(c, lark.Tree))
    meta = where.meta if where is not None else None
    loc = Loc(source, meta.line, meta.column, meta.line, meta.column + 1) if meta else Loc(source, 1, 1, 1, 2)
    return DlcError("E0003", "the expression nests too deeply", loc,
                    hint="split it into several bindings")


def read_source(path: str | Path) -> str:
    """The text of a spec file; unreadable files are E0002, oversized ones E0003 (by ``stat``, unread)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DlcError("E0002", f"no such file: {path}") from None
    except OSError as e:
        raise DlcError("E0002", f"cannot read {path}: {e.strerror}") from None
    if p.is_dir():
        raise DlcError("E0002", f"cannot read {path}: it is a directory")
    if not p.is_file():
        raise DlcError("E0002", f"cannot read {path}: it is not a regular file (a FIFO, socket or device)")
    if size > 4 * MAX_SOURCE_CHARS:  # UTF-8 takes at most 4 bytes a character
        raise DlcError("E0003", f"{path} is {size:,} bytes long (limit {MAX_SOURCE_CHARS:,} characters)")
    try:
        return p.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write is not a character
    except FileNotFoundError:
        raise DlcError("E0002", f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DlcError("E0002", f"cannot read {path}: {e}") from None


def parse_file(path: str | Path) -> A.Module:
    """Read and parse a spec file; unreadable files are E0002."""
    return parse(read_source(path), str(path))

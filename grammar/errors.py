"""Errors with source locations: the one error family of dlc.

Every user-facing failure is a :class:`DlcError` (or a :class:`DlcErrors`
bundle of several).  Each carries a stable code, a message saying what was
expected and what was found, an optional source span, a hint, and notes that
point at other spans.  :meth:`DlcError.render` formats it the way a good
compiler does: ``file:line:col``, the source line and a caret under the span.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# characters splitlines() treats as line breaks but the lexer does not
_INVISIBLE_BREAKS = {ord(c): " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class Source:
    """The text of one spec file; compared by identity, never by content."""

    __slots__ = ("path", "text", "_lines")

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text
        self._lines: list[str] | None = None

    def line(self, number: int) -> str:
        """The 1-based line ``number`` without its newline ('' when out of range).

        Lines are what the lexer counts: text between ``\n`` characters (a ``\r``
        before one belongs to it).  ``str.splitlines`` would also split at form
        feeds, vertical tabs, U+2028 and friends and show the wrong line; those
        are shown as spaces instead, one column each, so the caret stays put."""
        if self._lines is None:
            self._lines = [ln[:-1] if ln.endswith("\r") else ln for ln in self.text.split("\n")]
        text = self._lines[number - 1] if 0 < number <= len(self._lines) else ""
        return text.translate(_INVISIBLE_BREAKS)

    def __repr__(self) -> str:
        return f"Source({self.path!r})"


@dataclass(frozen=True)
class Loc:
    """A span in a source file: 1-based line and column, end exclusive."""

    source: Source | None
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def path(self) -> str:
        return self.source.path if self.source else "<unknown>"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


NO_LOC = Loc(None, 0, 0, 0, 0)

# Error codes are stable: tests and users may rely on them.
CODES = {
    "E0001": "syntax error",
    "E0002": "file error",
    "E0003": "limit exceeded",
    "E0004": "missing optional dependency",
    "E0101": "unknown name",
    "E0102": "wrong arguments",
    "E0103": "type error",
    "E0104": "shape mismatch",
    "E0105": "unbound dim",
    "E0106": "cycle",
    "E0107": "duplicate definition",
    "E0108": "requirement failed",
    "E0109": "import error",
    "E0110": "invalid value",
    "E0201": "train block error",
    "E0301": "gradient error",
    "E0401": "runtime error",
    "E0402": "non-finite value",
    "E0403": "checkpoint error",
    "E0404": "worker failure",
    "E0501": "export error",
}


@dataclass
class DlcError(Exception):
    """A user error with a source span.  ``code`` is a key of :data:`CODES`."""

    code: str
    message: str
    loc: Loc | None = None
    hint: str | None = None
    notes: list[tuple[str, Loc | None]] = field(default_factory=list)
    label: str | None = None  # text printed after the caret
    context: str | None = None  # e.g. the layer path "mlp → head (dense)"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.render()

    def render(self, color: bool = False) -> str:
        """The message as a compiler prints it; ``color`` adds ANSI colours (for a terminal).

        The ``=`` of note, context and hint lines stands under the ``|`` of the
        source snippet, whatever the width of the line number."""
        paint = _Paint(color)
        kind = CODES.get(self.code, "error")
        head = paint("error", f"error[{self.code}]") + paint("bold", f": {self.message or kind}")
        out = [head]
        pad = " "
        if self.loc is not None and self.loc.source is not None:
            pad = " " * len(str(self.loc.line))
            out.extend(_snippet(self.loc, self.label, paint))
        elif self.loc is not None and self.loc is not NO_LOC:
            out.append(f"{pad}{paint('margin', '-->')} {self.loc}")
        eq = f"{pad} {paint('margin', '=')}"
        for text, loc in self.notes:
            out.append(f"{eq} {paint('note', 'note')}: {text}" + (f" at {loc}" if loc and loc.source else ""))
        if self.context:
            out.append(f"{eq} {paint('note', 'in')}: {self.context}")
        if self.hint:
            out.append(f"{eq} {paint('hint', 'hint')}: {self.hint}")
        return "\n".join(out)


class _Paint:
    """ANSI styles by role (rustc's palette), or plain text."""

    STYLES = {"error": "1;31", "bold": "1", "margin": "1;34", "caret": "1;31", "note": "1;36", "hint": "1;32"}

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, role: str, text: str) -> str:
        return f"\x1b[{self.STYLES[role]}m{text}\x1b[0m" if self.on and text else text


def _snippet(loc: Loc, label: str | None, paint: _Paint) -> list[str]:
    number = str(loc.line)
    pad = " " * len(number)
    text = loc.source.line(loc.line)
    start = max(loc.col - 1, 0)
    end = loc.end_col - 1 if loc.end_line == loc.line else len(text)
    width = max(end - start, 1)
    caret = ("^" * width + (f" {label}" if label else "")).rstrip()
    lead = "".join("\t" if c == "\t" else " " for c in text[:start])  # a tab stays a tab: the caret lines up
    bar = paint("margin", "|")
    return [
        f"{pad}{paint('margin', '-->')} {loc}",
        f"{pad} {bar}",
        f"{paint('margin', number)} {bar} {text}",
        f"{pad} {bar} {lead}{paint('caret', caret)}",
    ]


class DlcErrors(Exception):
    """Several errors found in one run, reported together."""

    def __init__(self, errors: list[DlcError]):
        self.errors = list(errors)
        super().__init__(self.render())

    def render(self, color: bool = False) -> str:
        return "\n\n".join(e.render(color) for e in self.errors)

    def __str__(self) -> str:
        return self.render()


def suggest(name: str, candidates) -> str | None:
    """A "did you mean" hint for ``name`` among ``candidates``, or None."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None

"""A Pygments lexer for `.dl` files, registered as the ``pygments.lexers`` entry
point ``dl`` (so ``pygmentize -l dl``, Sphinx and MkDocs highlight ``dl`` blocks).
Imported only by Pygments: the compiler never needs Pygments."""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace

from .syntax_errors import KEYWORDS

DTYPES = ("f16", "f32", "f64", "i32", "i64", "bool", "int", "float", "str", "dim")
CONSTANTS = ("true", "false")
SOFT_KEYWORDS = ("over", "steps", "axis", "init", "lengths", "reverse", "step")


class DlLexer(RegexLexer):
    """The `.dl` model language of dlc."""

    name = "dl"
    aliases = ["dl", "dlc"]
    filenames = ["*.dl"]
    mimetypes = ["text/x-dl"]

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r'"(?:[^"\\\n]|\\.)*"', String.Double),
            (r"(layer|model|train|step)(\s+)([A-Za-z_]\w*)",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (r"(input|param|state|output|update)(\s+)([A-Za-z_]\w*)",
             bygroups(Keyword.Declaration, Whitespace, Name.Variable)),
            (words(tuple(sorted(KEYWORDS - set(CONSTANTS))), suffix=r"\b"), Keyword),
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
            (words(DTYPES, suffix=r"\b"), Keyword.Type),
            (words(SOFT_KEYWORDS, prefix=r"(?<=\s)", suffix=r"(?=\s+[^=\s])"), Keyword.Pseudo),  # not `axis = 1`
            (r"[A-Za-z_]\w*(?=\s*\()", Name.Function),
            (r"[A-Za-z_]\w*", Name),
            (r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+", Number.Float),
            (r"[0-9]+", Number.Integer),
            (r"\|>|\*\*|//|==|!=|<=|>=|[-+*/%@<>=]", Operator),
            (r"\.\.\.|[()\[\]{},.:;]", Punctuation),
            (r".", Text),
        ],
    }

"""Program generators for the fuzz tests: the grammar itself (hypothesis ``from_lark``
and a seeded random walk over the same rules, for volume), with tokens drawn from a
vocabulary of real names so many programs get past the parser into the compiler."""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import lark
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark.grammar import NonTerminal, Terminal
from lark.lexer import PatternStr

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "dl.lark"
NAMES = ["x", "y", "h", "m", "W", "b", "B", "T", "I", "units", "dense", "relu", "tanh", "softmax", "sum", "mean",
         "zeros", "ones", "normal", "f32", "i64", "bool", "int", "loss", "cross_entropy", "mse", "transpose",
         "reshape", "concat", "sqrt", "log", "exp", "where", "step", "axis", "over", "init", "reverse", "data",
         "optimizer", "adam", "sgd", "batch", "epochs", "digits", "xor", "cell", "lr", "squeeze", "matmul"]
REGEX_TOKENS = {
    "NAME": NAMES,
    "INT": ["0", "1", "2", "3", "4", "16", "100000000000000000000"],
    "FLOAT": ["0.5", "1.0", "1e-3", "2.5e10", "1e300"],
    "STRING": ['"s"', '"lib/nn.dl"', '"{x}"', '""', '"x.npz"'],
    "COMP_OP": ["==", "!=", "<", "<=", ">", ">="],
    "ADD_OP": ["+", "-"],
    "MUL_OP": ["*", "/", "%", "@"],
    "COMMENT": ["# c"],
    "SEMI": [";"],
    "WS": [" "],
}
SEPARATORS = [" ", " ", " ", "\n", "\t", "\x0c", " # c\n", "\u2028"]


@lru_cache(maxsize=1)
def grammar() -> lark.Lark:
    return lark.Lark(GRAMMAR.read_text(), start="module", parser="lalr", lexer="contextual")


def programs():
    """hypothesis strategy: programs of the grammar, tokens separated by whitespace."""
    explicit = {}
    for t in grammar().terminals:
        if isinstance(t.pattern, PatternStr):
            explicit[t.name] = st.just(f" {t.pattern.value} ")
    for name, choices in REGEX_TOKENS.items():
        explicit[name] = st.sampled_from(choices).map(lambda s: f" {s} ")
    explicit["COMMENT"] = st.just(" # c\n")
    return from_lark(grammar(), explicit=explicit)


@lru_cache(maxsize=1)
def _rules() -> tuple[dict, dict]:
    g = grammar()
    rules: dict[str, list] = {}
    for r in g.rules:
        rules.setdefault(r.origin.name, []).append(r.expansion)
    literal = {t.name: t.pattern.value for t in g.terminals if isinstance(t.pattern, PatternStr)}
    return rules, literal


def random_program(rng: random.Random, max_depth: int = 12) -> str:
    """One program by a random walk over the grammar's rules (shortest expansions once deep)."""
    rules, literal = _rules()
    out: list[str] = []
    stack = [(NonTerminal("module"), 0)]
    while stack:
        sym, depth = stack.pop()
        if isinstance(sym, Terminal):
            out.append(literal.get(sym.name) or rng.choice(REGEX_TOKENS.get(sym.name, ["x"])))
            out.append(rng.choice(SEPARATORS))
            continue
        options = rules[sym.name]
        if depth > max_depth:
            options = [min(options, key=len)]
        expansion = rng.choice(options)
        stack.extend((s, depth + 1) for s in reversed(expansion))
    return "".join(out)

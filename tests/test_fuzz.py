"""Robustness: whatever text comes in, only DlcError / DlcErrors come out.

Random text, random sequences of real tokens, and mutations of the real specs
(lines and characters deleted, duplicated, swapped, inserted) go through the
parser and the whole compiler (lowering in both modes, train-block checks).
A printer round trip over random expression trees checks the printer against
the parser.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlc
from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, DlcErrors
from dlc.grammar.parse import parse
from dlc.grammar.printer import expr as print_expr

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_LIB = Path("specs/lib/nn.dl").read_text(encoding="utf-8")
SPECS = [Path(p).read_text(encoding="utf-8").replace('use "lib/nn.dl"', _LIB)
         for p in sorted(glob.glob("specs/*.dl"))]

TOKENS = [
    # keywords and punctuation
    "use", "const", "layer", "model", "train", "input", "param", "output", "return", "require", "repeat",
    "scan", "over", "axis", "init", "reverse", "step", "and", "or", "not", "true", "false",
    "(", ")", "[", "]", "{", "}", ",", ":", ";", "=", ".", ".*", "|>", "+", "-", "*", "/", "%", "@", "**",
    "==", "!=", "<", "<=", ">", ">=", "\n", "# comment\n",
    # names, numbers, strings, types
    "x", "y", "h", "W", "b", "B", "T", "H", "m", "cell", "dense", "relu", "softmax", "split", "zeros",
    "mean", "cross_entropy", "transpose", "reshape", "concat", "adam", "sgd", "digits", "loss",
    "0", "1", "2", "-1", "3.5", "1e-3", "100000000000000000000", "\"lib/nn.dl\"", "\"s {x}\"",
    "f32", "i64", "bool", "int", "f32[B, 4]", "[B, 4]", "i64[B]",
    # whole snippets
    "model m() {", "layer f(x: f32[B, I]) {", "input x: f32[B, 4]\n", "param W: [4, 3] = zeros()\n",
    "output y = x\n", "return x\n", "h = dense(x, 3)\n", "train m {", "data = digits()\n",
    "loss = loss\n", "optimizer = adam(lr = 0.1)\n", "scan cell over xs axis 1 init (zeros([B, 3]))",
    "repeat 2 dense(x, 4)", "require B > 0 : \"{B}\"\n", "x[:, 1:3, ::2]", "x |> relu", "h.0.W", "D.*",
]


def _compile_everything(text: str) -> None:
    """Parse, then compile every model of ``text`` in both modes and check its train block."""
    try:
        parse(text)
    except (DlcError, DlcErrors):
        return
    models = re.findall(r"^model\s+([A-Za-z_]\w*)", text, re.M) or [None]
    for k, name in enumerate(models[:2]):
        for mode in ("train", "eval")[:2 if k == 0 else 1]:
            try:
                m = dlc.compile(text, mode=mode, model=name)
                if mode == "train":
                    m.check_train()
            except (DlcError, DlcErrors) as e:
                e.render()  # rendering must not fail either


def _must_not_crash(text: str) -> None:
    try:
        _compile_everything(text)
    except (DlcError, DlcErrors):
        pass


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    _must_not_crash(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.sampled_from([" ", "", "\n"]))
def test_random_token_sequences(tokens, sep):
    _must_not_crash(sep.join(tokens))


@st.composite
def mutated_spec(draw):
    text = SPECS[draw(st.integers(0, len(SPECS) - 1))]  # an index: sampling the texts makes a huge repr
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        kind = draw(st.sampled_from(["del_line", "dup_line", "swap_lines", "del_char", "dup_char",
                                     "swap_chars", "insert_token", "replace_token"]))
        if kind.endswith(("line", "lines")):
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "del_line":
                del lines[i]
            elif kind == "dup_line":
                lines.insert(i, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif text:
            i = draw(st.integers(0, len(text) - 1))
            if kind == "del_char":
                text = text[:i] + text[i + 1:]
            elif kind == "dup_char":
                text = text[:i] + text[i] + text[i:]
            elif kind == "swap_chars" and i + 1 < len(text):
                text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
            elif kind == "insert_token":
                text = text[:i] + " " + draw(st.sampled_from(TOKENS)) + " " + text[i:]
            else:  # replace a word by a token
                words = list(re.finditer(r"\w+", text))
                w = words[draw(st.integers(0, len(words) - 1))]
                text = text[:w.start()] + draw(st.sampled_from(TOKENS)) + text[w.end():]
    return text


@FUZZ
@given(mutated_spec())
def test_mutated_specs(text):
    _must_not_crash(text)


def test_the_unmutated_specs_compile():
    """The fuzzers' starting points are valid: every model of every spec compiles in both modes and its
    train block builds (any DlcError fails this test; `_compile_everything` would swallow it)."""
    for text in SPECS:
        parse(text)
        for name in re.findall(r"^model\s+([A-Za-z_]\w*)", text, re.M):
            dlc.compile(text, model=name)
            dlc.compile(text, mode="train", model=name).check_train()


# -- printer ∘ parser on random expression trees -------------------------------------------
_KEYWORDS = {"use", "const", "layer", "model", "train", "input", "param", "output", "return", "require",
             "repeat", "scan", "over", "and", "or", "not", "true", "false"}
names = st.from_regex(r"[A-Za-z_][A-Za-z_0-9]{0,5}", fullmatch=True).filter(lambda s: s not in _KEYWORDS)
numbers = st.one_of(st.integers(-10**6, 10**6),
                    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)))
leaves = st.one_of(names.map(A.Name), numbers.map(A.Number), st.booleans().map(A.Bool),
                   st.text(max_size=5).filter(lambda s: "\r" not in s).map(A.String))
BINOPS = ["+", "-", "*", "/", "%", "@", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or"]


def _compound(children):
    callee = st.one_of(names.map(A.Name), st.tuples(names.map(A.Name), names).map(lambda t: A.Attribute(*t)))
    kwargs = st.lists(st.tuples(names, children), max_size=2, unique_by=lambda kv: kv[0]).map(
        lambda kvs: tuple(A.Keyword(k, v) for k, v in kvs))
    maybe = st.one_of(st.none(), children)
    return st.one_of(
        st.tuples(st.sampled_from(BINOPS), children, children).map(lambda t: A.BinOp(*t)),
        children.filter(lambda c: not isinstance(c, A.Number)).map(lambda c: A.UnaryOp("-", c)),
        children.map(lambda c: A.UnaryOp("not", c)),
        st.tuples(callee, st.lists(children, max_size=3).map(tuple), kwargs).map(lambda t: A.Call(*t)),
        st.tuples(names.map(A.Name), st.one_of(names, st.integers(0, 9).map(str), st.just("*"))).map(
            lambda t: A.Attribute(*t)),
        st.tuples(children, st.lists(st.one_of(children, st.tuples(maybe, maybe, maybe).map(
            lambda t: A.Slice(*t))), min_size=1, max_size=3).map(tuple)).map(lambda t: A.Index(*t)),
        st.lists(children, max_size=3).map(lambda xs: A.ListExpr(tuple(xs))),
        st.lists(children, max_size=3).map(lambda xs: A.TupleExpr(tuple(xs))),
        st.tuples(st.one_of(names.map(A.Name), st.integers(0, 9).map(A.Number)), names.map(A.Name),
                  st.lists(children, max_size=2).map(tuple), kwargs).map(lambda t: A.Repeat(*t)),
        st.tuples(names.map(A.Name), kwargs, st.one_of(names.map(A.Name),
                                                       st.lists(children, min_size=2, max_size=3).map(
                                                           lambda xs: A.TupleExpr(tuple(xs)))),
                  st.one_of(st.none(), st.integers(-3, 3).map(A.Number)), st.lists(children, max_size=2).map(tuple),
                  st.booleans()).map(lambda t: A.Scan(*t)),
    )


# deferred rather than st.recursive: the same trees, without a strategy repr of tens of kilobytes
expressions = st.deferred(lambda: st.one_of(leaves, leaves, _compound(expressions)))


@FUZZ
@given(expressions)
def test_printer_round_trips_random_expressions(e):
    text = print_expr(e)
    parsed = parse(f"model m() {{\n    y = {text}\n}}\n").decls[0].body[0].value
    assert parsed == e, text

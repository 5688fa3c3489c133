"""The parser: every spec parses, the printer round-trips, precedence is as
documented, and syntax errors are E0001 with a position and useful words."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError
from dlc.grammar.parse import parse
from dlc.grammar.printer import expr as print_expr
from dlc.grammar.printer import unparse

SPECS = sorted(glob.glob("specs/**/*.dl", recursive=True))


def test_there_are_specs():
    assert len(SPECS) >= 5 and "specs/lib/nn.dl" in SPECS


@pytest.mark.parametrize("path", SPECS)
def test_every_spec_parses_and_round_trips(path):
    text = Path(path).read_text(encoding="utf-8")
    m = parse(text, path)
    assert isinstance(m, A.Module) and m.decls
    printed = unparse(m)
    assert parse(printed) == m
    assert unparse(parse(printed)) == printed  # the canonical form is a fixed point


# -- tricky snippets ------------------------------------------------------------------
def _model(*stmts: str) -> str:
    return "model m() {\n" + "".join(f"    {s}\n" for s in stmts) + "}\n"


SNIPPETS = {
    "pipeline": _model("y = x |> dense(3) |> relu"),
    "neg_power": _model("y = -x ** 2"),
    "slices": _model("y = x[:, 1:3, ::2]", "z = x[0, -1:, :T-1, 1::2, ::-1]"),
    "param_path": _model("w = h.0.W", "e = transpose(embed.E)"),
    "glob_in_train": "train gan {\n    step d { loss = d_loss; params = D.*; every = 1 }\n"
                     "    step g { loss = g_loss; params = [G.*, h.0.*] }\n}\n",
    "scan_all_clauses": _model("hs, h, c = scan cell(k = 2, axis = 3) over xs axis 1 "
                               "init (zeros([B, H]), zeros([B, H])) reverse"),
    "scan_tuple_over": _model("ys, h = scan cell over (xs, ms) axis -1 init (h0)"),
    "scan_minimal": _model("ys = scan cell over xs"),
    "repeat": _model("h = repeat layers block(x, heads = 4, ffn = 4*width)", "g = repeat 2 blk(x)",
                     "k = repeat (n + 1) blk(x)"),
    "require": "layer a(x: f32[B, T, D], heads: int) {\n"
               "    require D % heads == 0 : \"model dim {D} is not divisible by heads = {heads}\"\n"
               "    require heads > 0\n    return x\n}\n",
    "destructuring": _model("i, f, g, o = split(z, 4, axis = -1)"),
    "comments": "# header\nmodel m() { # opening\n    # a whole line\n    y = x # trailing\n} # end\n# tail",
    "semicolons": "model m() { input x: f32[B, 4]; y = relu(x); output y; };\nconst k = 3;",
    "keyword_kwargs": _model("y = f(x, axis = 1, over = 2, init = 3, reverse = 4, step = 5)",
                             "axis = 1", "init = zeros([B])", "over = x", "reverse = y", "step = 2"),
    "literals": _model("a = [1, 2.5, 1e-3, 3E+2, true, false, \"s\\\"q\\\\\"]", "b = ()", "c = (x,)",
                       "d = (x, y,)", "e = [x,]"),
    "logic": _model("a = not x and y or z != 3", "b = x <= 1 and x >= 0"),
    "declarations": "use \"lib/nn.dl\"\nconst classes = 10\n"
                    "layer f(x: f32[B, I], units: int = 3, act = identity, s: str = \"a\") { return act(x) }\n"
                    "model m(hidden: int = 64) {\n    input x: f32[B, 4*H, H/2, T-1]\n    input y: i64[B]\n"
                    "    param W: [I, units] = he_normal()\n    param b: f64[3]\n    output y2\n"
                    "    output loss = cross_entropy(x, y)\n}\n"
                    "train m {\n    data = digits(split = [0.7, 0.1, 0.2], seed = 0)\n"
                    "    optimizer = adam(lr = 3e-3)\n    early_stop = patience(8, monitor = val.loss)\n}\n",
    "model_without_parens": "model m { input x: f32[B]\n output y = x }",
    "trailing_commas": "layer f(x: f32[B, I,], k: int,) { return g(x, k,) }",
}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippets_round_trip(name):
    m = parse(SNIPPETS[name])
    printed = unparse(m)
    assert parse(printed) == m, printed
    assert unparse(parse(printed)) == printed


def _value(text: str):
    """The right side of the single binding `y = <text>`."""
    m = parse(_model(f"y = {text}"))
    return m.decls[0].body[0].value


N = A.Name


def test_pipeline_desugars_into_calls():
    assert _value("x |> dense(3) |> relu") == A.Call(N("relu"), (A.Call(N("dense"), (N("x"), A.Number(3))),))
    assert _value("x |> layers.f") == A.Call(A.Attribute(N("layers"), "f"), (N("x"),))


@pytest.mark.parametrize("text, tree", [
    ("a + b * c", A.BinOp("+", N("a"), A.BinOp("*", N("b"), N("c")))),
    ("a * b + c", A.BinOp("+", A.BinOp("*", N("a"), N("b")), N("c"))),
    ("a @ b + c", A.BinOp("+", A.BinOp("@", N("a"), N("b")), N("c"))),
    ("a - b - c", A.BinOp("-", A.BinOp("-", N("a"), N("b")), N("c"))),
    ("a ** b ** c", A.BinOp("**", N("a"), A.BinOp("**", N("b"), N("c")))),
    ("-x ** 2", A.UnaryOp("-", A.BinOp("**", N("x"), A.Number(2)))),
    ("2 ** -1", A.BinOp("**", A.Number(2), A.Number(-1))),
    ("-3", A.Number(-3)),
    ("a + b == c * d", A.BinOp("==", A.BinOp("+", N("a"), N("b")), A.BinOp("*", N("c"), N("d")))),
    ("not a and b or c", A.BinOp("or", A.BinOp("and", A.UnaryOp("not", N("a")), N("b")), N("c"))),
    ("a or b and c", A.BinOp("or", N("a"), A.BinOp("and", N("b"), N("c")))),
    ("(a |> f(b)) + c", A.BinOp("+", A.Call(N("f"), (N("a"), N("b"))), N("c"))),
    ("a |> f(b + c)", A.Call(N("f"), (N("a"), A.BinOp("+", N("b"), N("c"))))),
    ("-h.W[0]", A.UnaryOp("-", A.Index(A.Attribute(N("h"), "W"), (A.Number(0),)))),
    ("x[1:]", A.Index(N("x"), (A.Slice(A.Number(1), None, None),))),
    ("x[::2]", A.Index(N("x"), (A.Slice(None, None, A.Number(2)),))),
    ("+x", N("x")),
])
def test_precedence(text, tree):
    assert _value(text) == tree


def test_pipe_into_an_expression_is_an_error():
    # `|>` binds loosest: `a |> f(b) + c` pipes into `f(b) + c`, which is not a callee
    with pytest.raises(DlcError) as e:
        parse(_model("y = a |> f(b) + c"))
    assert e.value.code == "E0001" and "|>" in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (2, 14)


def test_printer_parenthesises_what_precedence_needs():
    assert print_expr(_value("-x ** 2")) == "(-(x ** 2))"
    assert print_expr(_value("(a + b) * c")) == "((a + b) * c)"
    assert print_expr(_value("f(-1, axis = -1)")) == "f((-1), axis = (-1))"


def test_ast_equality_ignores_locations():
    a = parse("model m() { y = relu(x) }")
    b = parse("\n\n   model    m ( )\n{\n  y=relu( x )\n\n}\n")
    assert a == b
    assert a.decls[0].body[0].loc.line != b.decls[0].body[0].loc.line


def test_locations_are_one_based_and_exact():
    m = parse(_model("y = x @ W"))
    value = m.decls[0].body[0].value
    assert (value.loc.line, value.loc.col, value.loc.end_col) == (2, 9, 14)
    assert (value.right.loc.line, value.right.loc.col) == (2, 13)


def test_keywords_stay_usable_as_names():
    m = parse(SNIPPETS["keyword_kwargs"])
    targets = [s.targets[0] for s in m.decls[0].body]
    assert targets == ["y", "axis", "init", "over", "reverse", "step"]
    call = m.decls[0].body[0].value
    assert [k.name for k in call.kwargs] == ["axis", "over", "init", "reverse", "step"]


def test_scan_clauses():
    s = parse(SNIPPETS["scan_all_clauses"]).decls[0].body[0].value
    assert isinstance(s, A.Scan) and s.callee == N("cell") and s.reverse
    assert [k.name for k in s.kwargs] == ["k", "axis"] and s.axis == A.Number(1) and len(s.init) == 2
    t = parse(SNIPPETS["scan_tuple_over"]).decls[0].body[0].value
    assert t.over == A.TupleExpr((N("xs"), N("ms"))) and t.axis == A.Number(-1) and not t.reverse


def test_require_message_and_train_globs():
    req = parse(SNIPPETS["require"]).decls[0].body[0]
    assert req.message == "model dim {D} is not divisible by heads = {heads}"
    train = parse(SNIPPETS["glob_in_train"]).decls[0]
    d = train.items[0]
    assert isinstance(d, A.StepGroup) and d.name == "d"
    assert d.items[1].value == A.Attribute(N("D"), "*")


# -- syntax errors --------------------------------------------------------------------
def _error(text: str) -> DlcError:
    with pytest.raises(DlcError) as e:
        parse(text, "t.dl")
    return e.value


@pytest.mark.parametrize("text, code, line, col, words", [
    (_model("y = dense(x 3)"), "E0001", 2, 17, ["unexpected number `3`", "`,`", "missing"]),
    (_model("h := relu(x)"), "E0001", 2, 7, ["unexpected", "`:=`"]),
    # an unclosed bracket is reported at the bracket, with where parsing stopped
    ("model m() {\n    input x: f32[B, 4]\n    output y = relu(x)\n", "E0001", 1, 11,
     ["unclosed `{`", "unclosed delimiter", "the file ends at t.dl:3:23", "expected", "`}`"]),
    (_model("h = relu(x", "output y = h"), "E0001", 2, 13,
     ["unclosed `(`", "parsing stopped at t.dl:3:5", "close it with `)`"]),
    (_model("w = [x, x", "output y = h"), "E0001", 2, 9, ["unclosed `[`", "parsing stopped at t.dl:3:5"]),
    ("modle m() {\n    input x: f32[B, 4]\n}\n", "E0001", 1, 1, ["name `modle`", "did you mean `model`?"]),
    (_model("retrun x"), "E0001", 2, 12, ["did you mean `return`?"]),
    (_model("y = f(x, mode = 'a')"), "E0001", 2, 21, ["unexpected character", "double quotes"]),
    ("def f(x) {\n    return x\n}\n", "E0001", 1, 1, ["name `def`", "`layer`", "layer NAME(args)"]),
    ("layer f {\n    return x\n}\n", "E0001", 1, 9, ["unexpected `{`", "`(`", "parameter list"]),
    (_model("y = f(\"abc"), "E0001", 2, 11, ["unterminated string"]),
    (_model("let h = x"), "E0001", 2, 9, ["name `h`", "need no keyword"]),
    (_model("input x", "output y = x"), "E0001", 3, 5, ["expected `:`", "need a type"]),
    (_model("a = b = c"), "E0001", 2, 11, ["unexpected `=`", "`==`"]),
    (_model("a = [1 2]"), "E0001", 2, 12, ["number `2`", "missing"]),
    (_model("y = f(a = 1, x)"), "E0001", 2, 18, ["positional argument follows a keyword"]),
    (_model("y = f(a = 1, a = 2)"), "E0102", 2, 18, ["`a` is given twice"]),
    (_model("input x: int"), "E0001", 2, 14, ["tensor type", "`int`"]),
    (_model("output = x"), "E0001", 2, 12, ["unexpected `=`", "a name"]),
    (_model("y = x $ 2"), "E0001", 2, 11, ["unexpected character '$'"]),
    ("train t {\n    stp d { loss = l }\n}\n", "E0001", 2, 5, ["name `stp`", "did you mean `step`"]),
    # an unknown dtype is reported by the parser, as a type error
    (_model("input x: f33[3]"), "E0103", 2, 14, ["unknown dtype `f33`", "f32"]),
])
def test_syntax_errors(text, code, line, col, words):
    err = _error(text)
    assert err.code == code
    assert (err.loc.path, err.loc.line, err.loc.col) == ("t.dl", line, col), err.render()
    rendered = err.render()
    for w in words:
        assert w in rendered, f"{w!r} not in:\n{rendered}"
    assert f"--> t.dl:{line}:{col}" in rendered


def test_syntax_error_renders_the_line_and_a_caret():
    err = _error(_model("y = dense(x 3)"))
    assert err.render().splitlines()[1:4] == [
        " --> t.dl:2:17",
        "  |",
        "2 |     y = dense(x 3)",
    ]
    assert err.render().splitlines()[4] == "  |                 ^"


def test_deep_nesting_is_a_limit_error_not_a_crash():
    err = _error(_model("y = " + "-" * 5000 + "x"))
    assert err.code == "E0003" and err.loc.line == 2
    err = _error(_model("y = x" + " + x" * 5000))
    assert err.code == "E0003"


def test_empty_and_comment_only_files_parse():
    assert parse("") == A.Module(())
    assert parse("# nothing here\n\n") == A.Module(())

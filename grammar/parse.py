"""Text → AST.  ``parse(text, path)`` returns a :class:`~dlc.grammar.ast.Module`
or raises a :class:`DlcError` (E0001) that points at the offending token,
says what was expected in words, and adds a hint for common mistakes.

The grammar (``dl.lark``) is compiled once per process (its tables cached across
processes, see ``parser_cache.py``); pipelines
(``x |> f(a)``) are desugared here into calls (``f(x, a)``), so later stages
never see them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast as A
from .errors import DlcError, Loc, Source
from .parser_cache import cache_file
from .syntax_errors import syntax_error as _syntax_error

MAX_SOURCE_CHARS = 2_000_000
MAX_NESTING = 256  # open brackets at once: deeper is never written by hand, and costs the parser dearly
_OPEN, _CLOSE = "([{", ")]}"
_DTYPES = {"f16", "f32", "f64", "i32", "i64", "bool"}


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
        return _ToAst(source).transform(tree)
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


# -- tree → AST --------------------------------------------------------------------
def _opt(items):
    return tuple(i for i in items if i is not None)


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _loc(self, meta) -> Loc:
        if getattr(meta, "empty", True) and not hasattr(meta, "line"):
            return Loc(self.source, 1, 1, 1, 1)
        return Loc(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_loc(self, tok: Token) -> Loc:
        return Loc(self.source, tok.line, tok.column, tok.end_line, tok.end_column)

    # declarations
    def module(self, meta, items):
        return A.Module(tuple(items), loc=self._loc(meta))

    def use(self, meta, items):
        return A.Use(_unquote(items[0]), loc=self._loc(meta))

    def const(self, meta, items):
        return A.Const(str(items[0]), items[1], loc=self._loc(meta))

    def layer(self, meta, items):
        name, formals, body = items
        return A.LayerDef(str(name), formals, body, loc=self._tok_loc(name))

    def model(self, meta, items):
        name, formals, body = items
        return A.ModelDef(str(name), formals or (), body, loc=self._tok_loc(name))

    def train(self, meta, items):
        return A.TrainDef(str(items[0]), tuple(items[1:]), loc=self._tok_loc(items[0]))

    def formals(self, meta, items):
        return _opt(items)

    def formal(self, meta, items):
        name, typ, default = items
        return A.Formal(str(name), typ, default, loc=self._loc(meta))

    def block(self, meta, items):
        return tuple(items)

    def input(self, meta, items):
        name, typ = items
        return A.InputDecl(str(name), self._tensor_type(typ, "input"), loc=self._loc(meta))

    def param(self, meta, items):
        name, typ, init = items
        return A.ParamDecl(str(name), self._tensor_type(typ, "param"), init, loc=self._loc(meta))

    def state(self, meta, items):
        name, typ, init = items
        return A.StateDecl(str(name), self._tensor_type(typ, "state"), init, loc=self._loc(meta))

    def update(self, meta, items):
        return A.Update(str(items[0]), items[1], loc=self._loc(meta))

    def _tensor_type(self, typ, what: str) -> A.TensorTypeExpr:
        if isinstance(typ, A.TensorTypeExpr):
            return typ
        raise DlcError("E0001", f"an {what} needs a tensor type, got `{typ.name}`", typ.loc,
                       hint=f"for example `{what} x: f32[B, 4]`")

    def output(self, meta, items):
        return A.OutputDecl(str(items[0]), items[1], loc=self._loc(meta))

    def binding(self, meta, items):
        return A.Binding(items[0], items[1], loc=self._loc(meta))

    def targets(self, meta, items):
        return tuple(str(t) for t in items)

    def ret(self, meta, items):
        return A.Return(tuple(items), loc=self._loc(meta))

    def require(self, meta, items):
        cond, msg = items
        return A.Require(cond, _unquote(msg) if msg is not None else None, loc=self._loc(meta))

    def train_item(self, meta, items):
        return A.TrainItem(str(items[0]), items[1], loc=self._loc(meta))

    def step(self, meta, items):
        word, name = items[0], items[1]
        if str(word) != "step":
            raise DlcError("E0001", f"unexpected name `{word}`; expected a `key = value` item or "
                           "`step NAME { ... }`", self._tok_loc(word), hint="did you mean `step`?")
        return A.StepGroup(str(name), tuple(items[2:]), loc=self._loc(meta))

    # types
    def tensor_type(self, meta, items):
        dtype, dims = items
        if str(dtype) not in _DTYPES:
            raise DlcError("E0103", f"unknown dtype `{dtype}`", self._tok_loc(dtype),
                           hint="dtypes are " + ", ".join(sorted(_DTYPES)))
        return A.TensorTypeExpr(str(dtype), dims, loc=self._loc(meta))

    def tensor_type_nodtype(self, meta, items):
        return A.TensorTypeExpr(None, items[0], loc=self._loc(meta))

    def scalar_type(self, meta, items):
        return A.ScalarTypeExpr(str(items[0]), loc=self._loc(meta))

    def dims(self, meta, items):
        return _opt(items)

    # expressions
    def pipe(self, meta, items):
        value, fn = items
        loc = self._loc(meta)
        if isinstance(fn, A.Call):
            return A.Call(fn.func, (value,) + fn.args, fn.kwargs, loc=loc)
        if isinstance(fn, (A.Name, A.Attribute)):
            return A.Call(fn, (value,), (), loc=loc)
        raise DlcError("E0001", "the right side of `|>` must be a layer or op, optionally called",
                       fn.loc, hint="write `x |> dense(64)` or `x |> relu`")

    def or_expr(self, meta, items):
        return A.BinOp("or", items[0], items[1], loc=self._loc(meta))

    def and_expr(self, meta, items):
        return A.BinOp("and", items[0], items[1], loc=self._loc(meta))

    def not_(self, meta, items):
        return A.UnaryOp("not", items[0], loc=self._loc(meta))

    def compare(self, meta, items):
        return A.BinOp(str(items[1]), items[0], items[2], loc=self._loc(meta))

    def binop(self, meta, items):
        return A.BinOp(str(items[1]), items[0], items[2], loc=self._loc(meta))

    def neg(self, meta, items):
        operand = items[0]
        if isinstance(operand, A.Number):  # fold so `-1` is a literal (axes, dims)
            return A.Number(-operand.value, loc=self._loc(meta))
        return A.UnaryOp("-", operand, loc=self._loc(meta))

    def pos(self, meta, items):
        return items[0]

    def power(self, meta, items):
        return A.BinOp("**", items[0], items[1], loc=self._loc(meta))

    def call(self, meta, items):
        func, (args, kwargs) = items
        return A.Call(func, args, kwargs, loc=self._loc(meta))

    def args(self, meta, items):
        args, kwargs, seen = [], [], set()
        for item in _opt(items):
            if isinstance(item, A.Keyword):
                if item.name in seen:
                    raise DlcError("E0102", f"the argument `{item.name}` is given twice", item.loc)
                seen.add(item.name)
                kwargs.append(item)
            elif kwargs:
                raise DlcError("E0001", "a positional argument follows a keyword argument", item.loc,
                               hint="put positional arguments first")
            else:
                args.append(item)
        return tuple(args), tuple(kwargs)

    def kwarg(self, meta, items):
        return A.Keyword(str(items[0]), items[1], loc=self._loc(meta))

    def index(self, meta, items):
        return A.Index(items[0], items[1], loc=self._loc(meta))

    def subscripts(self, meta, items):
        return _opt(items)

    def slice2(self, meta, items):
        return A.Slice(items[0], items[1], None, loc=self._loc(meta))

    def ellipsis(self, meta, items):
        return A.Ellipsis_(loc=self._loc(meta))

    def slice3(self, meta, items):
        return A.Slice(items[0], items[1], items[2], loc=self._loc(meta))

    def attribute(self, meta, items):
        return A.Attribute(items[0], str(items[1]), loc=self._loc(meta))

    def glob(self, meta, items):
        return A.Attribute(items[0], "*", loc=self._loc(meta))

    def name(self, meta, items):
        text = str(items[0])
        return A.Name(text, loc=self._loc(meta))

    name_atom = name

    def int(self, meta, items):
        return A.Number(int(items[0]), loc=self._loc(meta))

    int_atom = int

    def float(self, meta, items):
        return A.Number(float(items[0]), loc=self._loc(meta))

    def string(self, meta, items):
        return A.String(_unquote(items[0]), loc=self._loc(meta))

    def true(self, meta, items):
        return A.Bool(True, loc=self._loc(meta))

    def false(self, meta, items):
        return A.Bool(False, loc=self._loc(meta))

    def list(self, meta, items):
        return A.ListExpr(_opt(items), loc=self._loc(meta))

    def empty_tuple(self, meta, items):
        return A.TupleExpr((), loc=self._loc(meta))

    def tuple(self, meta, items):
        return A.TupleExpr(_opt(items), loc=self._loc(meta))

    def repeat(self, meta, items):
        count, callee, (args, kwargs) = items
        return A.Repeat(count, A.Name(str(callee), loc=self._tok_loc(callee)), args, kwargs, loc=self._loc(meta))

    def over_name(self, meta, items):
        return A.Name(str(items[0]), loc=self._loc(meta))

    def over_tuple(self, meta, items):
        return A.TupleExpr(_opt(items), loc=self._loc(meta))

    def scan_axis(self, meta, items):
        return A.Number(int(items[0]), loc=self._loc(meta))

    def scan_axis_neg(self, meta, items):
        return A.Number(-int(items[0]), loc=self._loc(meta))

    def scan_lengths(self, meta, items):
        return items[0]

    def scan_steps(self, meta, items):
        return ("steps", items[0])

    def scan(self, meta, items):
        callee, args, over, _axis_kw, axis, _init_kw, init, _lengths_kw, lengths, reverse = items
        steps = None
        if isinstance(over, tuple) and len(over) == 2 and over[0] == "steps":
            over, steps = None, over[1]
        pos, kwargs = args if args is not None else ((), ())
        if pos:
            raise DlcError("E0102", "arguments of a scanned layer must be given by keyword", pos[0].loc,
                           hint="the carried state comes from `init (...)` and the sequence from `over`")
        init_args = ()
        if init is not None:
            init_args, init_kw = init
            if init_kw:
                raise DlcError("E0102", "`init (...)` takes the initial carries positionally", init_kw[0].loc)
        axis_expr = axis
        return A.Scan(A.Name(str(callee), loc=self._tok_loc(callee)), kwargs, over, axis_expr, init_args,
                      reverse is not None, loc=self._loc(meta), steps=steps, lengths=lengths)


def _unquote(tok) -> str:
    import re

    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), str(tok)[1:-1])

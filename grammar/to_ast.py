"""Lark parse tree → AST (:class:`ToAst`).  Every node gets a :class:`Loc`; pipelines
(``x |> f(a)``) become calls (``f(x, a)``) and ``-1`` folds into a literal, so later
stages never see them; dtype names and argument order are checked here (E0001/E0102/E0103).
"""
from __future__ import annotations

from lark import Token, Transformer, v_args

from . import ast as A
from .errors import DlcError, Loc, Source

_DTYPES = {"f16", "f32", "f64", "i32", "i64", "bool"}


def _opt(items):
    return tuple(i for i in items if i is not None)


@v_args(meta=True)
class ToAst(Transformer):
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

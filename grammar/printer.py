"""AST → canonical `.dl` text.  ``parse(unparse(m))`` equals ``m`` (locations
aside): the round-trip the parser tests rely on.  Expressions are fully
parenthesised where precedence could matter, so the output is unambiguous
rather than pretty."""
from __future__ import annotations

from . import ast as A


def unparse(module: A.Module) -> str:
    return "\n".join(_decl(d) for d in module.decls) + "\n"


def _decl(d) -> str:
    if isinstance(d, A.Use):
        return f"use {_str(d.path)}"
    if isinstance(d, A.Const):
        return f"const {d.name} = {expr(d.value)}"
    if isinstance(d, A.LayerDef):
        return f"layer {d.name}({_formals(d.formals)}) {{\n{_body(d.body)}}}"
    if isinstance(d, A.ModelDef):
        return f"model {d.name}({_formals(d.formals)}) {{\n{_body(d.body)}}}"
    if isinstance(d, A.TrainDef):
        return f"train {d.model} {{\n" + "".join(f"    {_item(i)}\n" for i in d.items) + "}"
    raise TypeError(type(d))


def _item(i) -> str:
    if isinstance(i, A.StepGroup):
        return f"step {i.name} {{ " + "; ".join(_item(x) for x in i.items) + " }"
    return f"{i.key} = {expr(i.value)}"


def _formals(formals) -> str:
    out = []
    for f in formals:
        text = f.name
        if f.type is not None:
            text += f": {_type(f.type)}"
        if f.default is not None:
            text += f" = {expr(f.default)}"
        out.append(text)
    return ", ".join(out)


def _type(t) -> str:
    if isinstance(t, A.ScalarTypeExpr):
        return t.name
    return (t.dtype or "") + "[" + ", ".join(expr(d) for d in t.dims) + "]"


def _body(stmts) -> str:
    return "".join(f"    {_stmt(s)}\n" for s in stmts)


def _stmt(s) -> str:
    if isinstance(s, A.InputDecl):
        return f"input {s.name}: {_type(s.type)}"
    if isinstance(s, A.StateDecl):
        return f"state {s.name}: {_type(s.type)}" + (f" = {expr(s.init)}" if s.init is not None else "")
    if isinstance(s, A.Update):
        return f"update {s.name} = {expr(s.value)}"
    if isinstance(s, A.ParamDecl):
        return f"param {s.name}: {_type(s.type)}" + (f" = {expr(s.init)}" if s.init is not None else "")
    if isinstance(s, A.OutputDecl):
        return f"output {s.name}" + (f" = {expr(s.value)}" if s.value is not None else "")
    if isinstance(s, A.Binding):
        return f"{', '.join(s.targets)} = {expr(s.value)}"
    if isinstance(s, A.Return):
        return "return " + ", ".join(expr(v) for v in s.values)
    if isinstance(s, A.Require):
        return f"require {expr(s.cond)}" + (f" : {_str(s.message)}" if s.message is not None else "")
    raise TypeError(type(s))


def _str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _args(args, kwargs) -> str:
    return ", ".join([expr(a) for a in args] + [f"{k.name} = {expr(k.value)}" for k in kwargs])


def expr(e) -> str:
    """One expression as source text."""
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Number):
        text = repr(e.value)
        return f"({text})" if e.value < 0 else text
    if isinstance(e, A.String):
        return _str(e.value)
    if isinstance(e, A.Bool):
        return "true" if e.value else "false"
    if isinstance(e, A.BinOp):
        return f"({expr(e.left)} {e.op} {expr(e.right)})"
    if isinstance(e, A.UnaryOp):
        return f"(not {expr(e.operand)})" if e.op == "not" else f"(-{expr(e.operand)})"
    if isinstance(e, A.Call):
        return f"{expr(e.func)}({_args(e.args, e.kwargs)})"
    if isinstance(e, A.Attribute):
        return f"{expr(e.value)}.{e.attr}"
    if isinstance(e, A.Index):
        return f"{expr(e.value)}[{', '.join(_subscript(i) for i in e.items)}]"
    if isinstance(e, A.ListExpr):
        return "[" + ", ".join(expr(i) for i in e.items) + "]"
    if isinstance(e, A.TupleExpr):
        inner = ", ".join(expr(i) for i in e.items)
        return f"({inner},)" if len(e.items) == 1 else f"({inner})"
    if isinstance(e, A.Repeat):
        return f"(repeat {expr(e.count)} {e.callee.id}({_args(e.args, e.kwargs)}))"
    if isinstance(e, A.Scan):
        text = f"scan {e.callee.id}"
        if e.kwargs:
            text += f"({_args((), e.kwargs)})"
        if e.steps is not None:
            text += f" steps {_over(e.steps)}"
        else:
            text += f" over {_over(e.over)}"
        if e.axis is not None:
            text += f" axis {e.axis.value}"
        if e.init:
            text += f" init ({_args(e.init, ())},)"
        if e.lengths is not None:
            text += f" lengths {_over(e.lengths)}"
        if e.reverse:
            text += " reverse"
        return f"({text})"
    raise TypeError(type(e))


def _over(e) -> str:
    """A scan's sequence, steps or lengths: postfix forms bare, anything else parenthesised."""
    bare = (A.Name, A.TupleExpr, A.Call, A.Index, A.Attribute, A.BinOp, A.UnaryOp)  # the last two print in ( )
    if isinstance(e, A.Number):
        return expr(e)
    return expr(e) if isinstance(e, bare) else "(" + expr(e) + ")"


def _subscript(i) -> str:
    if isinstance(i, A.Ellipsis_):
        return "..."
    if isinstance(i, A.Slice):
        parts = [expr(p) if p is not None else "" for p in (i.start, i.stop)]
        text = ":".join(parts)
        return text + (f":{expr(i.step)}" if i.step is not None else "")
    return expr(i)

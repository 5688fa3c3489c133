"""Spec files → module environments → model graphs.

``load_module`` parses a file and its ``use`` imports (relative to the
importing file, never escaping the top spec's folder, no cycles).
``compile_model`` lowers one model in one mode (``train`` or ``eval``) into a
:class:`Lowered`: the typed graph plus the declarations around it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest
from dlc.grammar.parse import MAX_SOURCE_CHARS, parse, parse_file

from ..builder import Builder
from ..dims import Sym
from ..graph import Graph, Value
from ..types import TensorType
from .decls import tensor_shape
from .frame import Ctx, Frame, LayerRef, ModuleEnv, OpRef, describe, is_tensor
from .layers import check_scalar, run_body

MAX_IMPORT_DEPTH = 32
RECURSION_LIMIT = 20_000


@dataclass
class Loaded:
    """A parsed spec with its imports resolved."""

    path: str
    module: A.Module
    env: ModuleEnv
    models: dict[str, A.ModelDef] = field(default_factory=dict)
    trains: dict[str, A.TrainDef] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # texts of every file, for the spec hash
    imported: set = field(default_factory=set)  # resolved paths already brought in (diamonds are fine)


@dataclass
class Lowered:
    graph: Graph
    model: A.ModelDef
    mode: str
    hyper: dict
    inputs: dict[str, TensorType]
    outputs: dict[str, TensorType]


def load_module(path: str | None = None, text: str | None = None) -> Loaded:
    """Parse the spec at ``path`` (or ``text``) and everything it ``use``s."""
    if text is None:
        module = parse_file(path)
        text = Path(path).read_text(encoding="utf-8-sig")
    else:
        module = parse(text, path or "<string>")
    root = Path(path).resolve().parent if path else Path.cwd().resolve()
    loaded = Loaded(path or "<string>", module, ModuleEnv(path or "<string>"), sources=[text])
    _fill(loaded, module, loaded.env, root, Path(path).resolve() if path else None, [])
    return loaded


def _fill(loaded: Loaded, module: A.Module, env: ModuleEnv, root: Path, here: Path | None, stack: list) -> None:
    for d in module.decls:
        if isinstance(d, A.Use):
            _import(loaded, d, env, root, here, stack)
    for d in module.decls:
        if isinstance(d, A.LayerDef):
            _add(env.layers, d.name, LayerRef(d, env), d.loc, "layer")
        elif isinstance(d, A.Const):
            _add(env.consts, d.name, d, d.loc, "const")
        elif isinstance(d, A.ModelDef) and not stack:
            _add(loaded.models, d.name, d, d.loc, "model")
        elif isinstance(d, A.TrainDef) and not stack:
            _add(loaded.trains, d.model, d, d.loc, "train block for")


def _add(table: dict, name: str, value, loc, what: str) -> None:
    if name in table:
        prev = table[name]
        prev_loc = prev.defn.loc if isinstance(prev, LayerRef) else prev.loc
        raise DlcError("E0107", f"{what} `{name}` is defined twice", loc, notes=[("first defined", prev_loc)])
    table[name] = value


def _import(loaded: Loaded, use: A.Use, env: ModuleEnv, root: Path, here: Path | None, stack: list) -> None:
    base = here.parent if here else root
    target = (base / use.path).resolve()
    try:
        target.relative_to(root)
    except ValueError:
        folder = f"the folder of {loaded.path}" if loaded.path != "<string>" else "the current folder"
        raise DlcError("E0109", f"`use \"{use.path}\"` leaves the spec's folder", use.loc,
                       hint=f"`use` paths are relative to the importing file and must stay inside {folder}") from None
    chain = stack + [str(here)] if here else stack
    if str(target) in chain or target == here:
        names = [Path(p).name for p in chain[chain.index(str(target)):]] if str(target) in chain else []
        raise DlcError("E0109", "import cycle: " + " → ".join(names + [target.name]), use.loc)
    if len(chain) > MAX_IMPORT_DEPTH:
        raise DlcError("E0109", "imports nest too deeply", use.loc)
    if not target.is_file():
        raise DlcError("E0109", f"cannot find `{use.path}` (looked for {_shown(loaded, root, target)})", use.loc)
    if target in loaded.imported:
        return
    loaded.imported.add(target)
    try:
        if target.stat().st_size > 4 * MAX_SOURCE_CHARS:  # by stat, before reading
            raise DlcError("E0003", f"`{use.path}` is {target.stat().st_size:,} bytes long (limit "
                                    f"{MAX_SOURCE_CHARS:,} characters)", use.loc)
        text = target.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DlcError("E0109", f"cannot read `{use.path}`: {e}", use.loc) from None
    sub = parse(text, _shown(loaded, root, target))
    loaded.sources.append(text)
    _fill(loaded, sub, env, root, target, chain)


def _shown(loaded: Loaded, root: Path, target: Path) -> str:
    """An imported file's path as errors show it: relative like the top spec's path, never absolute
    unless that one was."""
    rel = target.relative_to(root)
    if loaded.path == "<string>":
        return str(rel)
    return os.path.normpath(Path(loaded.path).parent / rel)


def pick_model(loaded: Loaded, name: str | None) -> A.ModelDef:
    if not loaded.models:
        raise DlcError("E0101", f"{loaded.path} defines no model", hint="add `model NAME(...) { ... }`")
    if name is None:
        return list(loaded.models.values())[-1]
    if name not in loaded.models:
        raise DlcError("E0101", f"no model `{name}` in {loaded.path}",
                       hint=suggest(name, loaded.models) or "models: " + ", ".join(loaded.models))
    return loaded.models[name]


def compile_model(loaded: Loaded, model: A.ModelDef, mode: str = "eval", hyper: dict | None = None,
                  extra: dict[str, A.Expr] | None = None) -> Lowered:
    """Lower ``model`` in ``mode`` into a typed graph.  ``extra`` maps further
    output names to expressions evaluated in the model's scope (the train
    block's losses and metrics)."""
    # lazily forced bindings recurse once per link of a dependency chain: allow long chains,
    # and report one that is still too long as an error rather than a RecursionError
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, RECURSION_LIMIT))
    try:
        return _compile_model(loaded, model, mode, hyper, extra)
    except RecursionError:
        raise DlcError("E0003", f"model `{model.name}` nests too deeply (expressions or chains of bindings)",
                       model.loc) from None
    finally:
        sys.setrecursionlimit(limit)


def _compile_model(loaded: Loaded, model: A.ModelDef, mode: str, hyper: dict | None,
                   extra: dict[str, A.Expr] | None) -> Lowered:
    graph = Graph(model.name)
    builder = Builder(graph, mode=mode, context=model.name)
    ctx = Ctx(graph, builder, mode)
    frame = Frame(ctx, loaded.env, scope="", context=model.name, builder=builder)
    hyper = dict(hyper or {})
    values = _bind_hyper(frame, model, hyper)
    _declare_inputs(frame, model)
    outputs = [s for s in model.body if isinstance(s, A.OutputDecl)]
    if not outputs:
        raise DlcError("E0102", f"model `{model.name}` has no `output`", model.loc,
                       hint="declare what the model computes: `output logits = ...`")
    for s in outputs:
        if s.value is not None:
            frame.add_binding(A.Binding((s.name,), s.value, loc=s.loc))
    run_body(frame, model.body, model.loc, kind="model")
    for s in outputs:
        v = frame.lookup(s.name, s.loc)
        if not is_tensor(v):
            raise frame.error("E0103", f"output `{s.name}` must be a tensor, got {describe(v)}", s.loc)
        if s.name in graph.outputs:
            raise frame.error("E0107", f"output `{s.name}` is declared twice", s.loc)
        graph.set_output(s.name, v)
    for name, e in (extra or {}).items():
        from .expr import evaluate

        frame.binding = name.replace("/", "_")
        v = evaluate(e, frame)
        kind, _, short = name.partition("/")
        t = graph.type_of(v) if is_tensor(v) else None
        if t is None or t.rank != 0 or kind == "loss" and not t.is_float:
            got = f"a tensor of type {t}" if t is not None else describe(v)
            what = "the loss" if kind == "loss" else f"the metric `{short}`"
            raise DlcError("E0201", f"{what} must be a {'float ' if kind == 'loss' else ''}scalar tensor, got {got}",
                           e.loc, hint="reduce it, e.g. with mean(...)" if t is None or t.rank else
                           "cast it: cast(x, f32)")
        graph.set_output(name, v)
    frame.binding = None
    return Lowered(graph, model, mode, values,
                   {graph[n].attrs["name"]: graph[n].types[0] for n in graph.inputs},
                   {k: graph.type_of(v) for k, v in graph.outputs.items()})


def _bind_hyper(frame: Frame, model: A.ModelDef, hyper: dict) -> dict:
    names = [f.name for f in model.formals]
    for k in hyper:
        if k not in names:
            raise DlcError("E0102", f"model `{model.name}` has no hyperparameter `{k}`", model.loc,
                           hint=suggest(k, names) or ("hyperparameters: " + ", ".join(names) if names else None))
    values = {}
    for f in model.formals:
        if f.name in hyper:
            value = _hyper_value(frame, model, f, hyper[f.name])
        elif f.default is not None:
            from .expr import evaluate

            value = evaluate(f.default, frame)
        else:
            raise DlcError("E0102", f"hyperparameter `{f.name}` of `{model.name}` has no default and no value",
                           f.loc, hint=f"give it one: --set {f.name}=...")
        if isinstance(f.type, A.ScalarTypeExpr):
            value = check_scalar(frame, model.name, f, value, f.loc)
        elif isinstance(f.type, A.TensorTypeExpr):
            raise DlcError("E0103", "a model's hyperparameters are scalars; tensors are `input`s", f.loc)
        frame.define(f.name, value, f.loc)
        values[f.name] = value
    return values


def _hyper_value(frame: Frame, model: A.ModelDef, f: A.Formal, value):
    """A given hyperparameter; a name (``--set act=relu``) for a formal that holds a
    layer — typed ``layer``, or defaulting to a layer or op — is looked up as one."""
    takes_layer = isinstance(f.type, A.ScalarTypeExpr) and f.type.name in ("layer", "fn", "op")
    if not takes_layer and f.type is None and isinstance(f.default, A.Name):
        from .expr import evaluate

        takes_layer = isinstance(evaluate(f.default, frame), (OpRef, LayerRef))
    if not (takes_layer and isinstance(value, str)):
        return value
    try:
        found = frame.lookup(value, f.loc)
    except DlcError:
        found = None
    if not isinstance(found, (OpRef, LayerRef)):
        raise DlcError("E0103", f"hyperparameter `{f.name}` of `{model.name}` takes a layer or an op; "
                                f"`{value}` is not one", f.loc,
                       hint=suggest(value, [*frame.module.layers, "relu", "tanh", "sigmoid", "gelu", "identity"]))
    return found


def _declare_inputs(frame: Frame, model: A.ModelDef) -> None:
    graph = frame.ctx.graph
    decls = [s for s in model.body if isinstance(s, A.InputDecl)]
    for s in decls:  # bare capitalised names are new symbolic dims
        for d in s.type.dims:
            if isinstance(d, A.Name) and d.id[:1].isupper() and d.id not in frame.dims \
                    and d.id not in frame.module.consts and d.id not in frame.names:
                frame.dims[d.id] = Sym.var(d.id)
    for s in decls:
        shape = tensor_shape(frame, s.type, f"input `{s.name}`")
        t = TensorType(s.type.dtype or "f32", shape)
        n = graph.add_node("input", (), {"name": s.name}, (t,), loc=s.loc)
        graph.add_input(n)
        for axis, d in enumerate(shape):
            if isinstance(d, Sym) and d.single_var():
                graph.add_dim(str(d), s.name, axis)
        frame.define(s.name, Value(n), s.loc)

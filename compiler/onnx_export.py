"""Export a dlc Graph as an ONNX ModelProto (standard domain, pinned opset).

:func:`export_graph` walks the graph in its deterministic topological order
and lets every op's ``onnx`` method emit nodes through the emitter
(compiler/onnx_emit.py).  Source nodes become:

- ``input`` → a graph input (symbolic dims as ``dim_param``: ``B``, ``4*H``);
- ``param`` → an initializer named by the parameter (inference), or a graph
  input when ``train=True`` (a training-step graph's outputs already hold
  the updated parameters);
- ``state`` → a graph input, or an initializer when a value is given in
  ``state`` for an inference export (eval-mode running statistics);
- any graph input named in ``defaults`` also gets an initializer of its
  name: the value used when the caller feeds none (ONNX's input defaults);
- ``const`` → a deduplicated initializer.

Value names are readable and unique: ``<scope>/<op>_<node id>`` (``h/matmul_3``;
``.1``, ``.2`` … suffixed for the further outputs of multi-output ops);
inputs, parameters and outputs keep their names.  Only nodes that feed an
output are exported — sources too, so an inference model does not ask for
the labels its loss would have read (as the interpreter's plan does not),
unless a symbolic dim can only be read from their shape.
Graph inputs are ordered: inputs (``graph.inputs`` order), state, then
parameters.  The same graph always gives byte-identical bytes.

:func:`verify` runs the onnx checker (full check) and strict shape
inference and compares the inferred output types with dlc's.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlc.grammar.errors import DlcError

from .dims import Sym, concrete_shape
from .graph import SOURCE_OPS, Graph, Value
from .onnx_emit import IR_VERSION, OPSET, Emitter, Names, onnx_dtype, value_info
from .onnx_fuse import find_fusions
from .ops.registry import get_op
from .types import TensorType, np_dtype


def export_graph(graph: Graph, *, params: dict[str, np.ndarray] | None, state: dict | None = None,
                 name: str, doc: str = "", train: bool = False, defaults: dict[str, np.ndarray] | None = None,
                 props: dict[str, str] | None = None, mode: str | None = None) -> onnx.ModelProto:
    """The ONNX model of ``graph`` (see the module docstring for the mapping).

    ``defaults`` gives graph inputs (a step's parameters, state, ``__rng``) an
    initializer of the same name, which a feed overrides; ``props`` adds
    ``metadata_props``; ``mode`` is the ``dlc.mode`` property (default
    ``train``/``inference`` by ``train``)."""
    params = params or {}
    defaults = defaults or {}
    state = {} if train or state is None else state
    names = Names()
    e = Emitter(graph, names)
    values: dict[Value, str] = {}
    order = graph.topo_order()
    live = graph.ancestors({v.node for v in graph.outputs.values()})
    listed = list(graph.inputs) + [n for n in order if graph.op(n) == "input" and n not in graph.inputs]
    listed += [n for n in order if graph.op(n) == "state"]
    listed += [n for n in order if graph.op(n) == "param"]
    for n in listed:
        data = graph[n]
        key, t = data.attrs["name"], data.types[0]
        vname = names.claim(key)
        given = params if data.op == "param" else state
        if data.op == "param" and not train or data.op == "state" and key in given:
            if n in live:
                e.initializers.append(numpy_helper.from_array(_value_for(key, t, given, data.op), vname))
                values[Value(n)] = vname
        elif n in live:
            e.sources[n] = values[Value(n)] = vname
            if key in defaults:
                e.initializers.append(numpy_helper.from_array(_value_for(key, t, defaults, data.op), vname))
        else:
            e.spare[n] = vname
    outputs = lower_nodes(e, graph, values, {k: k for k in graph.outputs})
    inputs = [value_info(e.sources[n], graph[n].types[0]) for n in listed if n in e.sources]
    g = helper.make_graph(e.nodes, name or graph.name or "dlc", inputs, outputs, initializer=e.initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="dlc", producer_version=_version(), doc_string=doc)
    model.model_version = 1
    helper.set_model_props(model, {"dlc.model": name or graph.name,
                                   "dlc.mode": mode or ("train" if train else "inference"), **(props or {})})
    return model


def lower_nodes(e: Emitter, graph: Graph, values: dict[Value, str], out_names: dict[str, str]):
    """Emit every live non-source node of ``graph`` through ``e``; ``values``
    holds the ONNX names of the source values.  Returns the output
    ValueInfoProtos, named by ``out_names`` (graph output key → ONNX name)."""
    claimed: dict[Value, str] = {}
    for key, v in graph.outputs.items():
        out_names[key] = e.names.claim(out_names[key])
        if v not in claimed and v not in values and graph.op(v.node) not in SOURCE_OPS:
            claimed[v] = out_names[key]  # the producing node writes the output directly
    fused = find_fusions(graph)
    live = _live(graph, fused)
    for n in graph.topo_order():
        if n not in live or Value(n) in values:
            continue
        data = graph[n]
        op = data.op
        if op == "const":
            values[Value(n)] = e.const(data.attrs["value"])
            continue
        if op in SOURCE_OPS:
            raise DlcError("E0501", f"cannot export `{graph.name}`: {op} `{data.attrs.get('name')}` "
                                    "is not bound to a value", data.loc)
        stem = e.prefix + (f"{data.scope}/" if data.scope else "") + f"{op}_{n}"
        outs = [claimed.get(Value(n, i)) or e.names.fresh(stem if i == 0 else f"{stem}.{i}")
                for i in range(len(data.types))]
        if n in fused:  # a group of nodes with a better ONNX form (compiler/onnx_fuse.py)
            e.in_types, e.out_types, e.here = [], list(data.types), stem
            fused[n].lower(e, values, outs)
        else:
            _lower(e, graph, n, [values[v] for v in data.inputs], outs, stem)
        for i, name in enumerate(outs):
            values[Value(n, i)] = name
    result = []
    for key, v in graph.outputs.items():
        name = out_names[key]
        if values[v] != name:
            e.node("Identity", [values[v]], [name])
        result.append(value_info(name, graph.type_of(v)))
    return result


def _live(graph: Graph, fused: dict) -> set[int]:
    """The nodes the outputs need; a fused node needs what its fusion reads, not its own inputs
    (an LSTM reads the unprojected sequence: the projection outside the loop is not exported)."""
    return Graph.reach((v.node for v in graph.outputs.values()),
                       lambda n: [v.node for v in (fused[n] if n in fused else graph[n]).inputs])


def _lower(e: Emitter, graph: Graph, n: int, ins: list[str], outs: list[str], stem: str) -> None:
    data = graph[n]
    op = data.op
    e.in_types = [graph.type_of(v) for v in data.inputs]
    e.out_types = list(data.types)
    e.here = stem
    first = len(e.nodes)
    try:
        get_op(op).onnx(e, ins, outs, **data.attrs)
    except NotImplementedError:
        raise DlcError("E0501", f"op `{op}` has no ONNX lowering", data.loc) from None
    except DlcError:
        raise
    except Exception as exc:  # a lowering bug: name the node so it can be found
        raise DlcError("E0501", f"ONNX lowering of `{op}` (node {stem}) failed: {type(exc).__name__}: {exc}",
                       data.loc) from exc
    made = {o for node in e.nodes[first:] for o in node.output}
    lost = [o for o in outs if o not in made]
    if lost:  # a lowering bug the checker would report far less clearly
        raise DlcError("E0501", f"ONNX lowering of `{op}` (node {stem}) did not produce {', '.join(lost)}",
                       data.loc)


def _value_for(key: str, t: TensorType, given: dict, kind: str) -> np.ndarray:
    if key not in given:
        raise DlcError("E0501", f"cannot export: no value for {kind} `{key}`",
                       hint="pass the trained parameters (or export with train=True)")
    arr = np.asarray(given[key], dtype=np_dtype(t.dtype))
    try:
        want = concrete_shape(t.shape, {})
    except KeyError:
        want = None
    if want is not None and tuple(arr.shape) != tuple(want):
        raise DlcError("E0501", f"{kind} `{key}` has shape {list(arr.shape)}, the graph declares {t}")
    return arr


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlc")
    except PackageNotFoundError:
        return ""


# -- verification ---------------------------------------------------------------
def verify(model: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """Check ``model`` (exported from ``graph``) with the onnx checker
    (full_check) and strict shape inference; the inferred output types must
    agree with dlc's (dims: ints equal; symbolic names equal, or unknown to
    onnx).  Returns the inferred model; raises E0501 listing disagreements."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise DlcError("E0501", f"the exported model fails the onnx checker: {exc}") from exc
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for out in probe.graph.output:  # forget the declared types so inference states its own
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise DlcError("E0501", f"onnx shape inference rejects the exported model: {exc}") from exc
    problems = []
    for out, key in zip(inferred.graph.output, graph.outputs):
        want = graph.type_of(graph.outputs[key])
        problems += [f"output `{key}`: {p}" for p in _disagreements(out.type.tensor_type, want)]
    if problems:
        raise DlcError("E0501", "onnx shape inference disagrees with dlc's types:\n  " + "\n  ".join(problems))
    return inferred


def _disagreements(tt, want: TensorType) -> list[str]:
    if tt.elem_type != onnx_dtype(want.dtype):
        return [f"dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}, dlc says {want.dtype}"]
    if not tt.HasField("shape"):
        return []  # rank unknown to onnx: nothing to compare
    dims = tt.shape.dim
    if len(dims) != want.rank:
        return [f"rank {len(dims)}, dlc says {want}"]
    out = []
    for axis, (got, d) in enumerate(zip(dims, want.shape)):
        if got.HasField("dim_value"):
            ok = isinstance(d, int) and got.dim_value == d
        elif got.HasField("dim_param") and not got.dim_param.startswith("unk__"):
            ok = isinstance(d, Sym) and got.dim_param == str(d)
        else:
            ok = True  # unknown to onnx
        if not ok:
            shown = got.dim_value if got.HasField("dim_value") else got.dim_param
            out.append(f"axis {axis} is {shown}, dlc says {d}")
    return out

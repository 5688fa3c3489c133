"""Shape specialization and Scan unrolling of exported ONNX models.

onnxruntime runs a ``Scan`` by executing its body subgraph once per step,
with a fixed cost per iteration (a frame of the body's values, slicing
and stacking the scanned tensors, copying carries) that dominates small
bodies: the benchmark LSTM's two scans (T = 32) spent about a third of
their time outside the body's kernels.  When the trip count is known the
loop can be written out as straight-line nodes instead, which onnxruntime
runs like any other part of the graph.

- :func:`specialize` fixes named dims (``B``, ``T``) of a model's inputs and
  outputs to sizes, so shape inference knows every scan's trip count.
- :func:`unroll_scans` replaces each top-level ``Scan`` whose trip count is
  static by its body repeated that many times, when the unrolled size is at
  most :data:`MAX_UNROLLED_NODES` (trip count × body nodes; the rule is
  deterministic, so the same model and sizes give the same file).  Scans with
  a dynamic trip count, nested subgraphs, or over the threshold stay.

The unrolled graph computes the same values in the same order (each body
node runs on the same operands as in the Scan), so results are identical up
to the kernels onnxruntime picks for the larger graph's fusions.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

import numpy as np

# trip count × body nodes at most this: the LSTM step's two scans (T = 32, 14-node bodies) unroll;
# a 1,000-step scan over the same body does not (session creation and memory grow with the unrolled size)
MAX_UNROLLED_NODES = 4096


def specialize(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs and outputs have the named dims ``dims`` fixed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in list(out.graph.input) + list(out.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = int(dims[d.dim_param])
    return out


def unroll_scans(model: onnx.ModelProto, max_nodes: int = MAX_UNROLLED_NODES) -> onnx.ModelProto:
    """A copy of ``model`` with every eligible top-level ``Scan`` written out (see the module
    docstring); ``model`` itself is returned when no scan qualifies."""
    if not any(n.op_type == "Scan" for n in model.graph.node):
        return model
    try:
        shapes = _static_shapes(model)
    except Exception:  # shape inference cannot follow the model: keep its scans
        return model
    graph = model.graph
    taken = _all_names(graph)
    steps: dict[str, tuple[int, list[str]]] = {}  # stacked output → (axis, its per-step slices in time order)
    nodes, changed = [], False
    for node in graph.node:
        plan = _plan(node, shapes, max_nodes) if node.op_type == "Scan" else None
        if plan is None:
            nodes.append(node)
            continue
        nodes.extend(_unrolled(node, *plan, shapes, taken, steps))
        changed = True
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    return out


def _live(nodes: list, wanted: set[str]) -> list:
    """``nodes`` without those no graph output depends on (a stacked output that only
    a later unrolled scan read, through its slices, is never assembled)."""
    need = set(wanted)
    keep = []
    for node in reversed(nodes):
        if any(o in need for o in node.output if o):
            keep.append(node)
            need.update(i for i in node.input if i)
            for a in node.attribute:  # a kept Scan's body reads outer values by name
                if a.type == onnx.AttributeProto.GRAPH:
                    need |= _all_names(a.g)
    return keep[::-1]


def scan_count(model: onnx.ModelProto) -> int:
    """How many ``Scan`` nodes the model's main graph has."""
    return sum(n.op_type == "Scan" for n in model.graph.node)


# -- planning ------------------------------------------------------------------------
def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Value name → shape (ints, or None for an unknown dim) from onnx shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _plan(node, shapes, max_nodes):
    """(trip count, body, n_state, in_axes, in_dirs, out_axes, out_dirs), or None to keep the Scan."""
    body = _attr(node, "body", None)
    m = _attr(node, "num_scan_inputs", 0)
    n_state = len(node.input) - m
    if body is None or m < 1 or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                    for b in body.node for a in b.attribute):
        return None
    in_axes = list(_attr(node, "scan_input_axes", [0] * m))
    in_dirs = list(_attr(node, "scan_input_directions", [0] * m))
    k = len(body.output) - n_state
    out_axes = list(_attr(node, "scan_output_axes", [0] * k))
    out_dirs = list(_attr(node, "scan_output_directions", [0] * k))
    trip = None
    for j, name in enumerate(node.input[n_state:]):
        shape = shapes.get(name)
        if shape is None:
            return None
        in_axes[j] %= len(shape)
        trip = shape[in_axes[j]]
        # slicing reshapes: the trip count and every dim after the axis must be known
        if any(d is None for d in shape[in_axes[j]:]):
            return None
    if not trip or trip * len(body.node) > max_nodes:
        return None
    for j, name in enumerate(node.output[n_state:]):
        shape = shapes.get(name) if name else ()
        if shape is None:
            return None
        out_axes[j] %= len(shape)
        if any(d is None for d in shape[out_axes[j]:]):
            return None
    return trip, body, n_state, in_axes, in_dirs, out_axes, out_dirs


def _all_names(graph) -> set[str]:
    names = {v.name for v in list(graph.input) + list(graph.output)} | {i.name for i in graph.initializer}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _all_names(a.g)
    return names


def _fresh(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


# -- writing it out ------------------------------------------------------------------
def _unrolled(node, trip, body, n_state, in_axes, in_dirs, out_axes, out_dirs, shapes, taken, steps):
    """The straight-line nodes computing ``node``'s outputs (same names).  ``steps`` maps the
    stacked outputs of scans unrolled before to their slices: a scan reading one along the same
    axis takes the slices themselves (BPTT reads the forward scan's residuals this way); this
    scan's stacked outputs are added."""
    stem = node.name or node.output[0]
    out: list[onnx.NodeProto] = []

    def const(arr, hint):
        name = _fresh(taken, f"{stem}/unrolled/{hint}")
        out.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(arr)))
        return name

    def emit(op, inputs, hint, n_out=1, **attrs):
        outs = [_fresh(taken, f"{stem}/unrolled/{hint}") for _ in range(n_out)]
        out.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    # per-step slices of every scanned input, in iteration order
    used = {i for b in body.node for i in b.input} | {o.name for o in body.output}
    slices = []
    for j, (name, axis, direction) in enumerate(zip(node.input[n_state:], in_axes, in_dirs)):
        if body.input[n_state + j].name not in used:
            slices.append([""] * trip)  # the body never reads it
            continue
        if name in steps and steps[name][0] == axis and len(steps[name][1]) == trip:
            pieces = steps[name][1]
            slices.append(pieces if direction == 0 else pieces[::-1])
            continue
        shape = shapes[name]
        rank = len(shape)
        if axis + 1 < rank:  # merge the axis into the next one, then split: each piece is one step's slice
            target = [0] * axis + [-1] + [int(d) for d in shape[axis + 2:]]
            (flat,) = emit("Reshape", [name, const(np.array(target, np.int64), "shape")], "flat")
            pieces = emit("Split", [flat], "step", n_out=trip, axis=axis, num_outputs=trip)
        else:  # the last axis: split into size-1 pieces and drop the axis
            parts = emit("Split", [name], "part", n_out=trip, axis=axis, num_outputs=trip)
            axes = const(np.array([axis], np.int64), "axes")
            pieces = [emit("Squeeze", [p, axes], "step")[0] for p in parts]
        slices.append(pieces if direction == 0 else pieces[::-1])

    hoisted = [b for b in body.node if b.op_type == "Constant"]
    env_const = {}
    for b in hoisted:  # loop-invariant: once, not once per step
        name = _fresh(taken, f"{stem}/unrolled/{b.output[0].split('/')[-1]}")
        copy = onnx.NodeProto()
        copy.CopyFrom(b)
        del copy.output[:]
        copy.output.append(name)
        copy.name = name
        out.append(copy)
        env_const[b.output[0]] = name

    state = list(node.input[:n_state])
    stacked: list[list[str]] = [[] for _ in range(len(body.output) - n_state)]
    for t in range(trip):
        env = dict(env_const)
        for formal, actual in zip(body.input, state + [s[t] for s in slices]):
            env[formal.name] = actual
        for b in body.node:
            if b.op_type == "Constant":
                continue
            copy = onnx.NodeProto()
            copy.CopyFrom(b)
            del copy.input[:]
            copy.input.extend(env.get(i, i) if i else "" for i in b.input)
            del copy.output[:]
            for o in b.output:
                env[o] = _fresh(taken, f"{o}@{t}") if o else ""
                copy.output.append(env[o])
            copy.name = copy.output[0] if copy.output else ""
            out.append(copy)
        results = [env.get(o.name, o.name) for o in body.output]
        state = results[:n_state]
        for j, r in enumerate(results[n_state:]):
            stacked[j].append(r)

    for final, name in zip(node.output[:n_state], state):
        out.append(helper.make_node("Identity", [name], [final], name=final))
    for j, (name, axis, direction) in enumerate(zip(node.output[n_state:], out_axes, out_dirs)):
        if not name:
            continue
        in_time = stacked[j] if direction == 0 else stacked[j][::-1]
        steps[name] = (axis, in_time)
        shape = shapes[name]  # the stacked output: slice dims with the steps at `axis`
        if axis + 1 < len(shape):  # concatenate along the axis, then split it into (steps, size)
            (joined,) = emit("Concat", in_time, "joined", axis=axis)
            target = [0] * axis + [trip] + [int(d) for d in shape[axis + 1:]]
            out.append(helper.make_node("Reshape", [joined, const(np.array(target, np.int64), "shape")], [name],
                                        name=name))
        else:
            axes = const(np.array([axis], np.int64), "axes")
            ups = [emit("Unsqueeze", [s, axes], "up")[0] for s in in_time]
            out.append(helper.make_node("Concat", ups, [name], name=name, axis=axis))
    return out


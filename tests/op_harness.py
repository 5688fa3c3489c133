"""Build one-op graphs from registry samples (shared by the generic op tests)."""
from __future__ import annotations

import zlib

import numpy as np

from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph, Value
from dlc.compiler.ops.registry import Arg, all_ops
from dlc.compiler.types import TensorType, dtype_name


def graph_input(g: Graph, name: str, t: TensorType) -> Value:
    """Add a graph input ``name`` of type ``t``."""
    n = g.add_node("input", (), {"name": name}, (t,))
    g.add_input(n)
    return Value(n)


def graph_param(g: Graph, name: str, t: TensorType) -> Value:
    """Add a parameter ``name`` of type ``t`` (initialiser: zeros)."""
    n = g.add_node("param", (), {"name": name, "init": ("zeros", {})}, (t,))
    g.add_param(name, n)
    return Value(n)


def cases(kind: str = "all"):
    """(id, op class, sample index, sample) for every sample of every op."""
    out = []
    for name, cls in all_ops().items():
        if name in ("scan", "scan_grad"):
            continue
        if kind == "primitive" and cls.composite:
            continue
        for i, s in enumerate(cls.samples):
            out.append((f"{name}-{i}", cls, i, s))
    return out


def materialise(sample, float_dtype, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in sample.inputs:
        if isinstance(spec, Arg):
            arrays.append(spec.make(rng, float_dtype))
        else:
            a = np.asarray(spec)
            arrays.append(a.astype(float_dtype) if a.dtype.kind == "f" else a)
    return arrays


def one_op_graph(cls, sample, arrays, mode: str = "train"):
    """A graph applying ``cls`` to the sample: float inputs are params
    ``p0, p1, …`` (so backprop can target them), others are inputs ``i0, …``.
    Returns (graph, builder, outputs, params, feeds)."""
    g = Graph(cls.name)
    b = Builder(g, mode=mode)
    values, params, feeds = [], {}, {}
    for k, a in enumerate(arrays):
        t = TensorType(dtype_name(a.dtype), tuple(a.shape))
        if a.dtype.kind == "f":
            values.append(graph_param(g, f"p{k}", t))
            params[f"p{k}"] = a
        else:
            values.append(graph_input(g, f"i{k}", t))
            feeds[f"i{k}"] = a
    out = b.apply(cls.name, *values, **sample.attrs)
    outs = list(out) if isinstance(out, tuple) else [out]
    for j, v in enumerate(outs):
        g.set_output(f"y{j}", v)
    for n in g.inputs:  # random ops: a fixed key
        if g[n].attrs["name"] == "__rng":
            feeds["__rng"] = np.array(12345, dtype=np.int64)
    return g, b, outs, params, feeds


def has_float_input(sample) -> bool:
    """Does the sample feed a float tensor (something a gradient can be taken for)?"""
    return any(spec.kind in ("normal", "positive", "unit") if isinstance(spec, Arg)
               else np.asarray(spec).dtype.kind == "f" for spec in sample.inputs)


def gradient_cases(all_cases) -> list:
    """The cases whose gradient is checked: differentiable ops, samples marked for it, with a float input
    (constructors such as `zeros(shape)` have none: nothing to differentiate, so no case, not a skip)."""
    return [c for c in all_cases if c[1].differentiable and c[3].grad and has_float_input(c[3])]


def seed_of(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def weighted_sum(b, values, rng):
    """sum_k sum(v_k * w_k) over the float values, fixed random weights w_k; None if none is float."""
    total = None
    for v in values:
        t = b.type(v)
        if t.dtype not in ("f32", "f64"):
            continue
        term = b.sum(b.mul(v, b.const(rng.standard_normal(tuple(t.shape)), t.dtype)))
        total = term if total is None else b.add(total, term)
    return total

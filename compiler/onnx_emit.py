"""The ONNX emitter ``e`` that op lowerings write through, and the version pins.

Each op's ``onnx(e, ins, outs, **attrs)`` (see docs/architecture.md, "ONNX
lowering contract") adds standard-domain nodes with :meth:`Emitter.node`,
constants with :meth:`Emitter.const` and run-time shapes with
:meth:`Emitter.shape_tensor`.  One :class:`Emitter` fills one ONNX graph; a
scan body gets a child emitter (:meth:`Emitter.subgraph`) that shares the
model-wide name table, so every value name in the model is unique (ONNX
subgraphs see, and must not shadow, the names of their enclosing graphs).

Constants: in the main graph they are initializers ``const_<n>`` (numbered
in order of first use, deduplicated by dtype, shape and bytes); inside a
subgraph they are ``Constant`` nodes of that subgraph, because onnx shape
inference of a subgraph cannot read the values of outer initializers (a
``Reshape`` there would lose its static shape).

The version pins live here and only here; see docs/onnx.md for why.
"""
from __future__ import annotations

from fractions import Fraction
from math import lcm

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlc.grammar.errors import DlcError

from .dims import FloorAtom, Sym
from .graph import Graph, Value
from .types import TensorType, dtype_name

OPSET = 18  # every Reduce* takes `axes` as an input from 18 on; Split has num_outputs; ORT >= 1.14 runs all of it
IR_VERSION = 8  # the IR that introduced opset 18; onnx's default (newer) is rejected by older onnxruntimes
MIN_ORT = (1, 14)  # first onnxruntime with opset 18 / IR 8 kernels

_DTYPES = {"f16": TensorProto.FLOAT16, "f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE,
           "i32": TensorProto.INT32, "i64": TensorProto.INT64, "bool": TensorProto.BOOL}


def check_runtime(version: str | None = None) -> None:
    """Raise E0501 when onnxruntime (``version``, default: the installed one)
    cannot run models of the pinned opset and IR version."""
    if version is None:
        import onnxruntime

        version = onnxruntime.__version__
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_ORT:
        need = ".".join(map(str, MIN_ORT))
        raise DlcError("E0501", f"onnxruntime {version} cannot run dlc's ONNX models (opset {OPSET}, "
                                f"IR version {IR_VERSION}): they need onnxruntime >= {need}",
                       hint=f"pip install 'onnxruntime>={need}'")


def onnx_dtype(dtype) -> int:
    """The TensorProto element type of a dlc dtype name (or NumPy dtype)."""
    return _DTYPES[dtype if isinstance(dtype, str) else dtype_name(dtype)]


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    """A typed graph input/output; symbolic dims become ``dim_param`` text (``B``, ``4*H``)."""
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, onnx_dtype(t.dtype), dims)


class Names:
    """The model-wide table of used value names: fresh names never collide."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, name: str) -> str:
        if name in self.used:
            raise DlcError("E0501", f"two ONNX values would both be named `{name}`",
                           hint="graph inputs, parameters and outputs need distinct names")
        self.used.add(name)
        return name

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


class Emitter:
    """Collects the nodes of one ONNX graph for the lowering of a dlc graph.

    ``sources`` maps the dlc source nodes (inputs, params, state) whose
    ``Shape`` may be taken to their ONNX names, in search order; it is how
    symbolic dims are resolved.  ``spare`` holds graph inputs that no output
    reads; one moves into ``sources`` (and so into the model's inputs) when
    it is the only place a symbolic dim can be read from.
    """

    opset = OPSET

    def __init__(self, graph: Graph, names: Names, *, parent: "Emitter | None" = None, prefix: str = ""):
        self.graph = graph
        self.names = names
        self.parent = parent
        self.prefix = prefix  # prepended to every value name of this (sub)graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.sources: dict[int, str] = {}
        self.spare: dict[int, str] = {}  # graph inputs no output reads: exported only if a dim needs them
        self.in_types: list[TensorType] = []
        self.out_types: list[TensorType] = []
        self.here = prefix + "tmp"  # name stem for temporaries of the node being lowered
        self._consts: dict[tuple, str] = {}
        self._dims: dict[object, str] = {}  # dim name / Sym / dims tuple → 1-D int64 value

    # -- the lowering contract ---------------------------------------------------
    def node(self, op_type: str, inputs, outputs, **attrs) -> list[str]:
        """Add one ONNX node; ``outputs`` is a list of names or a count of fresh
        temporaries.  Attr values: numbers, strings, lists, ndarrays (tensor
        attributes), GraphProtos (subgraphs); None leaves the attr out."""
        if isinstance(outputs, int):
            outputs = [self.tmp(op_type.lower()) for _ in range(outputs)]
        outputs = list(outputs)
        # node names live apart from value names; the first output's name is unique already
        node = helper.make_node(op_type, [str(i) for i in inputs], outputs, name=outputs[0] if outputs else "")
        for key in sorted(attrs):
            value = attrs[key]
            if value is None:
                continue
            node.attribute.append(_attribute(key, value))
        self.nodes.append(node)
        return outputs

    def const(self, array) -> str:
        """A constant tensor with the array's dtype and shape (deduplicated)."""
        arr = np.ascontiguousarray(array).reshape(np.shape(array))  # ascontiguousarray makes 0-d arrays 1-d
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = self.names.fresh(self.prefix + "const")
            tensor = numpy_helper.from_array(arr, name)
            if self.parent is None:
                self.initializers.append(tensor)
            else:
                self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
            self._consts[key] = name
        return name

    def tmp(self, hint: str = "t") -> str:
        """A fresh value name under the node being lowered (``h/softmax_4/max``)."""
        return self.names.fresh(f"{self.here}/{hint}")

    def onnx_dtype(self, dtype) -> int:
        return onnx_dtype(dtype)

    def shape_tensor(self, dims) -> str:
        """A 1-D int64 tensor holding ``dims``; symbolic dims are read from the
        ``Shape`` of an input where they occur, at run time (cached)."""
        dims = tuple(dims)
        if all(isinstance(d, (int, np.integer)) for d in dims):
            return self.const(np.array([int(d) for d in dims], dtype=np.int64))
        key = ("shape",) + dims
        if key not in self._dims:
            pieces, ints = [], []
            for d in dims:
                if isinstance(d, Sym):
                    if ints:
                        pieces.append(self.const(np.array(ints, dtype=np.int64)))
                        ints = []
                    pieces.append(self._sym_value(d))
                else:
                    ints.append(int(d))
            if ints:
                pieces.append(self.const(np.array(ints, dtype=np.int64)))
            if len(pieces) == 1:
                self._dims[key] = pieces[0]
            else:
                self._dims[key] = self.node("Concat", pieces, [self._dim_name("shape", dims)], axis=0)[0]
        return self._dims[key]

    def int_product(self, vector: str, length: int) -> str:
        """The product of the ``length`` entries of the 1-D int64 tensor ``vector``, as an
        int64 scalar: Gather and Mul, since onnxruntime's CUDA provider has no int64
        ReduceProd (its kernel table lists double, float, float16 and int32)."""
        out = None
        for i in range(length):
            (d,) = self.node("Gather", [vector, self.const(np.asarray(i, np.int64))], 1, axis=0)
            out = d if out is None else self.node("Mul", [out, d], 1)[0]
        return out if out is not None else self.const(np.asarray(1, np.int64))

    # -- scan bodies ---------------------------------------------------------------
    def subgraph(self, body: Graph, n_formal: int | None = None, outer=(), input_names=None) -> onnx.GraphProto:
        """Lower ``body`` into a GraphProto (for Scan/Loop/If attributes).

        The first ``n_formal`` body inputs (default: all) become the GraphProto
        inputs, in order (named ``input_names`` when given); the remaining
        body inputs are bound to the enclosing graph's values ``outer``, which
        the subgraph reads by name (ONNX lexical scoping).  Outputs follow
        ``body.outputs`` order."""
        from .onnx_export import lower_nodes  # the node walk is shared with the main graph

        n_formal = len(body.inputs) if n_formal is None else n_formal
        outer = list(outer)
        if len(body.inputs) != n_formal + len(outer):
            raise DlcError("E0501", f"subgraph `{body.name}` has {len(body.inputs)} inputs; "
                                    f"given {n_formal} formal and {len(outer)} outer")
        child = Emitter(body, self.names, parent=self, prefix=self.here + "/body/")
        inputs = []
        for i, n in enumerate(body.inputs):
            if i < n_formal:
                base = input_names[i] if input_names else child.prefix + body[n].attrs["name"]
                name = self.names.claim(base)
                inputs.append(value_info(name, body[n].types[0]))
                child.sources[n] = name
            else:
                child.sources[n] = outer[i - n_formal]
        values = {Value(n): name for n, name in child.sources.items()}
        outputs = lower_nodes(child, body, values, {k: child.prefix + k for k in body.outputs})
        return helper.make_graph(child.nodes, self.names.fresh(child.prefix.rstrip("/")), inputs, outputs)

    # -- symbolic dims ---------------------------------------------------------------
    def _sym_value(self, d: Sym) -> str:
        """A 1-element int64 tensor holding the polynomial ``d`` at run time."""
        if d in self._dims:
            return self._dims[d]
        var = d.single_var()
        if var is not None:
            self._dims[d] = self._dim_of(var)
            return self._dims[d]
        floor = _bare_floor(d)
        if floor is not None:  # exactly ⌊num / den⌋
            self._dims[d] = self._floor_value(floor)
            return self._dims[d]
        for n, src in self.sources.items():  # an input axis of exactly this size: read it
            shape = self.graph[n].types[0].shape
            if d in shape:
                return self._axis(src, shape.index(d), d)
        final = self._dim_name("dim", (d,))

        def op(kind: str, a: str, b: str) -> str:
            return self.node(kind, [a, b], [self.names.fresh(f"{final}/{kind.lower()}")])[0]

        den = lcm(*(c.denominator for c in d.terms.values()))
        total = None
        for mono, c in d.terms.items():
            coeff = int(c * den)
            if not mono:
                term = self.const(np.array([coeff], dtype=np.int64))
            else:
                term = None
                for n, p in mono:
                    for _ in range(p):
                        v = self._floor_value(n) if isinstance(n, FloorAtom) else self._dim_of(n)
                        term = v if term is None else op("Mul", term, v)
                if coeff != 1:
                    term = op("Mul", term, self.const(np.array([coeff], dtype=np.int64)))
            total = term if total is None else op("Add", total, term)
        if den != 1:  # exact by construction: dlc only forms dims that are whole numbers
            total = op("Div", total, self.const(np.array([den], dtype=np.int64)))
        # the polynomial has at least one operation, so the last node made `total`: give it the dim's name
        self.nodes[-1].output[0] = self.nodes[-1].name = final
        self._dims[d] = final
        return self._dims[d]

    def _floor_value(self, atom: FloorAtom) -> str:
        """⌊num / den⌋ at run time (ONNX integer Div truncates; num is a size, never negative)."""
        key = ("floor", str(atom))
        if key not in self._dims:
            num = atom.num
            value = self._sym_value(num) if isinstance(num, Sym) else self.const(np.array([num], dtype=np.int64))
            self._dims[key] = self.node("Div", [value, self.const(np.array([atom.den], dtype=np.int64))],
                                        [self._dim_name("dim", (atom,))])[0]
        return self._dims[key]

    def _dim_of(self, var: str) -> str:
        """The run-time value of the dim name ``var`` as a [1] int64 tensor."""
        if var in self._dims:
            return self._dims[var]
        found = self._find_dim(var)
        if found is None:
            if self.parent is not None:
                self._dims[var] = self.parent._dim_of(var)  # outer values are visible in a subgraph
                return self._dims[var]
            raise DlcError("E0501", f"cannot export: the symbolic dim `{var}` is not the size of "
                                    "any input axis, so its value is unknown at run time",
                           hint="give it a fixed size, or add an input that has it as an axis")
        n, src, axis, coeff, offset = found
        if n in self.spare:
            self.sources[n] = self.spare.pop(n)
        if (coeff, offset) == (1, 0):
            return self._axis(src, axis, Sym.var(var))
        # the axis is coeff*var + offset: solve for var (exact, or dlc would not have typed the input)
        value = self._axis(src, axis, coeff * Sym.var(var) + offset)
        stem = f"{self.prefix}dims/{var}"
        if offset:
            value = self.node("Sub", [value, self.const(np.array([offset], dtype=np.int64))],
                              [self.names.fresh(stem + "/sub")])[0]
        if coeff.denominator != 1:
            value = self.node("Mul", [value, self.const(np.array([coeff.denominator], dtype=np.int64))],
                              [self.names.fresh(stem + "/mul")])[0]
        if coeff.numerator != 1:
            value = self.node("Div", [value, self.const(np.array([coeff.numerator], dtype=np.int64))],
                              [self.names.fresh(stem + "/div")])[0]
        self.nodes[-1].output[0] = self.nodes[-1].name = value = self.names.fresh(stem)
        self._dims[var] = value
        return value

    def _axis(self, src: str, axis: int, d: Sym) -> str:
        """The size of ``axis`` of the value ``src`` (known to be ``d``), read once."""
        if d not in self._dims:
            self._dims[d] = self.node("Shape", [src], [self._dim_name("dim", (d,))], start=axis, end=axis + 1)[0]
            if d.single_var():
                self._dims[d.single_var()] = self._dims[d]
        return self._dims[d]

    def _find_dim(self, var: str) -> tuple[int, str, int, Fraction, int] | None:
        """(source node, its value, axis, a, c) with that axis = a*var + c:
        the axis ``graph.dims`` records, else the first axis that is exactly
        ``var``, else the first linear in ``var`` alone (``4*H``, ``T + 1``);
        read sources before spare inputs."""
        want = Sym.var(var)
        candidates = list(self.sources.items()) + list(self.spare.items())
        by_name = {self.graph[n].attrs["name"]: (n, name) for n, name in candidates}
        if var in self.graph.dims and self.graph.dims[var][0] in by_name:
            src, axis = self.graph.dims[var]
            return *by_name[src], axis, Fraction(1), 0
        axes = [(n, name, axis, d) for n, name in candidates
                for axis, d in enumerate(self.graph[n].types[0].shape) if isinstance(d, Sym)]
        for n, name, axis, d in axes:
            if d == want:
                return n, name, axis, Fraction(1), 0
        for n, name, axis, d in axes:
            rest = {m: c for m, c in d.terms.items() if m != ((var, 1),)}
            coeff = d.terms.get(((var, 1),))
            if coeff and coeff > 0 and set(rest) <= {()} and rest.get((), Fraction(0)).denominator == 1:
                return n, name, axis, coeff, int(rest.get((), 0))
        return None

    def _dim_name(self, kind: str, dims) -> str:
        text = ",".join(str(d).replace(" ", "") for d in dims)
        return self.names.fresh(f"{self.prefix}dims/{kind}[{text}]" if kind == "shape" else f"{self.prefix}dims/{text}")


def _attribute(key: str, value) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, (bool, np.bool_)):
        return helper.make_attribute(key, int(value))
    if isinstance(value, (np.integer, np.floating)):
        return helper.make_attribute(key, value.item())
    if isinstance(value, (list, tuple)):
        if not value:  # the element type of an empty list cannot be guessed: ints is what ONNX uses
            return helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS)
        items = [v.item() if isinstance(v, np.generic) else int(v) if isinstance(v, bool) else v for v in value]
        return helper.make_attribute(key, items)
    return helper.make_attribute(key, value)


__all__ = ["OPSET", "IR_VERSION", "MIN_ORT", "Emitter", "Names", "check_runtime", "onnx_dtype",
           "value_info"]


def _bare_floor(d: Sym) -> FloorAtom | None:
    """The floor term when ``d`` is exactly one (``(H + 1)//2``), else None."""
    if len(d.terms) == 1:
        (mono, c), = d.terms.items()
        if c == 1 and len(mono) == 1 and mono[0][1] == 1 and isinstance(mono[0][0], FloorAtom):
            return mono[0][0]
    return None

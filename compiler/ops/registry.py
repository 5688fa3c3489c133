"""The op registry: one class per op, holding everything the system needs.

An op subclasses :class:`Op` (a primitive, which appears in graphs) or
:class:`Composite` (expanded into primitives when the graph is built) and is
registered with ``@register``.  A primitive defines, in one place:

- ``inputs`` / ``outputs`` / ``attrs`` — the signature.  An input named
  ``"*xs"`` is variadic.  ``outputs = None`` means the count comes from the
  shape rule (``split``).  Extra positional arguments in a `.dl` call fill the
  attrs in declaration order.
- ``shape(*in_types, **attrs)`` → TensorType or tuple of them; raises
  :class:`ShapeError` naming the offending dims.
- ``kernel(*arrays, **attrs)`` → ndarray or tuple: the NumPy implementation.
  Attrs arrive resolved (symbolic dims replaced by ints).
- ``grad(b, inputs, outputs, cts, **attrs)`` → one Value-or-None per input:
  a VJP rule that *adds graph nodes* through the builder ``b``; ``cts`` holds
  one cotangent Value-or-None (symbolic zero) per output.  Broadcasting is
  undone by the backprop driver, not by rules.  ``differentiable = False``
  declares an op explicitly non-differentiable.
- ``onnx(e, ins, outs, **attrs)`` — emits standard-domain ONNX nodes through
  the exporter ``e`` (names in, names out; no onnx import here).
- ``samples`` — :class:`Sample` rows used by the generic op tests.

A Composite defines ``expand(b, *inputs, **attrs)`` instead of kernel, grad
and onnx: its primitives carry those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..types import ShapeError

REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute: ``kind`` is one of int float bool str dtype shape ints
    pads any; ``default`` REQUIRED when it must be given; ``choices`` restricts
    values."""

    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None
    doc: str = ""


@dataclass(frozen=True)
class Arg:
    """A sample input: a random array of ``shape``.  ``kind``: ``normal``
    (float), ``positive`` (float > 0.1), ``unit`` (float in (0.05, 0.95)),
    ``int`` (integers in [low, high)), ``bool``."""

    shape: tuple
    kind: str = "normal"
    low: int = 0
    high: int = 2
    dtype: str | None = None

    def make(self, rng: np.random.Generator, float_dtype=np.float64) -> np.ndarray:
        if self.kind == "int":
            return rng.integers(self.low, self.high, size=self.shape).astype(self.dtype or "int64")
        if self.kind == "bool":
            return rng.random(self.shape) < 0.5
        if self.kind == "positive":
            x = rng.uniform(0.5, 2.0, size=self.shape)
        elif self.kind == "unit":
            x = rng.uniform(0.05, 0.95, size=self.shape)
        else:
            x = rng.standard_normal(self.shape)
        return np.asarray(x, dtype=float_dtype)


@dataclass(frozen=True)
class Sample:
    """One row of the generic op tests: input specs (Arg or ndarray) and attrs."""

    inputs: tuple
    attrs: dict = field(default_factory=dict)
    grad: bool = True  # False: skip the finite-difference check (kinks, sampling)
    note: str = ""


class Op:
    """Base of primitive ops (see the module docstring)."""

    name: ClassVar[str]
    family: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("x",)
    outputs: ClassVar[tuple[str, ...] | None] = ("y",)
    attrs: ClassVar[dict[str, Attr]] = {}
    differentiable: ClassVar[bool] = True
    samples: ClassVar[list[Sample]] = []
    composite: ClassVar[bool] = False
    tested_by: ClassVar[str] = ""  # a test module standing in for samples (ops with graph attrs)
    takes_context: ClassVar[bool] = False  # kernel also gets context= (ops/context.py: runs bodies; control flow)
    free: ClassVar[bool] = False  # moves or picks values without arithmetic: 0 FLOPs (reshape, slice, gather)
    moves_values: ClassVar[bool] = False  # output elements are input elements: an index stays an index

    def shape(self, *types, **attrs):
        raise NotImplementedError

    def resolve_attrs(self, types, attrs: dict) -> dict:
        """Attrs made explicit from the input types at build time, so the kernel and
        the ONNX lowering never re-derive from run-time shapes what the declared
        types decided (``squeeze`` of "every size-1 axis" with a symbolic B = 1)."""
        return attrs

    def kernel(self, *arrays, **attrs):
        raise NotImplementedError

    def grad(self, b, inputs, outputs, cts, **attrs):
        raise NotImplementedError

    def onnx(self, e, ins, outs, **attrs):
        raise NotImplementedError

    def flops(self, in_types, out_types, **attrs):
        """FLOPs of one application (symbolic dims kept): one per output element unless
        the op is ``free``; ops that multiply-add (matmul, convolutions) count two per
        multiply-add, a ``scan`` its body times the length (``dlc summary``)."""
        if self.free:
            return 0
        total = 0
        for t in out_types:
            n = 1
            for d in t.shape:
                n = n * d
            total = total + n
        return total

    def index_bound(self, in_types, slot: int, **attrs):
        """The exclusive upper bound of the values of integer input ``slot`` when the op
        uses them as indices (a ``gather`` table's rows, a ``one_hot`` depth), else None.
        ``dlc run`` draws random integer inputs below it."""
        return None

    # -- introspection used by the registry test and the CLI ---------------
    @classmethod
    def has(cls, part: str) -> bool:
        """Does this op define ``part`` (shape kernel grad onnx samples expand)?"""
        if part == "samples":
            return bool(cls.samples) or bool(cls.tested_by)
        if part == "grad" and not cls.differentiable:
            return True
        base = Composite if cls.composite else Op
        impl = getattr(cls, part, None)
        return impl is not None and impl is not getattr(base, part, None)

    @classmethod
    def parts(cls) -> tuple[str, ...]:
        return ("expand", "samples") if cls.composite else ("shape", "kernel", "grad", "onnx", "samples")

    @classmethod
    def variadic(cls) -> bool:
        return bool(cls.inputs) and cls.inputs[-1].startswith("*")

    @classmethod
    def check_attrs(cls, given: dict) -> dict:
        """Fill defaults and validate kinds; raises ShapeError on a bad value."""
        out = {}
        for key in given:
            if key not in cls.attrs:
                raise ShapeError(f"`{cls.name}` has no argument `{key}`")
        for key, spec in cls.attrs.items():
            if key in given:
                out[key] = _coerce(cls.name, key, spec, given[key])
            elif spec.default is REQUIRED:
                raise ShapeError(f"`{cls.name}` needs the argument `{key}`")
            else:
                out[key] = spec.default
        return out


class Composite(Op):
    """An op defined by expansion into other ops (no kernel/grad/onnx of its own)."""

    composite = True

    def expand(self, b, *inputs, **attrs):
        raise NotImplementedError


def _coerce(op: str, key: str, spec: Attr, value):
    kind = spec.kind
    ok = True
    if kind == "int":
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif kind == "float":
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind in ("str", "dtype"):
        ok = isinstance(value, str)
    elif kind == "pads":  # an int, a name ("same"), or a list of ints or of [before, after] pairs
        if isinstance(value, (tuple, list)):
            value = tuple(tuple(v) if isinstance(v, (tuple, list)) else v for v in value)
        ok = isinstance(value, (int, str, tuple)) and not isinstance(value, bool)
    elif kind in ("shape", "ints"):
        if isinstance(value, (int,)) and not isinstance(value, bool):
            value = (value,)
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    if not ok:
        raise ShapeError(f"argument `{key}` of `{op}` must be {_KIND_WORDS.get(kind, kind)}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ShapeError(f"argument `{key}` of `{op}` must be one of {', '.join(map(repr, spec.choices))}, got {value!r}")
    return value


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dtype": "a dtype name", "shape": "a list of dims", "ints": "a list of integers",
               "pads": "a padding (\"same\", \"valid\", an integer or a list)"}

REGISTRY: dict[str, type[Op]] = {}
_INSTANCES: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    if cls.name in REGISTRY:
        raise ValueError(f"op {cls.name} registered twice")
    REGISTRY[cls.name] = cls
    _INSTANCES[cls.name] = cls()
    return cls


def get_op(name: str) -> Op:
    """The op instance registered as ``name`` (KeyError if none)."""
    load_all()
    return _INSTANCES[name]


def all_ops() -> dict[str, type[Op]]:
    load_all()
    return dict(sorted(REGISTRY.items()))


_FAMILIES = ("arith", "compare", "activation", "reduction", "shape", "loss", "random", "nn", "norm",
             "control", "optim", "fused", "autodiff")
_loaded = False


def load_all() -> None:
    """Import every op family module (each registers its ops)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for fam in _FAMILIES:
        try:
            importlib.import_module(f"{__package__}.{fam}")
        except ModuleNotFoundError as e:  # a family not written yet
            if e.name != f"{__package__}.{fam}":
                raise


def missing_parts() -> dict[str, list[str]]:
    """op name → the parts it still lacks (empty when complete)."""
    return {name: [p for p in cls.parts() if not cls.has(p)] for name, cls in all_ops().items()}

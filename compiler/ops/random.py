"""Random ops: counter-based, so the NumPy interpreter and onnxruntime give
bit-identical random bits (and uniforms) for the same key.

Every random value is a pure function of (run key, op salt, flat element
index).  The run key is the graph's i64 scalar input ``__rng``
(``b.rng_key()``; the runtime derives it from seed and step); each random op
gets a fresh ``salt`` attr (``b.salt()``) so two ops in one graph differ.

The hash works on int64 with every intermediate below 2**63 and every value
non-negative, modulo the prime P = 2**31 - 1, using only ONNX Mul, Add, Mod,
Div (no wrap-around, no unsigned types, no bit shifts).  It is written once
(:func:`_hash`) over a small "integer backend" with a NumPy and an ONNX
implementation, so the kernel and the lowering perform the same arithmetic
by construction; the NumPy backend computes ``mod P`` and the 31-bit rotation
with faster bit operations that are equal to them on non-negative values.

- Per op, the key and salt are mixed into a multiplier M in [1, P) and an
  offset M2 with bijective rounds (affine map mod P, then a 31-bit rotation),
  so different keys with one salt, or different salts with one key, never
  share a stream.
- Per element with counter c: y = (c+1)*M mod P, z = y + M2 mod P and three
  rounds of x = rot(x*x + (y|z) mod P) then (x*x + z) mod P — the shape of
  Widynski's "Squares" generator, scaled to 31 bits so nothing overflows.
  Output in [0, P).  Streams are distinct for tensors below 2**31 elements.

Floats: a uniform takes the top 24 bits (11 for f16) of the hash times 2**-24,
which is exact in every float dtype, so ``uniform`` in [0, 1) and dropout
masks are bit-identical across backends and the same for f32 and f64.
``normal`` is Box–Muller on two uniforms (counters 2i and 2i+1) with the
first taken in (0, 1], so ``log`` never sees 0; its transcendental functions
may differ from onnxruntime's in the last ulp.

Ops: primitives ``random_bits`` ``random_uniform`` ``random_normal`` (shape
attr, symbolic dims allowed) and ``random_like`` (the runtime shape of a
tensor); composites ``uniform`` ``normal`` ``bernoulli`` ``rand_like``
``dropout`` that take the key from the builder.
"""
from __future__ import annotations

import math

import numpy as np

from ..dims import Sym
from ..types import FLOATS, ShapeError, TensorType, np_dtype
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import check_shape, i64, prod_dims

P = 2**31 - 1  # the Mersenne prime 2147483647: products of two residues fit in int64
MAX_ELEMENTS = 2**31  # streams stay distinct below this many counters
_A = 48271  # a primitive root mod P (MINSTD): the affine rounds are bijections
_KEY = np.array(12345, dtype=np.int64)  # samples use the harness's key


# -- integer/float backends -------------------------------------------------------
class _NumpyOps:
    """Kernel arithmetic on int64 / float arrays."""

    def const(self, value, dtype="i64"):
        return np.asarray(value, dtype=np_dtype(dtype))

    def add(self, a, b):
        return np.add(a, b)

    def mul(self, a, b):
        return np.multiply(a, b)

    def mod(self, a, m: int):  # Python (floored) modulo, as ONNX Mod with fmod=0
        return np.mod(a, m)

    def div(self, a, m: int):  # truncating, as ONNX Div on integers
        q = np.floor_divide(a, m)
        return q + ((a < 0) & (q * m != a))

    def mod_p(self, v):  # v in [0, 2**63): v mod P by the Mersenne fold
        r = (v & P) + (v >> 31)
        r = (r & P) + (r >> 31)
        return np.where(r >= P, r - P, r)

    def rot(self, x):  # x in [0, 2**31): rotate the 31-bit pattern left by 15
        return ((x & 0xFFFF) << 15) | (x >> 16)

    def shr(self, x, k: int):  # x >= 0: floor(x / 2**k)
        return x >> k

    def cast(self, x, dtype):
        return x.astype(np_dtype(dtype))

    def fconst(self, value, dtype):
        return np.asarray(value, dtype=np_dtype(dtype))

    log, sqrt, cos = staticmethod(np.log), staticmethod(np.sqrt), staticmethod(np.cos)


class _OnnxOps:
    """The same arithmetic as ONNX nodes (names in, names out)."""

    def __init__(self, e):
        self.e = e

    def _n(self, op, *ins, **attrs):
        return self.e.node(op, list(ins), 1, **attrs)[0]

    def const(self, value, dtype="i64"):
        return self.e.const(np.asarray(value, dtype=np_dtype(dtype)))

    def add(self, a, b):
        return self._n("Add", a, b)

    def mul(self, a, b):
        return self._n("Mul", a, b)

    def mod(self, a, m: int):
        return self._n("Mod", a, self.const(m), fmod=0)

    def div(self, a, m: int):
        return self._n("Div", a, self.const(m))

    def mod_p(self, v):
        return self.mod(v, P)

    def rot(self, x):
        lo = self.mul(self.mod(x, 1 << 16), self.const(1 << 15))
        return self.add(lo, self.div(x, 1 << 16))

    def shr(self, x, k: int):
        return self.div(x, 1 << k)

    def cast(self, x, dtype):
        return self._n("Cast", x, to=self.e.onnx_dtype(dtype))

    def fconst(self, value, dtype):
        return self.const(value, dtype)

    def log(self, x):
        return self._n("Log", x)

    def sqrt(self, x):
        return self._n("Sqrt", x)

    def cos(self, x):
        return self._n("Cos", x)


# -- the hash ------------------------------------------------------------------------
def _mix(ops, x):
    """A bijective round on [0, P): affine map mod P, then a 31-bit rotation."""
    return ops.rot(ops.mod_p(ops.add(ops.mul(x, ops.const(_A)), ops.const(0x5BD1E995 % P))))


def _stream(ops, key, salt: int):
    """(M in [1, P), M2 in [0, P)) for one op from the run key (any int64) and its salt."""
    k = ops.mod(key, P)  # in [0, P) even for negative keys
    hi = ops.mod(ops.div(key, P), P)  # the key's remaining high part
    a = _mix(ops, _mix(ops, k))
    a = _mix(ops, ops.mod_p(ops.add(a, hi)))
    a = _mix(ops, _mix(ops, ops.mod_p(ops.add(a, ops.const(salt)))))
    return ops.add(ops.mod(a, P - 1), ops.const(1)), _mix(ops, a)


def _hash(ops, key, salt: int, counter):
    """Hashed int64 values in [0, P), one per element of ``counter`` (ints in [0, 2**31))."""
    m, m2 = _stream(ops, key, salt)
    y = ops.mod_p(ops.mul(ops.add(counter, ops.const(1)), m))
    z = ops.mod_p(ops.add(y, m2))
    x = y
    for c in (y, z, y):
        x = ops.rot(ops.mod_p(ops.add(ops.mul(x, x), c)))
    return ops.mod_p(ops.add(ops.mul(x, x), z))


def _bits_of(dtype: str) -> int:
    return 11 if dtype == "f16" else 24  # exactly representable: u = k * 2**-bits < 1


def _compute(dtype: str) -> str:
    return "f32" if dtype == "f16" else dtype


def _unit(ops, h, dtype: str, open_low: bool = False):
    """A uniform in [0, 1) (or (0, 1] with ``open_low``) from hashes, in the compute dtype."""
    nb, cd = _bits_of(dtype), _compute(dtype)
    q = ops.shr(h, 31 - nb)
    if open_low:
        q = ops.add(q, ops.const(1))
    return ops.mul(ops.cast(q, cd), ops.fconst(2.0**-nb, cd))


def _affine(ops, u, scale: float, shift: float, cd: str):
    if scale != 1.0:
        u = ops.mul(u, ops.fconst(scale, cd))
    if shift != 0.0:
        u = ops.add(u, ops.fconst(shift, cd))
    return u


def _sample(ops, key, salt: int, index, kind: str, dtype: str, a: float = 0.0, b: float = 1.0):
    """Uniform in [a, b) or normal(mean a, std b) values of ``dtype`` at the counters ``index``."""
    cd = _compute(dtype)
    if kind == "uniform":
        out = _affine(ops, _unit(ops, _hash(ops, key, salt, index), dtype), b - a, a, cd)
    else:
        twice = ops.mul(index, ops.const(2))
        u1 = _unit(ops, _hash(ops, key, salt, twice), dtype, open_low=True)
        u2 = _unit(ops, _hash(ops, key, salt, ops.add(twice, ops.const(1))), dtype)
        r = ops.sqrt(ops.mul(ops.log(u1), ops.fconst(-2.0, cd)))
        z = ops.mul(r, ops.cos(ops.mul(u2, ops.fconst(2 * math.pi, cd))))
        out = _affine(ops, z, b, a, cd)
    return ops.cast(out, dtype) if cd != dtype else out


_NP = _NumpyOps()


def _np_index(shape) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.int64).reshape(shape)


def _onnx_index(e, shape=None, like=None) -> tuple[str, str]:
    """(flat int64 counters 0..n-1, the 1-D shape to reshape results to) in ONNX."""
    if like is not None:
        sh = e.node("Shape", [like], 1)[0]
        n = e.node("Size", [like], 1)[0]
    else:
        sh = i64(e, shape)
        if any(isinstance(d, Sym) for d in shape):
            n = e.node("ReduceProd", [sh], 1, keepdims=0)[0]
        else:
            n = e.const(np.array(math.prod(shape), dtype=np.int64))
    zero, one = e.const(np.array(0, dtype=np.int64)), e.const(np.array(1, dtype=np.int64))
    return e.node("Range", [zero, n, one], 1)[0], sh


# -- signature helpers -----------------------------------------------------------------
_SALT = Attr("int", doc="tells random ops of one graph apart (b.salt())")
_FLOAT = Attr("dtype", "f32", FLOATS)


def _check_key(op: str, key: TensorType) -> None:
    if key.dtype != "i64" or key.rank != 0:
        raise ShapeError(f"the key of `{op}` must be an i64 scalar, got {key}")


def _check_salt(op: str, salt: int) -> None:
    if not 0 <= salt < P:
        raise ShapeError(f"the salt of `{op}` must be in [0, 2**31 - 1), got {salt}")


def _check_size(op: str, shape) -> tuple:
    shape = check_shape(op, shape)
    fixed = prod_dims(d for d in shape if not isinstance(d, Sym))
    if fixed > MAX_ELEMENTS:  # refuse before anything is allocated
        raise ShapeError(f"`{op}` of {list(shape)} would hold {fixed} elements (limit {MAX_ELEMENTS})")
    return shape


def _key_samples(extra: dict) -> list[Sample]:
    key = (_KEY,)
    return [Sample(key, {"shape": (3, 4), "salt": 1, **extra}, grad=False),
            Sample(key, {"shape": (), "salt": 2, **extra}, grad=False, note="scalar"),
            Sample(key, {"shape": (2, 0), "salt": 3, **extra}, grad=False, note="empty"),
            Sample((np.array(-2**63, dtype=np.int64),), {"shape": (5,), "salt": 0, **extra}, grad=False,
                   note="most negative key"),
            Sample((np.array(2**63 - 1, dtype=np.int64),), {"shape": (2, 3), "salt": P - 1, **extra}, grad=False,
                   note="largest key and salt")]


class _Shaped(Op):
    """A random tensor of a given shape (attr; may hold Syms) from the run key."""

    family = "random"
    inputs = ("key",)
    differentiable = False
    kind = ""

    def _check(self, key, shape, salt):
        _check_key(self.name, key)
        _check_salt(self.name, salt)
        return _check_size(self.name, shape)


@register
class RandomBits(_Shaped):
    """``random_bits(key, shape, salt)``: i64 hashes of (key, salt, element index), in [0, 2**31 - 1)."""

    name = "random_bits"
    attrs = {"shape": Attr("shape"), "salt": _SALT}
    samples = _key_samples({})

    def shape(self, key, shape, salt):
        return TensorType("i64", self._check(key, shape, salt))

    def kernel(self, key, shape, salt):
        return _hash(_NP, key, salt, _np_index(shape))

    def onnx(self, e, ins, outs, shape, salt):
        index, sh = _onnx_index(e, shape)
        e.node("Reshape", [_hash(_OnnxOps(e), ins[0], salt, index), sh], outs)


@register
class RandomUniform(_Shaped):
    """``random_uniform(key, shape, salt, low=0, high=1, dtype=f32)``: uniform in [low, high)."""

    name = "random_uniform"
    attrs = {"shape": Attr("shape"), "salt": _SALT, "low": Attr("float", 0.0), "high": Attr("float", 1.0),
             "dtype": _FLOAT}
    samples = _key_samples({}) + [Sample((_KEY,), {"shape": (4, 3), "salt": 5, "low": -2.0, "high": 3.0},
                                         grad=False), Sample((_KEY,), {"shape": (7,), "salt": 6, "dtype": "f64"},
                                                             grad=False)]
    kind = "uniform"

    def _params(self, attrs):
        return attrs["low"], attrs["high"]

    def shape(self, key, shape, salt, dtype, **params):
        a, b = self._params(params)
        if not b >= a:
            raise ShapeError(f"`{self.name}` got an empty range: {a} > {b}")
        return TensorType(dtype, self._check(key, shape, salt))

    def kernel(self, key, shape, salt, dtype, **params):
        return _sample(_NP, key, salt, _np_index(shape), self.kind, dtype, *self._params(params))

    def onnx(self, e, ins, outs, shape, salt, dtype, **params):
        index, sh = _onnx_index(e, shape)
        flat = _sample(_OnnxOps(e), ins[0], salt, index, self.kind, dtype, *self._params(params))
        e.node("Reshape", [flat, sh], outs)


@register
class RandomNormal(RandomUniform):
    """``random_normal(key, shape, salt, mean=0, std=1, dtype=f32)``: Gaussian samples (Box–Muller)."""

    name = "random_normal"
    attrs = {"shape": Attr("shape"), "salt": _SALT, "mean": Attr("float", 0.0), "std": Attr("float", 1.0),
             "dtype": _FLOAT}
    samples = _key_samples({}) + [Sample((_KEY,), {"shape": (4, 3), "salt": 5, "mean": 2.0, "std": 0.5},
                                         grad=False), Sample((_KEY,), {"shape": (7,), "salt": 6, "dtype": "f64"},
                                                             grad=False)]
    kind = "normal"

    def _params(self, attrs):
        return attrs["mean"], attrs["std"]


@register
class RandomLike(Op):
    """``random_like(x, key, kind, salt)``: uniform [0, 1) or standard normal values with the
    dtype and (run-time) shape of the float tensor ``x``; x's values are not read."""

    name, family = "random_like", "random"
    inputs = ("x", "key")
    attrs = {"kind": Attr("str", "uniform", ("uniform", "normal")), "salt": _SALT}
    differentiable = False
    samples = [Sample((Arg((3, 4)), _KEY), {"kind": "uniform", "salt": 1}, grad=False),
               Sample((Arg((2, 3, 2)), _KEY), {"kind": "normal", "salt": 2}, grad=False),
               Sample((Arg(()), _KEY), {"kind": "uniform", "salt": 3}, grad=False, note="scalar"),
               Sample((Arg((0, 3)), _KEY), {"kind": "normal", "salt": 4}, grad=False, note="empty")]

    def shape(self, x, key, kind, salt):
        if x.dtype not in FLOATS:
            raise ShapeError(f"`random_like` needs a float tensor, got {x}")
        _check_key(self.name, key)
        _check_salt(self.name, salt)
        return x

    def kernel(self, x, key, kind, salt):
        return _sample(_NP, key, salt, _np_index(x.shape), kind, x.dtype.name[0] + str(8 * x.dtype.itemsize))

    def onnx(self, e, ins, outs, kind, salt):
        index, sh = _onnx_index(e, like=ins[0])
        flat = _sample(_OnnxOps(e), ins[1], salt, index, kind, e.in_types[0].dtype)
        e.node("Reshape", [flat, sh], outs)


# -- composites users call ---------------------------------------------------------------
def _salt(b, salt):
    return b.salt() if salt is None else salt


@register
class Uniform(Composite):
    """``uniform(shape, low=0, high=1, dtype=f32)``: uniform samples, fresh per graph op and run key."""

    name, family = "uniform", "random"
    inputs = ()
    attrs = {"shape": Attr("shape"), "low": Attr("float", 0.0), "high": Attr("float", 1.0), "dtype": _FLOAT}
    differentiable = False
    samples = [Sample((), {"shape": (3, 4)}), Sample((), {"shape": (5,), "low": -1.0, "high": 1.0, "dtype": "f64"})]

    def expand(self, b, shape, low, high, dtype):
        return b.random_uniform(b.rng_key(), shape=shape, salt=b.salt(), low=low, high=high, dtype=dtype)


@register
class Normal(Composite):
    """``normal(shape, mean=0, std=1, dtype=f32)``: Gaussian samples."""

    name, family = "normal", "random"
    inputs = ()
    attrs = {"shape": Attr("shape"), "mean": Attr("float", 0.0), "std": Attr("float", 1.0), "dtype": _FLOAT}
    differentiable = False
    samples = [Sample((), {"shape": (3, 4)}), Sample((), {"shape": (5,), "mean": 1.0, "std": 2.0, "dtype": "f64"})]

    def expand(self, b, shape, mean, std, dtype):
        return b.random_normal(b.rng_key(), shape=shape, salt=b.salt(), mean=mean, std=std, dtype=dtype)


@register
class RandLike(Composite):
    """``rand_like(x, kind="uniform"|"normal", salt=None)``: random values shaped like ``x``
    (its run-time shape: works for symbolic dims); ``salt`` None takes a fresh one."""

    name, family = "rand_like", "random"
    attrs = {"kind": Attr("str", "uniform", ("uniform", "normal")), "salt": Attr("any", None)}
    differentiable = False
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((2, 5)),), {"kind": "normal", "salt": 7})]

    def expand(self, b, x, kind, salt):
        return b.random_like(x, b.rng_key(), kind=kind, salt=_salt(b, salt))


@register
class Bernoulli(Composite):
    """``bernoulli(p)``: 1 with probability p, else 0, elementwise, in p's dtype and shape."""

    name, family = "bernoulli", "random"
    inputs = ("p",)
    differentiable = False
    samples = [Sample((Arg((3, 4), "unit"),)), Sample((Arg((), "unit"),))]

    def expand(self, b, p):
        u = b.random_like(p, b.rng_key(), kind="uniform", salt=b.salt())
        return b.cast(b.lt(u, p), dtype=b.type(p).dtype)


@register
class Dropout(Composite):
    """``dropout(x, rate=0.5)``: in train mode zero each element with probability ``rate``
    and scale the rest by 1/(1 - rate); in eval mode (or rate 0) ``x`` itself."""

    name, family = "dropout", "random"
    attrs = {"rate": Attr("float", 0.5)}
    samples = [Sample((Arg((4, 5)),)), Sample((Arg((2, 3, 4)),), {"rate": 0.1}),
               Sample((Arg((3,)),), {"rate": 0.0}, note="identity"), Sample((Arg(()),), {"rate": 0.9})]

    def expand(self, b, x, rate):
        if not 0.0 <= rate < 1.0:
            raise b.error("E0102", f"the dropout rate must be in [0, 1), got {rate}")
        if b.type(x).dtype not in FLOATS:
            raise b.error("E0103", f"`dropout` needs a float tensor, got {b.type(x)}")
        if b.mode != "train" or rate == 0.0:
            return x
        keep = b.ge(b.random_like(x, b.rng_key(), kind="uniform", salt=b.salt()), rate)
        # where, not a multiply by the mask: an inf/NaN in a dropped element stays dropped
        return b.where(keep, b.mul(x, 1.0 / (1.0 - rate)), 0.0)

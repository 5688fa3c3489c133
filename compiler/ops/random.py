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
by construction (the NumPy backend rotates with bit operations, which equal
the ONNX Mod/Div/Mul/Add form on non-negative values).

- Per op, the key and salt are mixed into one scalar with bijective rounds
  (affine map mod P, then a 31-bit rotation), so different keys below P with
  one salt, or different salts with one key, never share a stream; per lane
  that scalar gives a multiplier M in [1, P) and an offset M2.
- Per element with counter c: y = (c+1)*M mod P, z = y + M2 mod P and three
  rounds of x = rot(x*x + (y|z) mod P) then (x*x + z) mod P — the shape of
  Widynski's "Squares" generator, scaled to 31 bits so nothing overflows.
  Output in [0, P).  Tensors are limited to P - 1 elements.

Floats: a uniform is the top 24 bits (11 for f16) of the hash times 2**-24
(2**-11), exact in every float dtype, so uniforms in [0, 1) and dropout masks
are bit-identical across backends and the same for f32 and f64 (a scaled
range [low, high) may reach ``high`` through rounding).  ``normal`` is
Box–Muller on uniforms from two further streams (lanes) of the op, the first
taken in (0, 1] so ``log`` never sees 0 (|z| <= 5.8); its log/sqrt/cos may
differ from onnxruntime's in the last ulp.

Ops: primitives ``random_bits`` ``random_uniform`` ``random_normal`` (shape
attr, symbolic dims allowed) and ``random_like`` (the runtime shape of a
tensor); composites ``uniform`` ``normal`` ``bernoulli`` ``rand_like``
``dropout`` that take the key from the builder.
"""
from __future__ import annotations

import math

import numpy as np

from ..dims import Sym
from ..types import FLOATS, ShapeError, TensorType, dtype_name, np_dtype
from .registry import Arg, Attr, Composite, Op, Sample, register
from .shape import check_shape, i64, prod_dims

P = 2**31 - 1  # the Mersenne prime 2147483647: products of two residues fit in int64
MAX_ELEMENTS = P - 1  # counters c + 1 in [1, P) keep (c + 1) * M mod P distinct
_A = 48271  # a primitive root mod P (MINSTD): the affine rounds are bijections
_CHUNK = 1 << 16  # counters per kernel chunk (512 KiB int64 temporaries)
_KEY = np.array(12345, dtype=np.int64)  # samples use the harness's key


# -- integer/float backends -------------------------------------------------------
class _NumpyOps:
    """Kernel arithmetic on int64 / float arrays (equal to _OnnxOps on the values _hash makes)."""

    add, mul, log, sqrt, cos = (staticmethod(f) for f in (np.add, np.multiply, np.log, np.sqrt, np.cos))
    const = staticmethod(lambda value, dtype="i64": np.asarray(value, dtype=np_dtype(dtype)))
    mod = staticmethod(np.mod)  # floored, as ONNX Mod with fmod=0
    mod_p = staticmethod(lambda v: np.mod(v, P))  # numpy divides by a constant fast (faster than a Mersenne fold)
    div = staticmethod(lambda a, m: np.floor_divide(a, m) + ((a < 0) & (np.mod(a, m) != 0)))  # truncating
    rot = staticmethod(lambda x: ((x & 0xFFFF) << 15) | (x >> 16))  # x < 2**31: rotate 31 bits left by 15
    shr = staticmethod(lambda x, k: x >> k)  # x >= 0: floor(x / 2**k)
    cast = staticmethod(lambda x, dtype: x.astype(np_dtype(dtype)))

class _OnnxOps:
    """The same arithmetic as ONNX nodes (names in, names out)."""

    _UNARY_BINARY = {"add": "Add", "mul": "Mul", "log": "Log", "sqrt": "Sqrt", "cos": "Cos"}

    def __init__(self, e):
        self.e = e

    def __getattr__(self, name):
        if name not in self._UNARY_BINARY:
            raise AttributeError(name)
        return lambda *ins: self._n(self._UNARY_BINARY[name], *ins)

    def _n(self, op, *ins, **attrs):
        return self.e.node(op, list(ins), 1, **attrs)[0]

    def const(self, value, dtype="i64"):
        return self.e.const(np.asarray(value, dtype=np_dtype(dtype)))

    def mod(self, a, m: int):
        return self._n("Mod", a, self.const(m), fmod=0)

    def div(self, a, m: int):
        return self._n("Div", a, self.const(m))

    def mod_p(self, v):
        return self.mod(v, P)

    def rot(self, x):
        return self.add(self.mul(self.mod(x, 1 << 16), self.const(1 << 15)), self.div(x, 1 << 16))

    def shr(self, x, k: int):
        return self.div(x, 1 << k)

    def cast(self, x, dtype):
        return self._n("Cast", x, to=self.e.onnx_dtype(dtype))


# -- the hash ------------------------------------------------------------------------
def _mix(ops, x):
    """A bijective round on [0, P): affine map mod P, then a 31-bit rotation."""
    return ops.rot(ops.mod_p(ops.add(ops.mul(x, ops.const(_A)), ops.const(0x5BD1E995 % P))))


def _stream(ops, key, salt: int):
    """A scalar in [0, P) naming one op's streams, from the run key (any int64) and its salt."""
    k = ops.mod(key, P)  # in [0, P) even for negative keys
    hi = ops.mod(ops.div(key, P), P)  # the key's remaining high part
    a = _mix(ops, _mix(ops, k))
    a = _mix(ops, ops.mod_p(ops.add(a, hi)))
    return _mix(ops, _mix(ops, ops.mod_p(ops.add(a, ops.const(salt)))))


def _hash(ops, stream, counter, lane: int = 0):
    """Hashed int64 values in [0, P), one per element of ``counter`` (ints in [0, 2**31));
    ``lane`` picks one of several independent streams of the op."""
    a = _mix(ops, ops.mod_p(ops.add(stream, ops.const(lane)))) if lane else stream
    m, m2 = ops.add(ops.mod(a, P - 1), ops.const(1)), _mix(ops, a)  # M in [1, P): c -> c*M is injective
    y = ops.mod_p(ops.mul(ops.add(counter, ops.const(1)), m))
    z = ops.mod_p(ops.add(y, m2))
    x = y
    for c in (y, z, y):
        x = ops.rot(ops.mod_p(ops.add(ops.mul(x, x), c)))
    return ops.mod_p(ops.add(ops.mul(x, x), z))


def _compute(dtype: str) -> str:
    return "f32" if dtype == "f16" else dtype


def _unit(ops, h, dtype: str, open_low: bool = False):
    """A uniform in [0, 1) (or (0, 1] with ``open_low``) from hashes, in the compute dtype;
    exact (an integer below 2**24 times a power of two) so every backend agrees."""
    nb, cd = 11 if dtype == "f16" else 24, _compute(dtype)  # u = q * 2**-nb < 1 is exact in dtype
    q = ops.shr(h, 31 - nb)
    if open_low:
        q = ops.add(q, ops.const(1))
    return ops.mul(ops.cast(q, cd), ops.const(2.0**-nb, cd))


def _affine(ops, u, scale: float, shift: float, cd: str):
    if scale != 1.0:
        u = ops.mul(u, ops.const(scale, cd))
    if shift != 0.0:
        u = ops.add(u, ops.const(shift, cd))
    return u


def _sample(ops, stream, index, kind: str, dtype: str, a: float = 0.0, b: float = 1.0):
    """Hashes (kind "bits"), uniform in [a, b) or normal(mean a, std b) values of ``dtype``
    at the counters ``index``."""
    cd = _compute(dtype)
    if kind == "bits":
        return _hash(ops, stream, index)
    if kind == "uniform":
        out = _affine(ops, _unit(ops, _hash(ops, stream, index), dtype), b - a, a, cd)
    else:
        u1 = _unit(ops, _hash(ops, stream, index, lane=1), dtype, open_low=True)
        u2 = _unit(ops, _hash(ops, stream, index, lane=2), dtype)
        r = ops.sqrt(ops.mul(ops.log(u1), ops.const(-2.0, cd)))
        z = ops.mul(r, ops.cos(ops.mul(u2, ops.const(2 * math.pi, cd))))
        out = _affine(ops, z, b, a, cd)
    return ops.cast(out, dtype) if cd != dtype else out


_NP = _NumpyOps()


def _np_sample(key, salt: int, shape, kind: str, dtype: str, *params) -> np.ndarray:
    """The kernel: ``_sample`` over chunks of counters, so the temporaries stay in cache
    (about 3x faster than whole-tensor temporaries, which are page-faulted in afresh)."""
    stream, n = _stream(_NP, key, salt), math.prod(shape)
    out = np.empty(n, dtype=np_dtype(dtype))
    for lo in range(0, n, _CHUNK):
        out[lo:lo + _CHUNK] = _sample(_NP, stream, np.arange(lo, min(n, lo + _CHUNK)), kind, dtype, *params)
    return out.reshape(shape)


def _onnx_index(e, shape=None, like=None) -> tuple[str, str]:
    """(flat int64 counters 0..n-1, the 1-D shape to reshape results to) in ONNX."""
    if like is not None:
        sh = e.node("Shape", [like], 1)[0]
        n = e.node("Size", [like], 1)[0]
    else:
        sh = i64(e, shape)
        if any(isinstance(d, Sym) for d in shape):
            n = e.int_product(sh, len(shape))
        else:
            n = _scalar(e, math.prod(shape))
    return e.node("Range", [_scalar(e, 0), n, _scalar(e, 1)], 1)[0], sh


def _scalar(e, v: int) -> str:
    # a Constant node, not e.const: Range needs rank-0 inputs and e.const stores 0-d arrays as [1]
    return e.node("Constant", [], 1, value=np.array(v, dtype=np.int64))[0]


# -- signature helpers -----------------------------------------------------------------
_SALT = Attr("int", doc="tells random ops of one graph apart (b.salt())")
_FLOAT = Attr("dtype", "f32", FLOATS)


def _check_key(op: str, key: TensorType, salt: int) -> None:
    if key.dtype != "i64" or key.rank != 0:
        raise ShapeError(f"the key of `{op}` must be an i64 scalar, got {key}")
    if not 0 <= salt < P:
        raise ShapeError(f"the salt of `{op}` must be in [0, 2**31 - 1), got {salt}")


def _check_size(op: str, shape) -> tuple:
    shape = check_shape(op, shape)
    fixed = prod_dims(d for d in shape if not isinstance(d, Sym))
    if fixed > MAX_ELEMENTS:  # refuse before anything is allocated
        raise ShapeError(f"`{op}` of {list(shape)} would hold {fixed} elements (limit {MAX_ELEMENTS})")
    return shape


def _key_samples(extra: dict) -> list[Sample]:
    big, small = np.array(2**63 - 1, dtype=np.int64), np.array(-2**63, dtype=np.int64)
    rows = [((_KEY,), {"shape": (3, 4), "salt": 1}, ""), ((_KEY,), {"shape": (), "salt": 2}, "scalar"),
            ((_KEY,), {"shape": (2, 0), "salt": 3}, "empty"), ((small,), {"shape": (5,), "salt": 0}, "least key"),
            ((big,), {"shape": (2, 3), "salt": P - 1}, "largest key and salt")]
    if extra:
        rows += [((_KEY,), {"shape": (4, 3), "salt": 5, **extra}, ""),
                 ((_KEY,), {"shape": (7,), "salt": 6, "dtype": "f64"}, "")]
    return [Sample(ins, attrs, note=note) for ins, attrs, note in rows]


class _Shaped(Op):
    """A random tensor of a given shape (attr; may hold Syms) from the run key.
    Kernel and lowering are shared; subclasses name the ``kind`` and its two float params."""

    family = "random"
    inputs = ("key",)
    differentiable = False
    kind, params = "bits", ()

    def shape(self, key, shape, salt, dtype="i64", **params):
        _check_key(self.name, key, salt)
        a, b = (params[k] for k in self.params) if self.params else (0.0, 1.0)
        if self.kind == "uniform" and not b >= a or self.kind == "normal" and not b >= 0:
            raise ShapeError(f"`{self.name}` got invalid parameters {params}")
        return TensorType(dtype, _check_size(self.name, shape))

    def kernel(self, key, shape, salt, dtype="i64", **params):
        return _np_sample(key, salt, shape, self.kind, dtype, *(params[k] for k in self.params))

    def onnx(self, e, ins, outs, shape, salt, dtype="i64", **params):
        index, sh = _onnx_index(e, shape)
        ops = _OnnxOps(e)
        flat = _sample(ops, _stream(ops, ins[0], salt), index, self.kind, dtype, *(params[k] for k in self.params))
        e.node("Reshape", [flat, sh], outs, allowzero=1)  # the dims are sizes, never "copy"


@register
class RandomBits(_Shaped):
    """``random_bits(key, shape, salt)``: i64 hashes of (key, salt, element index), in [0, 2**31 - 1)."""

    name = "random_bits"
    attrs = {"shape": Attr("shape"), "salt": _SALT}
    samples = _key_samples({})


@register
class RandomUniform(_Shaped):
    """``random_uniform(key, shape, salt, low=0, high=1, dtype=f32)``: uniform in [low, high)."""

    name, kind, params = "random_uniform", "uniform", ("low", "high")
    attrs = {"shape": Attr("shape"), "salt": _SALT, "low": Attr("float", 0.0), "high": Attr("float", 1.0),
             "dtype": _FLOAT}
    samples = _key_samples({"low": -2.0, "high": 3.0})


@register
class RandomNormal(_Shaped):
    """``random_normal(key, shape, salt, mean=0, std=1, dtype=f32)``: Gaussian samples (Box–Muller)."""

    name, kind, params = "random_normal", "normal", ("mean", "std")
    attrs = {"shape": Attr("shape"), "salt": _SALT, "mean": Attr("float", 0.0), "std": Attr("float", 1.0),
             "dtype": _FLOAT}
    samples = _key_samples({"mean": 2.0, "std": 0.5})


@register
class RandomLike(Op):
    """``random_like(x, key, kind, salt)``: uniform [0, 1) or standard normal values with the
    dtype and (run-time) shape of the float tensor ``x``; x's values are not read."""

    name, family = "random_like", "random"
    inputs = ("x", "key")
    attrs = {"kind": Attr("str", "uniform", ("uniform", "normal")), "salt": _SALT}
    differentiable = False
    samples = [Sample((Arg((3, 4)), _KEY), {"kind": "uniform", "salt": 1}),
               Sample((Arg((2, 3, 2)), _KEY), {"kind": "normal", "salt": 2}),
               Sample((Arg(()), _KEY), {"kind": "uniform", "salt": 3}, note="scalar"),
               Sample((Arg((0, 3)), _KEY), {"kind": "normal", "salt": 4}, note="empty")]

    def shape(self, x, key, kind, salt):
        if x.dtype not in FLOATS:
            raise ShapeError(f"`random_like` needs a float tensor, got {x}")
        _check_key(self.name, key, salt)
        return x

    def kernel(self, x, key, kind, salt):
        return _np_sample(key, salt, x.shape, kind, dtype_name(x.dtype))

    def onnx(self, e, ins, outs, kind, salt):
        index, sh = _onnx_index(e, like=ins[0])
        ops = _OnnxOps(e)
        flat = _sample(ops, _stream(ops, ins[1], salt), index, kind, e.in_types[0].dtype)
        e.node("Reshape", [flat, sh], outs, allowzero=1)  # the dims are sizes, never "copy"


# -- composites users call ---------------------------------------------------------------
class _Fresh(Composite):
    """A shaped random op with the builder's key and a fresh salt."""

    family, inputs, differentiable, primitive = "random", (), False, ""

    def expand(self, b, **attrs):
        return b.apply(self.primitive, b.rng_key(), salt=b.salt(), **attrs)


@register
class Uniform(_Fresh):
    """``uniform(shape, low=0, high=1, dtype=f32)``: uniform samples in [low, high)."""

    name, primitive = "uniform", "random_uniform"
    attrs = {"shape": Attr("shape"), "low": Attr("float", 0.0), "high": Attr("float", 1.0), "dtype": _FLOAT}
    samples = [Sample((), {"shape": (3, 4)}), Sample((), {"shape": (5,), "low": -1.0, "high": 1.0, "dtype": "f64"})]


@register
class Normal(_Fresh):
    """``normal(shape, mean=0, std=1, dtype=f32)``: Gaussian samples."""

    name, primitive = "normal", "random_normal"
    attrs = {"shape": Attr("shape"), "mean": Attr("float", 0.0), "std": Attr("float", 1.0), "dtype": _FLOAT}
    samples = [Sample((), {"shape": (3, 4)}), Sample((), {"shape": (5,), "mean": 1.0, "std": 2.0, "dtype": "f64"})]


@register
class RandLike(Composite):
    """``rand_like(x, kind="uniform"|"normal", salt=None)``: random values shaped like ``x``
    (its run-time shape: works for symbolic dims); ``salt`` None takes a fresh one."""

    name, family = "rand_like", "random"
    attrs = {"kind": Attr("str", "uniform", ("uniform", "normal")), "salt": Attr("any", None)}
    differentiable = False
    samples = [Sample((Arg((3, 4)),)), Sample((Arg((2, 5)),), {"kind": "normal", "salt": 7})]

    def expand(self, b, x, kind, salt):
        return b.random_like(x, b.rng_key(), kind=kind, salt=b.salt() if salt is None else salt)


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

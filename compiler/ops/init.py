"""Parameter initialisers: host-side, run once when a model's parameters are created.

Not an op family (nothing here enters a graph).  A ``param`` node carries
``init = (name, kwargs)``; the runtime calls :func:`initialize` with the
parameter's concrete shape and dtype and a seeded ``np.random.Generator``, so
the same seed gives the same parameters.  Values are drawn in float64 and then
cast, so f32 and f64 models start from the same numbers (up to rounding).

Fans follow dlc's layouts: a rank-2 weight is ``[in, out]`` (``x @ W``), so
fan_in = shape[0] and fan_out = shape[1]; a convolution kernel is
``[out_c, in_c, *window]``, so fan_in = in_c * prod(window) and fan_out =
out_c * prod(window) (the usual receptive-field rule); rank 1 has fan_in =
fan_out = shape[0]; a scalar has 1 and 1.

=================================  ==================================================
initialiser (aliases)              values
=================================  ==================================================
zeros, ones                        0, 1 (any dtype)
constant(value=0)                  value (any dtype)
normal(std=1, mean=0)              N(mean, std²); positional order std first, so
                                   ``normal(0.02)`` is std 0.02 as in the language guide
truncated_normal(std=1, mean=0)    N(mean, std²) redrawn outside mean ± 2 std
uniform(low=-1, high=1)            U[low, high)
glorot_uniform / xavier_uniform    U[-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
glorot_normal / xavier_normal      N(0, s²), s = gain * sqrt(2 / (fan_in + fan_out))
he_uniform / kaiming_uniform       U[-a, a), a = gain * sqrt(3 / fan); gain = sqrt(2)
he_normal / kaiming_normal         N(0, s²), s = gain / sqrt(fan); gain = sqrt(2)
lecun_uniform, lecun_normal        as he_*, with gain = 1 (fan = fan_in)
orthogonal(gain=1)                 gain * a (semi-)orthogonal matrix: the tensor
                                   flattened to [shape[0], rest] has orthonormal rows
                                   or columns (whichever are fewer)
=================================  ==================================================

``he_*`` / ``kaiming_*`` take ``mode="fan_in"`` (default) or ``"fan_out"``.
Bad names, unknown or ill-typed arguments raise ``ValueError`` naming what
was expected.
"""
from __future__ import annotations

import difflib
import math
from typing import Callable

import numpy as np

from ..types import DTYPES, FLOATS

_SQRT2 = math.sqrt(2.0)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a parameter of ``shape`` under dlc's layouts (module docstring)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    window = math.prod(shape[2:])
    return shape[1] * window, shape[0] * window


# -- the initialisers: (shape, rng, **kwargs) -> float64 array ---------------------------
def _zeros(shape, rng, size=None):
    return np.zeros(shape if size is None else size)


def _ones(shape, rng, size=None):
    return np.ones(shape if size is None else size)


def _constant(shape, rng, value, size=None):
    return np.full(shape if size is None else size, value)


def _normal(shape, rng, std, mean, size=None):
    return rng.normal(mean, std, size=shape if size is None else size)


def _truncated_normal(shape, rng, std, mean, size=None):
    z = rng.standard_normal(size=shape if size is None else size)
    bad = np.abs(z) > 2.0
    while bad.any():  # redraw the tails: each pass keeps ~95% of the rest, so this ends fast
        z[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(z) > 2.0
    return mean + std * z


def _uniform(shape, rng, low, high, size=None):
    return rng.uniform(low, high, size=shape if size is None else size)


def _glorot_uniform(shape, rng, gain, size=None):
    fan_in, fan_out = fans(shape)
    limit = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-limit, limit, size=shape if size is None else size)


def _glorot_normal(shape, rng, gain, size=None):
    fan_in, fan_out = fans(shape)
    return rng.normal(0.0, gain * math.sqrt(2.0 / max(fan_in + fan_out, 1)), size=shape if size is None else size)


def _fan(shape, mode: str) -> int:
    fan_in, fan_out = fans(shape)
    return max(fan_in if mode == "fan_in" else fan_out, 1)


def _he_uniform(shape, rng, gain, mode, size=None):
    limit = gain * math.sqrt(3.0 / _fan(shape, mode))
    return rng.uniform(-limit, limit, size=shape if size is None else size)


def _he_normal(shape, rng, gain, mode, size=None):
    return rng.normal(0.0, gain / math.sqrt(_fan(shape, mode)), size=shape if size is None else size)


def _orthogonal(shape, rng, gain):
    if len(shape) < 2:
        raise ValueError(f"`orthogonal` needs a parameter of rank >= 2, got shape {list(shape)}")
    rows, cols = shape[0], math.prod(shape[1:])
    if rows * cols == 0:
        return np.zeros(shape)
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    # fix the signs so the result is uniformly distributed (Haar), not biased by QR's convention
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape)


# name -> (function, {parameter: default} in positional order, float-only?); every function but
# orthogonal draws independent values, so it can fill a large parameter chunk by chunk
# (``size=``) with the scale of the whole ``shape``
_Spec = tuple[Callable, dict, bool]
_TABLE: dict[str, _Spec] = {
    "zeros": (_zeros, {}, False),
    "ones": (_ones, {}, False),
    "constant": (_constant, {"value": 0.0}, False),
    "normal": (_normal, {"std": 1.0, "mean": 0.0}, True),
    "truncated_normal": (_truncated_normal, {"std": 1.0, "mean": 0.0}, True),
    "uniform": (_uniform, {"low": -1.0, "high": 1.0}, True),
    "glorot_uniform": (_glorot_uniform, {"gain": 1.0}, True),
    "glorot_normal": (_glorot_normal, {"gain": 1.0}, True),
    "he_uniform": (_he_uniform, {"gain": _SQRT2, "mode": "fan_in"}, True),
    "he_normal": (_he_normal, {"gain": _SQRT2, "mode": "fan_in"}, True),
    "lecun_uniform": (_he_uniform, {"gain": 1.0, "mode": "fan_in"}, True),
    "lecun_normal": (_he_normal, {"gain": 1.0, "mode": "fan_in"}, True),
    "orthogonal": (_orthogonal, {"gain": 1.0}, True),
}
_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
            "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}
_MODES = ("fan_in", "fan_out")


def init_names() -> list[str]:
    """Every initialiser name, aliases included, sorted."""
    return sorted([*_TABLE, *_ALIASES])


def init_params(name: str) -> dict:
    """The parameters of initialiser ``name`` with their defaults, in positional order
    (so a caller can bind ``normal(0.02)`` to ``{"std": 0.02}``)."""
    return dict(_lookup(name)[1])


def scratch_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Temporary memory ``initialize`` needs beyond the result (float64 draws, QR)."""
    if _ALIASES.get(name, name) == "orthogonal" and len(shape) >= 2:
        return 4 * 8 * shape[0] * math.prod(shape[1:])  # the draw, Q, R and the scaled copy, float64
    return 2 * 8 * min(math.prod(shape), CHUNK)


def initialize(name: str, kwargs: dict, shape: tuple[int, ...], dtype: str,
               rng: np.random.Generator) -> np.ndarray:
    """A new array of ``shape`` and dtype ``dtype`` (dlc name: f32, i64, …) filled by the
    initialiser ``name`` with arguments ``kwargs``, drawing from ``rng``."""
    fn, params, float_only = _lookup(name)
    shape = _check_shape(name, shape)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype `{dtype}` for initialiser `{name}`; expected one of {', '.join(DTYPES)}")
    if float_only and dtype not in FLOATS:
        raise ValueError(f"initialiser `{name}` makes random floats; the parameter is {dtype}")
    args = _bind(name, params, kwargs)
    target = np.dtype(DTYPES[dtype])
    if fn is not _orthogonal and math.prod(shape) > CHUNK:
        return _draw_in_chunks(fn, shape, rng, args, target)
    values = fn(shape, rng, **args)
    if dtype not in FLOATS and not np.all(values == np.round(values)):
        raise ValueError(f"initialiser `{name}` with {args} does not give whole numbers for a {dtype} parameter")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below, by name
        out = np.asarray(values, dtype=target).reshape(shape).copy()
    if not np.isfinite(out).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(f"initialiser `{name}` with {args} gives {out[bad]} at index {list(bad)} in {dtype}")
    return out



# Large parameters are drawn a chunk at a time straight into an array of their own dtype, so
# a f32[16384, 16384] never needs its float64 twice over; the generator's stream is the same
# whether drawn at once or in pieces, so the values are those of a single draw (truncated_normal's
# redraws excepted: they happen per chunk).
CHUNK = 1 << 20


def _draw_in_chunks(fn, shape, rng, args, target: np.dtype) -> np.ndarray:
    out = np.empty(math.prod(shape), dtype=target)
    for start in range(0, out.size, CHUNK):
        stop = min(start + CHUNK, out.size)
        values = fn(shape, rng, **args, size=stop - start)
        if target.kind != "f" and not np.all(values == np.round(values)):
            raise ValueError(f"initialiser with {args} does not give whole numbers for a {target} parameter")
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(target, copy=False)
        if target.kind == "f" and not np.isfinite(values).all():
            bad = start + int(np.argmax(~np.isfinite(values)))
            raise ValueError(f"initialiser gives {values[bad - start]} at index {list(np.unravel_index(bad, shape))}")
        out[start:stop] = values
    return out.reshape(shape)


def _lookup(name: str) -> _Spec:
    if not isinstance(name, str) or _ALIASES.get(name, name) not in _TABLE:
        close = difflib.get_close_matches(str(name), init_names(), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ValueError(f"unknown initialiser `{name}`{hint} (known: {', '.join(init_names())})")
    return _TABLE[_ALIASES.get(name, name)]


def _check_shape(name: str, shape) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
                               for d in dims):
        raise ValueError(f"initialiser `{name}` needs a concrete shape of non-negative ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def _bind(name: str, params: dict, kwargs: dict) -> dict:
    """Defaults filled in, every argument checked (kind and range)."""
    kwargs = dict(kwargs or {})
    extra = [k for k in kwargs if k not in params]
    if extra:
        takes = ", ".join(params) if params else "no arguments"
        raise ValueError(f"initialiser `{name}` has no argument `{extra[0]}` (it takes {takes})")
    args = {**params, **kwargs}
    for key, value in args.items():
        if key == "mode":
            if value not in _MODES:
                raise ValueError(f"argument `mode` of `{name}` must be \"fan_in\" or \"fan_out\", got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"argument `{key}` of `{name}` must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"argument `{key}` of `{name}` must be finite, got {value}")
        args[key] = float(value)
        if key in ("std", "gain") and value < 0:
            raise ValueError(f"argument `{key}` of `{name}` must be >= 0, got {value}")
    if "low" in args and args["low"] > args["high"]:
        raise ValueError(f"`{name}` got an empty range: low = {args['low']} > high = {args['high']}")
    return args


__all__ = ["fans", "init_names", "init_params", "initialize", "scratch_bytes"]

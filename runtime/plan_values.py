"""How a plan takes values: the dtype each declared type runs as, a fed value
converted to it (never changing values), and symbolic dims in attrs resolved."""
from __future__ import annotations

import numpy as np

from dlc.compiler.dims import Sym
from dlc.compiler.types import FLOATS, dtype_name, np_dtype
from dlc.grammar.errors import DlcError


def run_dtype(dtype: str, compute_dtype=None) -> np.dtype:
    """The NumPy dtype a value declared ``dtype`` runs as (``compute_dtype`` for floats when given)."""
    if compute_dtype is not None and dtype in FLOATS:
        return np.dtype(compute_dtype)
    return np.dtype(np_dtype(dtype))


def as_declared(value, target: np.dtype, name: str = "", kind: str = "input") -> np.ndarray:
    """``value`` as ``target``; a cast that would change values (2.5 → 2, complex → real) is E0401."""
    arr = np.asarray(value)
    if arr.dtype == target:
        return arr
    lossy = arr.dtype.kind == "c" or arr.dtype.kind == "f" and target.kind in "iub" and not (
        np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    if lossy or arr.dtype.kind not in "biufc":
        raise DlcError("E0401", f"{kind} `{name}` is {arr.dtype}, which cannot become {dtype_name(target)} "
                       "without changing its values", hint=f"give {dtype_name(target)} values")
    return arr.astype(target)


def resolve_dims(value, env):
    """``value`` (an attr: a Sym, or dicts, tuples and lists of them) with its dims bound by ``env``."""
    if isinstance(value, Sym):
        out = value.evaluate(env)
        if isinstance(out, Sym):
            raise DlcError("E0105", f"dim {out} is not bound by any input at run time")
        return out
    if isinstance(value, dict):
        return {k: resolve_dims(v, env) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(resolve_dims(v, env) for v in value)
    if isinstance(value, list):
        return [resolve_dims(v, env) for v in value]
    return value

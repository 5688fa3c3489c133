"""Op calls: positional and keyword arguments mapped onto an op's tensor inputs
and attributes (``apply_op``), and lists of numbers met by a tensor turned into
constant tensors (``literal_tensor``).
"""
from __future__ import annotations

import numpy as np

from dlc.grammar.errors import suggest

from ..dims import Sym
from ..graph import Value
from ..ops.registry import REQUIRED, get_op
from ..types import ShapeError, np_dtype
from .frame import DType, Frame, LayerRef, OpRef, describe, is_tensor


def apply_op(frame: Frame, op: str, args: list, kwargs: dict, loc, arg_locs=None, kw_locs=None):
    """Map positional/keyword arguments onto ``op``'s tensor inputs and attrs, then build it."""
    opdef = get_op(op)
    inputs = list(opdef.inputs)
    variadic = opdef.variadic()
    if variadic:
        inputs = inputs[:-1]
    tensors: list = []
    attrs: dict = {}
    attr_names = list(opdef.attrs)
    pos = list(args)
    # tensor inputs first (numbers may stand for tensors: `x * 2`), then attrs in declaration order
    for _ in inputs:
        if not pos:
            break
        tensors.append(pos.pop(0))
    if variadic:
        if len(pos) == 1 and isinstance(pos[0], (list, tuple)) and pos[0] and all(is_tensor(v) for v in pos[0]):
            tensors.extend(pos.pop(0))  # concat([a, b], axis = 1)
        else:
            while pos and is_tensor(pos[0]):
                tensors.append(pos.pop(0))
    for name, value in kwargs.items():
        if name in inputs:
            idx = inputs.index(name)
            if idx < len(tensors):
                raise frame.error("E0102", f"`{op}` got the input `{name}` twice", loc)
            while len(tensors) < idx:
                tensors.append(None)
            tensors.append(value)
        elif name == "axis" and "axis" not in opdef.attrs and "axes" in opdef.attrs:
            attrs["axes"] = value
        elif name in opdef.attrs:
            attrs[name] = value
        else:
            hint = suggest(name, [*opdef.attrs, *inputs])
            raise frame.error("E0102", f"`{op}` has no argument `{name}`", (kw_locs or {}).get(name, loc),
                              hint=hint or _signature_hint(op, opdef))
    for value in pos:
        free = [a for a in attr_names if a not in attrs]
        if not free:
            raise frame.error("E0102", f"`{op}` takes {_count_words(opdef)}, got {len(args)}", loc,
                              hint=_signature_hint(op, opdef))
        attrs[free[0]] = value
        attr_names.remove(free[0])
    like = next((t for t in tensors if is_tensor(t)), None)
    if like is not None:  # lists of numbers meeting a tensor are constant tensors: where(m, x, [0.0, 1.0])
        tensors = [literal_tensor(frame, t, like, (arg_locs[i] if arg_locs and i < len(arg_locs) else loc))
                   if isinstance(t, (list, tuple)) else t for i, t in enumerate(tensors)]
    missing = [n for i, n in enumerate(inputs) if i >= len(tensors) or tensors[i] is None]
    if missing:
        raise frame.error("E0102", f"`{op}` needs the input{'s' if len(missing) > 1 else ''} "
                          + ", ".join(f"`{m}`" for m in missing), loc, hint=_signature_hint(op, opdef))
    for i, t in enumerate(tensors):
        if not (is_tensor(t) or (isinstance(t, (int, float)) and not isinstance(t, Sym))):
            where = arg_locs[i] if arg_locs and i < len(arg_locs) else loc
            if isinstance(t, tuple) and t and all(is_tensor(v) for v in t):  # relu(batch_norm(...))
                names = ", ".join("abcdefgh"[j] for j in range(min(len(t), 8)))
                raise frame.error("E0103", f"input {i + 1} of `{op}` must be one tensor, but its argument "
                                  f"returns {len(t)} values", where,
                                  hint=f"bind them first (`{names} = ...`) and pass the one you mean")
            raise frame.error("E0103", f"input {i + 1} of `{op}` must be a tensor, got {describe(t)}", where)
        if _too_big(frame, t, tensors):
            where = arg_locs[i] if arg_locs and i < len(arg_locs) else loc
            raise frame.error("E0110", f"the number {t} does not fit in a 64-bit integer", where)
    attrs = {k: _attr_value(frame, op, k, v, loc) for k, v in attrs.items()}
    with frame.builder.at(loc=loc, context=frame.context or None, scope=frame.scope):
        try:
            return frame.builder.apply(op, *tensors, **attrs)
        except ShapeError as exc:  # raised by a composite op's expansion, outside the builder's own checks
            raise frame.error("E0104", f"shape mismatch in `{op}`: {exc}", loc) from None
        except (TypeError, ValueError, OverflowError) as exc:  # an attribute of the wrong kind reached a rule
            # chained (not `from None`): under --debug the original traceback shows, in case it is a dlc bug
            raise frame.error("E0102", f"invalid arguments for `{op}`: {exc}", loc,
                              hint=_signature_hint(op, opdef)) from exc


def _too_big(frame: Frame, v, tensors: list) -> bool:
    """An integer (or an integral float meeting an integer tensor) outside int64."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or -2**63 <= v < 2**63:
        return False
    return isinstance(v, int) or any(is_tensor(t) and frame.builder.type(t).dtype[0] == "i" for t in tensors)


def _attr_value(frame: Frame, op: str, key: str, v, loc):
    if isinstance(v, DType):
        return v.name
    if is_tensor(v):
        raise frame.error("E0103", f"argument `{key}` of `{op}` must be a constant, not a tensor", loc,
                          hint="pass tensors as inputs; attributes are fixed when the graph is built")
    if isinstance(v, list):
        return tuple(_attr_value(frame, op, key, x, loc) for x in v)
    if isinstance(v, tuple):
        return tuple(_attr_value(frame, op, key, x, loc) for x in v)
    if isinstance(v, (OpRef, LayerRef)):
        raise frame.error("E0103", f"argument `{key}` of `{op}` cannot be {describe(v)}", loc)
    return v


def _count_words(opdef) -> str:
    n = len([i for i in opdef.inputs if not i.startswith("*")]) + len(opdef.attrs)
    return f"at most {n} argument{'s' if n != 1 else ''}"


def _signature_hint(op: str, opdef) -> str:
    parts = [i.lstrip("*") + ("..." if i.startswith("*") else "") for i in opdef.inputs]
    for k, a in opdef.attrs.items():
        parts.append(k if a.default is REQUIRED else f"{k} = {a.default!r}")
    return f"`{op}({', '.join(parts)})`"




def literal_tensor(frame: Frame, value, like, loc) -> Value:
    """A constant tensor from a (nested, rectangular) list of numbers met by a tensor:
    ``x + [1.0, 2.0]``.  Weak typing as for scalars: the values take ``like``'s dtype
    (whole numbers for an integer tensor); bools become a bool tensor."""
    flat = list(_leaves(value))
    if not flat or not all(isinstance(v, (int, float, bool)) and not isinstance(v, Sym) for v in flat):
        raise frame.error("E0103", f"a tensor literal must be a non-empty list of numbers, got {describe(value)}",
                          loc)
    try:
        arr = np.array(value, dtype=object)
        if arr.dtype == object and any(isinstance(v, (list, tuple)) for v in arr.ravel()):
            raise ValueError
    except ValueError:
        raise frame.error("E0103", "a tensor literal must be rectangular (every row the same length)", loc) from None
    dtype = frame.builder.type(like).dtype
    if all(isinstance(v, bool) for v in flat):
        dtype = "bool"
    elif dtype[0] in "iu" and not all(isinstance(v, int) or float(v).is_integer() for v in flat):
        raise frame.error("E0103", f"a tensor literal of non-whole numbers meets an integer tensor ({dtype})", loc,
                          hint="use cast(x, f32) to convert the tensor")
    elif dtype == "bool":
        dtype = "f32" if any(isinstance(v, float) for v in flat) else "i64"
    with frame.builder.at(loc=loc, context=frame.context or None, scope=frame.scope):
        return frame.builder.const(arr.astype(float).astype(np_dtype(dtype)), dtype)


def _leaves(value):
    for v in value:
        if isinstance(v, (list, tuple)):
            yield from _leaves(v)
        else:
            yield v

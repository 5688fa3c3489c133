"""``fused``: a chain of elementwise ops evaluated as one kernel call.

Made by the NumPy backend's fusion pass (compiler/passes/fuse_elementwise.py),
never written in a spec.  Attrs:

- ``program``: the chain, one instruction per primitive, in evaluation order:
  ``(op name, argument value numbers, attrs as sorted (key, value) pairs)``.
  Value numbers ``0 .. n_inputs-1`` are the node's inputs; instruction ``j``
  defines value ``n_inputs + j``.
- ``outputs``: the value numbers the node returns, in order.
- ``reuse``: per instruction, the value number whose buffer it overwrites
  (``out=``), or -1 to allocate.  The pass plans it from the types — a buffer
  of equal type whose value is dead by then and that the chain itself
  allocated (never an input: kernels must not modify their inputs) — and the
  shape rule checks the plan, so ``verify()`` rejects an unsafe one.  The kernel
  follows it only when its inputs share one memory order (:func:`one_layout`,
  checked per call): a buffer reused under inputs in different orders (a transposed
  view and a C-order array) could hold a value in another layout than the unfused
  op's result, and a reduction downstream adds in memory order, so its rounding
  would differ; such a call allocates every result as the unfused ops do.
- ``donated``: the input indices whose buffers the chain may overwrite too, as
  ``reuse`` targets: a fresh array that an earlier kernel of the same graph
  made (``matmul``'s result, a gradient) and that only this node reads.  The
  pass proves that from the graph (compiler/passes/fuse_elementwise.py); here
  the shape rule checks the program side (the input is dead by then and of the
  step's type).  SGD's ``p - lr * g`` then writes into ``g``'s buffer: one pass
  less over memory than a fresh array, as PyTorch's in-place update.

The kernel calls the NumPy ufunc each primitive's own kernel calls, in the
same order, so a fused chain gives bit-identical results to the unfused
nodes.  The ONNX lowering emits each primitive's own lowering (an exported
optimized graph is stock ONNX).  Not differentiable: fusion runs after
backprop, on graphs that are only executed, and a rule would have to
re-derive the chain's VJP that backprop already built from the primitives.
"""
from __future__ import annotations

import functools

import numpy as np

from ..types import ShapeError
from .activation import relu_grad
from .registry import Arg, Attr, Op, Sample, get_op, register


def _div(a, b, out=None):
    return (np.floor_divide if a.dtype.kind in "iu" else np.true_divide)(a, b, out=out)


def _relu(x, out=None):
    return np.maximum(x, 0, out=out)


def _sigmoid(x, out=None):
    half = np.asarray(0.5, x.dtype)  # the sigmoid kernel's own formula, step by step in one buffer
    y = np.multiply(half, x, out=out)
    if not isinstance(y, np.ndarray) or y.ndim == 0:
        return get_op("sigmoid").kernel(x)
    np.tanh(y, out=y)
    np.multiply(half, y, out=y)
    return np.add(y, half, out=y)


# op → how the chain evaluates it: ``fn(*args, out=None, **attrs)``, writing into ``out`` when
# given (ufuncs themselves where the op's kernel is one ufunc call)
INPLACE = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "eq": np.equal, "ne": np.not_equal, "lt": np.less,
    "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_not": np.logical_not, "neg": np.negative, "abs": np.absolute,
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "cos": np.cos, "sin": np.sin, "tanh": np.tanh,
    "relu": _relu, "sigmoid": _sigmoid, "relu_grad": relu_grad,
}
# ops evaluated by their own kernel (no out=); their results are fresh arrays the chain owns
FRESH = ("where", "concat")
ELEMENTWISE = frozenset(INPLACE) | {"where"}
# `concat` may end a chain (fusion makes it a group's root, never a member): the chains it
# joins run in one kernel call with it.  Computing the parts straight into slices of its
# result (ufuncs with out= views) was measured slower than np.concatenate's copy of
# contiguous parts: a ufunc writing a [32, 128] view with rows 512 apart costs more than
# the copy saves.
FUSIBLE = ELEMENTWISE | {"concat"}


@register
class Fused(Op):
    """One node evaluating a chain of elementwise primitives (see the module docstring)."""

    name, family = "fused", "fused"
    inputs = ("*xs",)
    outputs = None
    attrs = {"program": Attr("any", doc="the chain: (op, argument value numbers, attrs) per step"),
             "outputs": Attr("ints", doc="value numbers returned"),
             "reuse": Attr("ints", (), doc="per step: the value number whose buffer it overwrites, or -1"),
             "donated": Attr("ints", (), doc="inputs whose buffers the chain may overwrite")}
    differentiable = False  # runs after backprop only (see the module docstring)
    samples = [
        # bias + relu
        Sample((Arg((4, 3)), Arg((3,))), {"program": (("add", (0, 1), ()), ("relu", (2,), ())),
                                          "outputs": (3,), "reuse": (-1, 2)}),
        # an Adam-like update with two outputs and buffer reuse
        Sample((Arg((2, 3)), Arg((2, 3)), Arg((2, 3), "positive"), Arg(())),
               {"program": (("mul", (0, 3), ()), ("add", (4, 1), ()), ("sqrt", (2,), ()),
                            ("div", (5, 6), ()), ("sub", (0, 7), ())),
                "outputs": (8, 5), "reuse": (-1, 4, -1, 6, 7)}),
        # relu's gradient with an attr, writing into its cotangent's buffer and into its mask's
        Sample((Arg((3, 4)), Arg((3, 4))),
               {"program": (("add", (0, 1), ()), ("relu", (2,), ()), ("mul", (3, 1), ()),
                            ("relu_grad", (4, 3), (("alpha", 0.1),))),
                "outputs": (5,), "reuse": (-1, 2, -1, 4)}),
        Sample((Arg((3, 4)), Arg((3, 4))),
               {"program": (("add", (0, 1), ()), ("relu", (2,), ()), ("mul", (3, 1), ()),
                            ("relu_grad", (4, 3), (("alpha", 0.0),))),
                "outputs": (5,), "reuse": (-1, 2, -1, 3)}),
        # an LSTM-style gate: sigmoid * tanh, where and a comparison
        Sample((Arg((3, 4)), Arg((3, 4))),
               {"program": (("sigmoid", (0,), ()), ("tanh", (1,), ()), ("mul", (2, 3), ()),
                            ("gt", (0, 1), ()), ("where", (5, 4, 1), ())),
                "outputs": (6,), "reuse": (-1, -1, 2, -1, -1)}),
        # an LSTM's backward step: gate cotangents joined by a concat, the chain's last step
        Sample((Arg((3, 4)), Arg((3, 4))),
               {"program": (("mul", (0, 1), ()), ("add", (0, 1), ()), ("tanh", (3,), ()),
                            ("concat", (2, 4, 3), (("axis", -1),))),
                "outputs": (5, 3), "reuse": (-1, -1, -1, -1)}),
        Sample((Arg((3, 4)), Arg((2, 4))),
               {"program": (("abs", (0,), ()), ("exp", (1,), ()), ("concat", (2, 3), (("axis", 0),)),
                            ("sqrt", (4,), ())),
                "outputs": (5,), "reuse": (-1, -1, -1, 4)}, note="a plain concat mid-chain"),
    ]

    def shape(self, *types, program, outputs, reuse, donated=()):
        values, _ = _check_program(types, program, outputs, reuse, donated)
        return tuple(values[o] for o in outputs)

    def kernel(self, *arrays, program, outputs, reuse, donated=()):
        return _compiled(program, outputs, reuse, len(arrays))(*arrays)

    def onnx(self, e, ins, outs, program, outputs, reuse, donated=()):
        names, types = list(ins), list(e.in_types)
        named = {v: outs[k] for k, v in enumerate(outputs)}
        saved = e.in_types, e.out_types
        try:
            for op, args, kw in program:
                opdef, kw = get_op(op), dict(kw)
                arg_types = [types[a] for a in args]
                t = opdef.shape(*arg_types, **kw)
                name = named.get(len(names)) or e.tmp(op)
                e.in_types, e.out_types = arg_types, [t]
                opdef.onnx(e, [names[a] for a in args], [name], **kw)
                names.append(name)
                types.append(t)
        finally:
            e.in_types, e.out_types = saved


def _check_program(types, program, outputs, reuse, donated=()):
    """(the type of every value, whether the chain owns each value's buffer); raises ShapeError."""
    n_in = len(types)
    values = list(types)
    if any(not 0 <= int(i) < n_in for i in donated):
        raise ShapeError(f"`fused` donated inputs {tuple(donated)} must name inputs")
    owned = [i in donated for i in range(n_in)]
    last_use: dict[int, int] = {}
    if not isinstance(program, tuple) or not program:
        raise ShapeError("`fused` needs a non-empty program")
    for j, step in enumerate(program):
        op, args, kw = step
        if op not in FUSIBLE:
            raise ShapeError(f"`fused` cannot evaluate `{op}`")
        if any(not 0 <= a < len(values) for a in args):
            raise ShapeError(f"step {j} ({op}) reads a value not defined before it")
        t = get_op(op).shape(*[values[a] for a in args], **dict(kw))
        values.append(t)
        owned.append(True)
        for a in args:
            last_use[a] = j
    if not outputs or any(not n_in <= o < len(values) for o in outputs):
        raise ShapeError(f"`fused` outputs {outputs} must name steps of the program")
    if reuse:
        if len(reuse) != len(program):
            raise ShapeError("`fused` needs one reuse entry per step")
        claimed = set()
        for j, r in enumerate(reuse):
            if r < 0:
                continue
            v = n_in + j
            ok = (0 <= r < v and owned[r] and r not in claimed and r not in outputs
                  and program[j][0] in INPLACE and values[r] == values[v] and values[v].rank > 0
                  and last_use.get(r, -1) <= j)
            if not ok:
                raise ShapeError(f"step {j} of `fused` cannot write into the buffer of value {r}")
            claimed.add(r)
    return values, owned


def c_ordered(a) -> bool:
    """Are ``a``'s axes in C order in memory (strides decreasing over the axes of size > 1
    that it does not broadcast)?"""
    if getattr(a, "ndim", 0) < 2 or a.flags.c_contiguous:  # (a Python number has no axes)
        return True
    last = None
    for n, stride in zip(a.shape, a.strides):
        if n == 1 or stride == 0:
            continue
        if stride < 0 or (last is not None and stride >= last):
            return False
        last = stride
    return True


def one_layout(*arrays) -> bool:
    """May a chain over ``arrays`` write into the buffers it planned (``reuse``) and still
    give every value the memory order NumPy gives the unfused op's result?  NumPy allocates
    a ufunc's result in its operands' memory order, so yes when every input is in C order,
    or when those of rank >= 2 share one shape and positive strides: every buffer of the
    chain (allocated or donated) is then in that one order."""
    if all(c_ordered(a) for a in arrays):  # (the all-C-contiguous case is tested inline first, by _compiled)
        return True
    big = [a for a in arrays if getattr(a, "ndim", 0) >= 2]
    return all(a.shape == big[0].shape and a.strides == big[0].strides for a in big) and min(big[0].strides) >= 0


_CACHE: dict[int, tuple] = {}  # id(program) → (program, key, function); the entry keeps the program alive
_CACHE_LIMIT = 4096


def _compiled(program, outputs, reuse, n_in: int):
    """The chain as one Python function of the inputs, generated once per program object.

    Straight-line code (``v3 = f0(v0, v1)``, ``v4 = f1(v3, v2, out=v3)``) calls each
    step's function directly: interpreting the program instead costs about twice the
    time of the ufunc calls themselves on small arrays.  The source holds only value
    numbers and the names ``f<j>`` bound to the table above (or a step's own kernel)."""
    key = (tuple(outputs), tuple(reuse), n_in)
    hit = _CACHE.get(id(program))
    if hit is not None and hit[0] is program and hit[1] == key:
        return hit[2]
    params = ", ".join(f"v{i}" for i in range(n_in))
    env, lines = {"one_layout": one_layout}, []
    for name, planned in (("fused", reuse), ("fresh", ())):
        lines.append(f"def {name}({params}):")
        if name == "fused" and any(r >= 0 for r in reuse):
            # inputs in different memory orders: a reused buffer could give a value another
            # layout than the op's own result has, and a reduction downstream adds in memory
            # order (another rounding); so allocate as the unfused ops do
            # the common case, every input C-contiguous, as one inline test (no call, no loop)
            lines.append("    try:")
            lines.append(f"        c_order = {' and '.join(f'v{i}.flags.c_contiguous' for i in range(n_in))}")
            lines.append("    except AttributeError:  # a Python number among the inputs")
            lines.append("        c_order = False")
            lines.append(f"    if not c_order and not one_layout({params}):")
            lines.append(f"        return fresh({params})")
        for j, (op, args, kw) in enumerate(program):
            if op in INPLACE:
                env[f"f{j}"] = functools.partial(INPLACE[op], **dict(kw)) if kw else INPLACE[op]
            else:
                env[f"f{j}"] = (lambda k, a: lambda *xs, out=None: k(*xs, **a))(get_op(op).kernel, dict(kw))
            out = f", out=v{planned[j]}" if planned and planned[j] >= 0 else ""
            lines.append(f"    v{n_in + j} = f{j}({', '.join(f'v{int(a)}' for a in args)}{out})")
        lines.append(f"    return ({', '.join(f'v{int(o)}' for o in outputs)},)")
    exec("\n".join(lines), env)  # noqa: S102  (generated from integers and fixed names only)
    if len(_CACHE) >= _CACHE_LIMIT:  # programs of graphs long gone: start again rather than grow
        _CACHE.clear()
    _CACHE[id(program)] = (program, key, env["fused"])
    return env["fused"]


from . import fused_products  # noqa: E402,F401  (matmul_t, matmul_permuted, matmul_add)

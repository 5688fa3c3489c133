"""Code generation for :class:`~dlc.runtime.interpreter.Plan`: the plan's schedule as one
straight-line Python function (the hot path), one line per kernel call."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .interpreter import Plan


def _as_array(value):
    """A kernel's single result as an ndarray (NumPy reductions return scalars)."""
    if isinstance(value, tuple):
        (value,) = value
    return np.asarray(value)


def generate(plan: Plan):
    """The plan's schedule as one generated function ``run(sources, resolved, context) -> outputs``.

    Kernels are bound as constants ``K<i>``, static attrs as ``A<i>`` (resolved
    per run from ``resolved[i]`` when they mention symbolic dims); value slot
    ``s`` is the local ``v<s>``.  Returns the function and {source line: step index}."""
    ns: dict[str, Any] = {"ND": np.ndarray, "AS": _as_array, "asarray": np.asarray,
                          "CHK": lambda i, k, v: plan._check_declared(plan.steps[i], k, v, plan._run_env)}
    lines = ["def run(src, R, C):"]
    if plan.sources:
        lines.append("    " + ", ".join(f"v{slot}" for _, _, slot, _ in plan.sources) + (", = src" if len(plan.sources) == 1 else " = src"))
    line_of_step: dict[int, int] = {}
    for i, st in enumerate(plan.steps):
        ns[f"K{i}"] = st.kernel
        args = [f"v{s}" for s in st.ins]
        if st.symbolic:
            lines.append(f"    A{i} = R[{i}]")
            args.append(f"**A{i}")
        elif st.attrs:
            ns[f"A{i}"] = st.attrs
            args.append(f"**A{i}")
        if st.context:
            args.append("**C")
        call = f"K{i}({', '.join(args)})"
        if len(st.outs) == 1:
            (o,) = st.outs
            lines.append(f"    v{o} = {call}")
            line_of_step[len(lines)] = i
            lines.append(f"    if v{o}.__class__ is not ND: v{o} = AS(v{o})")
            if plan.check_types:
                lines.append(f"    CHK({i}, 0, v{o})")
        else:
            lines.append(f"    t = {call}")
            line_of_step[len(lines)] = i
            for k, o in enumerate(st.outs):
                lines.append(f"    v{o} = t[{k}]")
                lines.append(f"    if v{o}.__class__ is not ND: v{o} = asarray(v{o})")
                if plan.check_types:
                    lines.append(f"    CHK({i}, {k}, v{o})")
        if st.frees:
            lines.append("    del " + ", ".join(f"v{s}" for s in st.frees))
    outs = [f"v{s}" for s in plan.out_slots]
    lines.append(f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    code = compile("\n".join(lines) + "\n", f"<dlc plan {next(_PLAN_IDS)}>", "exec")
    exec(code, ns)
    return ns["run"], line_of_step


_PLAN_IDS = itertools.count()

"""The NumPy interpreter's per-kernel-call overhead.

    python benchmarks/overhead.py

A chain of N cheap kernels (``neg`` of an 8-element vector, and ``sum`` with an
``axes`` attr) runs through ``Plan.run``; the same kernels are also called directly
in a Python loop.  The overhead per call is (plan time - direct time) / N: what the
interpreter adds around each kernel (argument passing, attrs, result checks, freeing).
The direct loop has its own loop overhead (~0.05 µs a call), so the figure is a slight
underestimate; the reference path (walking the step records, as every run did before
the generated hot path) is shown for comparison.
"""
from __future__ import annotations


import numpy as np

from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph, Value
from dlc.compiler.types import TensorType
from dlc.runtime.interpreter import Plan
from timing import run_times

N = 2000  # kernel calls per chain


def chain(op: str, length: int = N, **attrs) -> Graph:
    """``length`` applications of ``op`` to an 8-element input (each ``sum`` broadcast back)."""
    g = Graph()
    t = TensorType("f32", (8,))
    x = g.add_node("input", (), {"name": "x"}, (t,))
    g.add_input(x)
    b = Builder(g)
    v = Value(x)
    for _ in range(length):
        v = b.apply(op, v, **attrs)
        if op == "sum":
            v = b.apply("broadcast_to", v, shape=(8,))
    g.set_output("y", v)
    return g


def best(fn, reps=40) -> float:
    """The fastest of ``reps`` runs (the least disturbed by other processes), interleaving-free."""
    with np.errstate(all="ignore"):  # the sums overflow to inf: harmless here
        return min(run_times(fn, reps))


def measure(op: str, **attrs) -> tuple[float, float, int]:
    g = chain(op, **attrs)
    plan = Plan(g)
    feeds = {"x": np.ones(8, np.float32)}
    calls = len(plan.steps)
    consts = {slot: key for kind, key, slot, _ in plan.sources if kind == "const"}
    x = feeds["x"]
    # the same calls with their arguments gathered ahead: what a kernel costs by itself
    kernels = [(st.kernel, st.attrs, [consts.get(s) for s in st.ins]) for st in plan.steps]

    def direct():
        v = x
        for k, a, ins in kernels:
            v = k(*[v if c is None else c for c in ins], **a) if len(ins) > 1 else k(v, **a)
        return v

    t_plan = best(lambda: plan.run(feeds))
    def reference():  # the step-record walk (what every run used before the generated hot path)
        slots = [None] * plan.n_slots
        for kind, key, slot, _ in plan.sources:
            slots[slot] = x if kind == "input" else key
        plan._execute(slots, {}, False)

    t_ref = best(reference)
    t_direct = best(direct)
    return (t_plan - t_direct) / calls * 1e6, (t_ref - t_direct) / calls * 1e6, calls


def main() -> None:
    print("| chain | kernel calls | overhead per call, hot path (µs) | reference path: step records (µs) |")
    print("|---|---:|---:|---:|")
    for label, op, attrs in (("neg", "neg", {}), ("sum(axes, keepdims) + broadcast_to(shape)", "sum", {"axes": (0,), "keepdims": True})):
        fast, ref, calls = measure(op, **attrs)
        print(f"| {label} | {calls} | {fast:.2f} | {ref:.2f} |")


if __name__ == "__main__":
    main()

"""A test and benchmark hook counting the kernel calls of :class:`~dlc.runtime.interpreter.Plan` runs."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .interpreter import Plan


class KernelCalls:
    calls = 0  # kernel calls
    runs = 0  # plan runs: the outer run plus one per scan step


@contextmanager
def counting_kernel_calls() -> Iterator[KernelCalls]:
    """Count the kernel calls of every plan run inside the block, nested scan
    bodies included (``with counting_kernel_calls() as n: ...; n.calls``).
    A test and benchmark hook: it wraps :meth:`Plan.run` and the functions
    :meth:`Plan.bind` returns (how a scan runs its body each step) for the
    block only, so the hot path pays nothing outside it."""
    counter = KernelCalls()
    original_run, original_bind = Plan.run, Plan.bind

    def counted(self, *args, **kwargs):
        counter.calls += len(self.steps)
        counter.runs += 1
        return original_run(self, *args, **kwargs)

    def bound(self, *args, **kwargs):
        step = original_bind(self, *args, **kwargs)
        if self.compute_dtype is not None:  # its steps go through run: counted there
            return step

        def counted_step(values):
            counter.calls += len(self.steps)
            counter.runs += 1
            return step(values)
        return counted_step

    Plan.run, Plan.bind = counted, bound
    try:
        yield counter
    finally:
        Plan.run, Plan.bind = original_run, original_bind

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
    A test and benchmark hook: it wraps :meth:`Plan.run` for the block only,
    so the hot path pays nothing outside it."""
    counter = KernelCalls()
    original = Plan.run

    def counted(self, *args, **kwargs):
        counter.calls += len(self.steps)
        counter.runs += 1
        return original(self, *args, **kwargs)

    Plan.run = counted
    try:
        yield counter
    finally:
        Plan.run = original

"""runtime/allocator.py: freed NumPy buffers stay in the heap instead of being faulted in again."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from dlc.runtime.interpreter import Plan
from dlc.compiler.graph import Graph
from dlc.runtime.allocator import keep_freed_memory
Plan(Graph("empty"))  # planning a graph tunes the allocator (once per process)
def step():  # a scan's stacked outputs: eight 512 KiB buffers alive at once, then freed
    return [np.ones(1 << 17, np.float32) for _ in range(8)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()  # again: 8 x 128 fresh pages each time, or none
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value: str | None) -> tuple[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("DLC_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["DLC_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_planning_a_graph_keeps_freed_buffers_for_reuse():
    tuned, faults = _probe(None)
    assert tuned == "True"
    assert faults < 100  # the freed buffer is reused: no page of it is faulted in again
    tuned, faults = _probe("0")  # opted out: glibc's defaults return the buffer to the OS every time
    assert tuned == "False"
    assert faults > 20 * 500

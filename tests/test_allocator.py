"""runtime/allocator.py: a NumPy trainer keeps freed buffers in the heap instead of faulting them in again;
planning and running a graph alone leaves the process's allocator as it is."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import numpy as np
import dlc
from dlc.runtime import allocator
model = dlc.load("specs/xor.dl", mode="train")
model.run({"x": np.zeros((4, 2), np.float32), "y": np.zeros((4, 1), np.float32)})
planned_only = list(allocator._done)  # planning and running a graph: nothing applied
model.trainer(backend=sys.argv[1])
def step():  # a scan's stacked outputs: eight 512 KiB buffers alive at once, then freed
    return [np.ones(1 << 17, np.float32) for _ in range(8)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()  # again: 8 x 128 fresh pages each time, or none
print(json.dumps([planned_only, allocator._done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(backend: str, env_value: str | None) -> tuple[list, list, int]:
    """(settings applied after planning alone, after making a trainer, page faults of 20 steps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("DLC_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["DLC_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, backend], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    planned, done, faults = json.loads(out.stdout.splitlines()[-1])
    return planned, done, faults


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_numpy_trainer_keeps_freed_buffers_for_reuse_and_a_plan_alone_does_not():
    planned, done, faults = _probe("numpy", None)
    assert planned == [] and done == [True]
    assert faults < 100  # the freed buffers are reused: no page of them is faulted in again
    planned, done, faults = _probe("numpy", "0")  # opted out: glibc returns them to the OS every time
    assert planned == [] and done == [False]
    assert faults > 20 * 500
    planned, done, _ = _probe("onnxruntime", None)  # onnxruntime has its own arena: nothing applied
    assert planned == [] and done == []

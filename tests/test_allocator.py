"""runtime/allocator.py: the glibc malloc settings the NumPy interpreter applies once."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from dlc.runtime import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_settings_once_and_the_environment_can_refuse_them():
    assert allocator.keep_freed_memory() is True
    assert allocator._done == [True]
    assert allocator.keep_freed_memory() is True and allocator._done == [True]  # applied once
    code = "from dlc.runtime import allocator; print(allocator.keep_freed_memory())"
    env = {**os.environ, "DLC_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

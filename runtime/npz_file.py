"""``dlc run --out``: outputs as an ``.npz`` that dlc can recognise as its own.

The archive's zip comment is :data:`TAG`; an existing file is replaced only
when it carries that tag (an earlier ``dlc run --out``), or with ``force``.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from .files import refuse_foreign, write_atomic

TAG = b"dlc run outputs"


def written_by_dlc(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.comment == TAG
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def check_out(target: Path, *, force: bool = False) -> None:
    """Raise unless ``target`` may receive the outputs (see the module docstring)."""
    refuse_foreign(Path(target), written_by_dlc, force=force)


def write_outputs(target: Path, arrays: dict[str, np.ndarray], *, force: bool = False) -> None:
    target = Path(target)
    refuse_foreign(target, written_by_dlc, force=force)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    with zipfile.ZipFile(buf, "a") as z:
        z.comment = TAG
    write_atomic(target, buf.getvalue())

"""Writing exported models to disk without clobbering anything a user saved.

An existing file is replaced only when it is an ONNX model that dlc wrote
(``producer_name == "dlc"``), or with ``force``; links, directories, FIFOs and
missing folders are coded errors even with ``force`` (files.py).  The new file
is written to a temporary name in the same folder and renamed over the target,
so an interrupted write never leaves a half-written model behind.
"""
from __future__ import annotations

from pathlib import Path

from .files import refuse_foreign, write_atomic


def written_by_dlc(path: Path) -> bool:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False).producer_name == "dlc"
    except Exception:  # not an ONNX file at all: protobuf raises various errors
        return False


def write_onnx(proto, target: Path, *, force: bool = False) -> None:
    target = Path(target)
    refuse_foreign(target, written_by_dlc, force=force, code="E0501")
    write_atomic(target, proto.SerializeToString(deterministic=True))

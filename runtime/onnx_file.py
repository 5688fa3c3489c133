"""Writing exported models to disk without clobbering anything a user saved.

An existing file is replaced only when it is an ONNX model that dlc wrote
(``producer_name == "dlc"``), or with ``force``.  The new file is written to a
temporary name in the same folder and renamed over the target, so an
interrupted write never leaves a half-written model behind.
"""
from __future__ import annotations

from pathlib import Path

from dlc.grammar.errors import DlcError

from .files import write_atomic


def written_by_dlc(path: Path) -> bool:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False).producer_name == "dlc"
    except Exception:  # not an ONNX file at all: protobuf raises various errors
        return False


def write_onnx(proto, target: Path, *, force: bool = False) -> None:
    target = Path(target)
    if target.exists() and not force and not written_by_dlc(target):
        raise DlcError("E0501", f"refusing to overwrite `{target}`: it is not an ONNX file written by dlc",
                       hint="choose another path with -o, or pass --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString(deterministic=True)
    write_atomic(target, data)

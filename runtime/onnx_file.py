"""Writing exported models to disk without clobbering anything a user saved.

An existing file is replaced only when it is an ONNX model that dlc wrote
(``producer_name == "dlc"``), or with ``force``.  The new file is written to a
temporary name in the same folder and renamed over the target, so an
interrupted write never leaves a half-written model behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dlc.grammar.errors import DlcError


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
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

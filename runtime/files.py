"""Atomic file writes: a temp file in the target's folder, fsync'd, then renamed
over the target, so an interrupted write never leaves a half-written file and
never destroys the previous one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, *, prefix: str | None = None) -> None:
    """Replace ``target`` with ``data`` atomically; temp files start with ``prefix``."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix or target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)

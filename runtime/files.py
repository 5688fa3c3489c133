"""Writing files without ever losing one a user owns.

Every file dlc writes goes through :func:`write_atomic`: the target is checked
first (its folder must exist and be a folder; the target must be absent or a
regular file — never a symbolic link, a directory, a FIFO or a device), the
bytes go to a fresh temp file next to it (created ``O_EXCL | O_NOFOLLOW`` with
mode 0666, so the user's umask decides the permissions), are fsync'd, and the
temp file is renamed over the target.  An interrupted write never leaves a
half-written target and never destroys the previous one; the temp file is
removed on every error the process survives.  Whether an *existing* file may be
replaced at all is the caller's decision (:func:`refuse_foreign`).

Every file operation goes through ``os`` (not ``pathlib``) so the kill tests can
interpose on each one.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dlc.grammar.errors import DlcError

TMP_SUFFIX = ".tmp"


def _err(message: str, hint: str | None = None) -> DlcError:
    return DlcError("E0002", message, hint=hint)


def check_target(target: Path) -> bool:
    """Raise E0002 unless ``target`` can be written; True when it exists (a regular file)."""
    target = Path(target)
    parent = target.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise _err(f"cannot write `{target}`: the folder `{parent}` does not exist",
                   hint="create the folder first, or choose another path") from None
    except NotADirectoryError:
        raise _err(f"cannot write `{target}`: a part of `{parent}` is a file, not a folder",
                   hint="choose a path inside a folder") from None
    except OSError as e:
        raise _err(f"cannot write `{target}`: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _err(f"cannot write `{target}`: `{parent}` is a file, not a folder",
                   hint="choose a path inside a folder")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _err(f"cannot write `{target}`: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise _err(f"refusing to write `{target}`: it is a symbolic link, and dlc never writes through one",
                   hint="remove the link or choose another path")
    if stat.S_ISDIR(st.st_mode):
        raise _err(f"cannot write `{target}`: it is a directory", hint="give a file name inside it")
    if not stat.S_ISREG(st.st_mode):
        raise _err(f"cannot write `{target}`: it is not a regular file (a FIFO, socket or device)",
                   hint="choose a path to a regular file")
    return True


def refuse_foreign(target: Path, ours, *, force: bool, code: str = "E0002", flag: str = "--force") -> None:
    """Check ``target`` (see :func:`check_target`); an existing file that ``ours(path)``
    does not recognise as dlc's is refused unless ``force``."""
    if check_target(target) and not force and not ours(Path(target)):
        raise DlcError(code, f"refusing to overwrite `{target}`: it exists and dlc did not write it",
                       hint=f"choose another path, or pass {flag}")


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


def temp_name(target: Path, prefix: str | None = None) -> Path:
    """A fresh temp-file path in ``target``'s folder: ``prefix`` + random + ``.tmp``."""
    target = Path(target)
    return target.parent / f"{prefix or '.' + target.name + '.'}{secrets.token_hex(8)}{TMP_SUFFIX}"


def write_atomic(target: Path, data: bytes, *, prefix: str | None = None, mode: int | None = None) -> None:
    """Replace ``target`` with ``data`` atomically; temp files start with ``prefix``.  ``mode``:
    the new file's permission bits (to keep a rewritten file's own), else the umask's."""
    target = Path(target)
    check_target(target)
    tmp = temp_name(target, prefix)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except OSError as e:
        raise _err(f"cannot write `{target}`: {e.strerror}") from None
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _err(f"cannot write `{target}`: {e.strerror or e}") from None
        raise
    fsync_dir(target.parent)


def create_exclusive(target: Path, data: bytes) -> bool:
    """Create ``target`` holding ``data`` unless it exists (False then); never follows a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o666)
    except FileExistsError:
        return False
    except OSError as e:
        raise _err(f"cannot write `{target}`: {e.strerror}") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def remove(path: Path) -> None:
    """Delete ``path`` if it is there (callers only pass files dlc wrote)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def file_size(path: Path, what: str) -> int:
    """``path``'s size by ``stat`` (before anything reads it); E0002 when it is not a readable file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _err(f"{what} `{path}` does not exist") from None
    except OSError as e:
        raise _err(f"cannot read {what} `{path}`: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _err(f"{what} `{path}` is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise _err(f"{what} `{path}` is not a regular file (a FIFO, socket or device)")
    return st.st_size

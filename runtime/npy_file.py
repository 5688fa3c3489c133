"""Reading ``.npy`` and ``.npz`` files safely: headers first, data only within the budget.

The shape and dtype a header declares are checked against the memory budget
(and against the bytes actually present) before a byte of data is read, so a
header declaring ``(2**20, 2**20)`` is E0003 naming the array, not a 4 TiB
allocation; object arrays are refused (no pickles).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dlc.compiler import budget
from dlc.grammar.errors import DlcError

from .files import file_size


def _header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = fmt.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DlcError("E0002", f"{where} is not a NumPy array file: {e}",
                       hint="write it with numpy.save / numpy.savez") from None
    if dtype.hasobject:
        raise DlcError("E0002", f"{where} holds Python objects, which dlc does not load (no pickles)",
                       hint="save plain numeric arrays")
    return tuple(int(d) for d in shape), dtype


def check_npy(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) of the ``.npy`` at ``path``, after checking its size against the budget."""
    size = file_size(path, what)
    with open(path, "rb") as f:
        shape, dtype = _header(f, f"{what} `{path}`")
        need = budget.nbytes_of(shape, dtype)
        budget.check(f"{what} `{path}` ({dtype}{list(shape)})", need)
        if size - f.tell() < need:
            raise DlcError("E0002", f"{what} `{path}` is truncated: its header declares {dtype}{list(shape)} "
                                    f"({need} bytes) but {size - f.tell()} follow")
    return shape, dtype


def load_npy(path: Path, what: str) -> np.ndarray:
    check_npy(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DlcError("E0002", f"cannot read {what} `{path}`: {e}") from None


def check_npz(path: Path, what: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name → (shape, dtype) of every array in the ``.npz``, the total checked against the budget."""
    file_size(path, what)
    out, total = {}, 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with z.open(info) as f:
                    shape, dtype = _header(f, f"array `{name}` of {what} `{path}`")
                need = budget.nbytes_of(shape, dtype)
                total += need
                budget.check(f"array `{name}` of {what} `{path}` ({dtype}{list(shape)})", total)
                if info.compress_type == zipfile.ZIP_STORED and info.file_size < need:
                    raise DlcError("E0002", f"array `{name}` of {what} `{path}` is truncated: its header declares "
                                            f"{dtype}{list(shape)} ({need} bytes), the archive holds "
                                            f"{info.file_size}")
                out[name] = (shape, dtype)
    except zipfile.BadZipFile as e:
        raise DlcError("E0002", f"cannot read {what} `{path}` as an .npz archive: {e}") from None
    return out

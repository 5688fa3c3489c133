"""The folders checkpoints live in: dlc's marker, refusing folders of someone else's files,
and removing what a killed save left behind.

Ownership: the first save into a folder creates the marker.  A folder without
the marker that already holds a file with a name dlc writes (:data:`OWN_NAMES`)
is refused, so a user's ``latest.json`` is never overwritten and a user's
``ckpt-00000001.npz`` never pruned; other files in the folder are never
touched.  Inside a marked folder, files with dlc's names are dlc's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from dlc.grammar.errors import DlcError

from . import ckpt_schema as schema
from .files import create_exclusive, fsync_dir, remove

MARKER = ".dlc-checkpoints"
MANIFEST = re.compile(r"^ckpt-(\d{8,})\.json$")
_TEMP = re.compile(r"^\.ckpt-tmp-[0-9a-f]+\.tmp$")
# Every name dlc writes into a checkpoint folder (run logs included): a foreign file with one of them
# makes a folder without the marker unusable.
OWN_NAMES = re.compile(r"^(ckpt-\d{8,}(\.\d+)?\.(npz|json)|latest\.json|metrics\.(csv|jsonl)|"
                       r"\.ckpt-tmp-[0-9a-f]+\.tmp)$")


def _err(message: str, hint: str | None = None) -> DlcError:
    return DlcError("E0403", message, hint=hint)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def manifests(folder: Path) -> list[tuple[int, Path, dict]]:
    """(seq, path, manifest) of every dlc manifest in ``folder``, oldest save first."""
    found = []
    for p in folder.iterdir():
        if MANIFEST.match(p.name) and not p.is_symlink():
            m = read_json(p)
            if isinstance(m, dict) and m.get("format") == schema.FORMAT and schema._is_int(m.get("seq")):
                found.append((m["seq"], p, m))
    return sorted(found, key=lambda t: (t[0], t[1].name))


def owns(folder: Path) -> bool:
    """Whether ``folder`` carries dlc's checkpoint marker (a regular file, not a link)."""
    marker = Path(folder) / MARKER
    return marker.is_file() and not marker.is_symlink()


def claim(folder: Path) -> Path:
    """Make ``folder`` (created if needed) a dlc checkpoint folder, or refuse with E0403.

    Refused: a path that is a file; a folder without the marker holding files
    with names dlc writes (they are the user's: dlc would overwrite or prune
    them).  Anything else in the folder is left alone.  Run logs (``metrics.csv``)
    written into a claimed folder are dlc's too."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise _err(f"`{folder}` is a file, not a checkpoint folder",
                   hint="--checkpoint takes a folder; to resume from one checkpoint, pass its manifest with "
                        "--resume")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _err(f"cannot create checkpoint folder `{folder}`: {e.strerror or e}") from None
    if owns(folder):
        return folder
    marker = folder / MARKER
    if marker.is_symlink() or marker.exists():
        raise _err(f"`{marker}` is not dlc's checkpoint marker (a link or not a regular file)",
                   hint="choose another checkpoint folder")
    foreign = sorted(p.name for p in folder.iterdir() if OWN_NAMES.match(p.name))
    if foreign:
        raise _err(f"refusing to write checkpoints into `{folder}`: it holds files dlc did not write "
                   f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})",
                   hint="choose a new or empty folder for --checkpoint; dlc overwrites and prunes the files it "
                        "writes there")
    create_exclusive(marker, b'{"format": "dlc-checkpoint-folder", "version": 1}\n')
    fsync_dir(folder)
    return folder


def tidy(folder: Path) -> None:
    """In a folder dlc owns: remove the temp files and manifest-less npz files a kill left."""
    folder = Path(folder)
    if not owns(folder):
        return
    live = {m.get("npz") for _, _, m in manifests(folder)}
    for p in folder.iterdir():
        if _TEMP.match(p.name) or (schema.NPZ_NAME.match(p.name) and p.name not in live):
            if p.is_file() and not p.is_symlink():
                remove(p)


def prune(folder: Path, keep: int) -> None:
    """Drop all but the ``keep`` newest manifests, then npz files no manifest names."""
    found = manifests(folder)
    for _, path, _m in found[:-keep]:
        remove(path)  # manifest first: an orphan npz is harmless, a dangling manifest is not
    tidy(folder)

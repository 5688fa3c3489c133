"""Checkpoints: an ``.npz`` of arrays plus a JSON manifest, written crash-safely.

Layout of a checkpoint folder::

    ckpt-00000120.npz    arrays: ``param/<name>`` and ``state/<name>`` (no pickles)
    ckpt-00000120.json   manifest: format tag, npz file name, its sha256, the
                         name/shape/dtype of every array, ``meta`` (spec_hash,
                         step, epoch and whatever JSON the caller adds)
    latest.json          {"format": "dlc-checkpoint-latest", "manifest": ...}

Every file goes to a temp file in the same folder, is fsync'd, then
``os.replace``d into place: the npz first, its manifest next, ``latest.json``
last.  A kill at any moment therefore leaves the previous checkpoint whole and
``latest.json`` pointing at a complete one; an npz without a manifest is never
read.  Re-saving a step never overwrites an npz a manifest still points at.
One writer per folder is assumed.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.compiler.types import DTYPES
from dlc.grammar.errors import DlcError

from .files import write_atomic

FORMAT = "dlc-checkpoint"
LATEST_FORMAT = "dlc-checkpoint-latest"
LATEST = "latest.json"
_MANIFEST = re.compile(r"^ckpt-(\d{8,})\.json$")
_NPZ = re.compile(r"^ckpt-(\d{8,})(\.\d+)?\.npz$")
_TMP = ".ckpt-tmp-"


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    meta: dict
    path: Path  # the manifest


def _err(message: str, hint: str | None = None, notes: list[str] | None = None) -> DlcError:
    return DlcError("E0403", message, hint=hint, notes=[(n, None) for n in notes or []])


def _dtype_name(dt) -> str:
    dt = np.dtype(dt)
    for name, t in DTYPES.items():
        if np.dtype(t) == dt:
            return name
    return dt.str


def _json_default(obj):
    # Optimizer names, rng states and histories often arrive as NumPy scalars.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _npz_bytes(params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    arrays, listing = {}, {"params": {}, "state": {}}
    for group, prefix, items in (("params", "param/", params), ("state", "state/", state)):
        for name, value in items.items():
            a = np.asarray(value)
            if a.dtype.hasobject:
                raise _err(f"cannot checkpoint {group} `{name}`: object arrays are not allowed")
            arrays[prefix + name] = a
            listing[group][name] = {"shape": list(a.shape), "dtype": _dtype_name(a.dtype)}
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue(), listing


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _manifests(folder: Path) -> list[tuple[int, Path, dict]]:
    """(seq, path, manifest) of every dlc manifest in ``folder``, oldest save first."""
    found = []
    for p in folder.iterdir():
        if _MANIFEST.match(p.name):
            m = _read_json(p)
            if isinstance(m, dict) and m.get("format") == FORMAT and isinstance(m.get("seq"), int):
                found.append((m["seq"], p, m))
    return sorted(found, key=lambda t: (t[0], t[1].name))


def save(dir: Path, *, params: dict[str, np.ndarray], state: dict[str, np.ndarray], meta: dict,
         keep: int = 3) -> Path:
    """Write checkpoint ``meta["step"]`` into ``dir``; returns the manifest path.

    ``meta`` needs ``spec_hash`` (str), ``step`` and ``epoch`` (ints >= 0) and
    may hold any other JSON-able fields.  Only the ``keep`` most recently saved
    checkpoints survive."""
    missing = [k for k in ("spec_hash", "step", "epoch") if k not in meta]
    if missing:
        raise _err(f"checkpoint meta lacks {', '.join(missing)}")
    step, epoch = meta["step"], meta["epoch"]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in (step, epoch)):
        raise _err(f"checkpoint step and epoch must be integers >= 0, got step={step!r}, epoch={epoch!r}")
    if keep < 1:
        raise _err(f"keep must be at least 1, got {keep}")
    folder = Path(dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _err(f"cannot create checkpoint folder `{folder}`: {e}") from None
    data, listing = _npz_bytes(params, state)
    existing = _manifests(folder)
    # A fresh npz name when this step's file exists: a manifest may still point at it.
    stem = f"ckpt-{int(step):08d}"
    npz_name, k = f"{stem}.npz", 0
    while (folder / npz_name).exists():
        k += 1
        npz_name = f"{stem}.{k}.npz"
    manifest = {"format": FORMAT, "version": 1, "seq": existing[-1][0] + 1 if existing else 0,
                "npz": npz_name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                **listing, "meta": meta}
    try:
        text = json.dumps(manifest, indent=1, default=_json_default)
    except (TypeError, ValueError) as e:
        raise _err(f"checkpoint meta is not JSON-serialisable: {e}") from None
    manifest_path = folder / f"{stem}.json"
    write_atomic(folder / npz_name, data, prefix=_TMP)
    write_atomic(manifest_path, text.encode(), prefix=_TMP)
    write_atomic(folder / LATEST, json.dumps({"format": LATEST_FORMAT, "manifest": manifest_path.name,
                                               "step": int(step)}).encode())
    _prune(folder, keep)
    return manifest_path


def _prune(folder: Path, keep: int) -> None:
    """Drop all but the ``keep`` newest manifests, then npz files no manifest names."""
    manifests = _manifests(folder)
    for _, path, _m in manifests[:-keep]:
        path.unlink(missing_ok=True)  # manifest first: an orphan npz is harmless, a dangling manifest is not
    live = {m["npz"] for _, _, m in manifests[-keep:]}
    for p in folder.iterdir():
        if (_NPZ.match(p.name) and p.name not in live) or p.name.startswith(_TMP):
            p.unlink(missing_ok=True)


# -- loading --------------------------------------------------------------
def latest(dir: Path) -> Path | None:
    """The manifest ``latest.json`` names; without it, the newest manifest; else None."""
    folder = Path(dir)
    if not folder.is_dir():
        return None
    pointer = folder / LATEST
    if pointer.exists():
        info = _read_json(pointer)
        if not isinstance(info, dict) or info.get("format") != LATEST_FORMAT \
                or not isinstance(info.get("manifest"), str):
            raise _err(f"`{pointer}` is not a dlc checkpoint pointer",
                       hint="delete it, or point --resume at a ckpt-*.json manifest")
        target = folder / Path(info["manifest"]).name
        if not target.is_file():
            raise _err(f"`{pointer}` names `{target.name}`, which does not exist",
                       hint="the folder was edited by hand; point --resume at a ckpt-*.json manifest")
        return target
    found = _manifests(folder)
    return found[-1][1] if found else None


def _find_manifest(path: Path) -> Path:
    if not path.exists():
        raise _err(f"no checkpoint at `{path}`: it does not exist")
    if path.is_dir():
        found = latest(path)
        if found is None:
            raise _err(f"no checkpoint in `{path}`", hint="train without resuming first, or check the path")
        return found
    if path.suffix == ".npz":
        # An npz is only trusted through its manifest: a kill may have left it without one.
        for _, mpath, m in _manifests(path.parent):
            if m.get("npz") == path.name:
                return mpath
        raise _err(f"`{path}` has no manifest: it is not a complete dlc checkpoint",
                   hint="load the folder or a ckpt-*.json manifest instead")
    return path


def load(dir_or_file: Path, *, expect_spec_hash: str | None = None,
         expect_params: dict[str, tuple] | None = None) -> Checkpoint:
    """Read a checkpoint folder (its latest), a manifest, or an npz with a manifest.

    Verifies the sha256 of the npz, the spec hash when ``expect_spec_hash`` is
    given, and the parameter names/shapes/dtypes against ``expect_params``
    (name -> (shape, dtype)), listing every mismatch in one E0403."""
    path = _find_manifest(Path(dir_or_file))
    m = _read_json(path)
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("meta"), dict) \
            or not isinstance(m.get("npz"), str) or not isinstance(m.get("sha256"), str):
        raise _err(f"`{path}` is not a dlc checkpoint manifest",
                   hint="checkpoints are the ckpt-*.json files dlc writes next to ckpt-*.npz")
    npz = path.parent / Path(m["npz"]).name
    try:
        data = npz.read_bytes()
    except OSError as e:
        raise _err(f"checkpoint arrays `{npz}` cannot be read: {e}") from None
    if hashlib.sha256(data).hexdigest() != m["sha256"]:
        raise _err(f"checkpoint `{npz}` is corrupt or truncated: its sha256 does not match the manifest "
                   f"({len(data)} bytes, {m.get('bytes', '?')} expected)",
                   hint="resume from an older checkpoint manifest in the same folder, or start afresh")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/format errors come in many types
        raise _err(f"checkpoint `{npz}` cannot be read: {e}") from None
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    if set(params) != set(m.get("params", {})) or set(state) != set(m.get("state", {})):
        raise _err(f"checkpoint `{npz}` does not hold the arrays its manifest lists")
    meta = m["meta"]
    if expect_spec_hash is not None and meta.get("spec_hash") != expect_spec_hash:
        raise _err(f"checkpoint `{path.name}` was written for a different spec "
                   f"(spec hash {meta.get('spec_hash')!r}, the current spec is {expect_spec_hash!r})",
                   hint="the model changed since this checkpoint; start afresh or resume the matching spec")
    if expect_params is not None:
        _check_params(path, params, expect_params)
    return Checkpoint(params, state, meta, path)


def _check_params(path: Path, params: dict[str, np.ndarray], expect: dict[str, tuple]) -> None:
    notes = []
    for name, (shape, dtype) in expect.items():
        want_dt = np.dtype(DTYPES[dtype]) if isinstance(dtype, str) and dtype in DTYPES else np.dtype(dtype)
        want = f"{_dtype_name(want_dt)}{list(shape)}"
        if name not in params:
            notes.append(f"parameter `{name}` ({want}) is missing from the checkpoint")
            continue
        a = params[name]
        if tuple(a.shape) != tuple(shape) or a.dtype != want_dt:
            notes.append(f"parameter `{name}` is {_dtype_name(a.dtype)}{list(a.shape)} in the checkpoint, "
                         f"the model has {want}")
    for name in sorted(set(params) - set(expect)):
        a = params[name]
        notes.append(f"parameter `{name}` ({_dtype_name(a.dtype)}{list(a.shape)}) is in the checkpoint "
                     f"but not in the model")
    if notes:
        raise _err(f"checkpoint `{path.name}` does not match the model's parameters "
                   f"({len(notes)} mismatch{'es' if len(notes) > 1 else ''})", notes=notes,
                   hint="the model's layers changed since this checkpoint was written")

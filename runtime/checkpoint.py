"""Checkpoints: an ``.npz`` of arrays plus a JSON manifest, written crash-safely
into a folder dlc owns.

Layout of a checkpoint folder::

    .dlc-checkpoints     the marker: dlc created this folder's checkpoint files
    ckpt-00000120.npz    arrays: ``param/<name>``, ``state/<name>`` and ``dlc/record``
                         (the seq, step, epoch and spec hash of the checkpoint it
                         belongs to); no pickles
    ckpt-00000120.json   manifest (schema: ckpt_schema.py): format, version,
                         seq, npz file name, its sha256 and size, the
                         name/shape/dtype of every array, ``meta`` (spec_hash,
                         step, epoch and whatever JSON the caller adds) and
                         ``manifest_sha256``, the hash of all of that
    latest.json          {"format": "dlc-checkpoint-latest", "manifest": ...}

Ownership of the folder (the marker, refusing foreign files, cleanup): ckpt_folder.py.

Every file goes to a temp file in the same folder, is fsync'd, then
``os.replace``d into place: the npz first, its manifest next, ``latest.json``
last.  A kill at any moment therefore leaves the previous checkpoint whole and
``latest.json`` pointing at a complete one; an npz without a manifest is never
read, and the next save or resume removes it and any temp file.  Re-saving a
step never overwrites an npz a manifest still points at.  One writer per folder
is assumed.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlc.compiler.types import DTYPES
from dlc.grammar.errors import DlcError

from . import ckpt_schema as schema
from .ckpt_folder import MANIFEST, claim, manifests, prune, read_json, tidy
from .files import check_target, write_atomic

FORMAT = schema.FORMAT
LATEST_FORMAT = "dlc-checkpoint-latest"
LATEST = "latest.json"
RECORD = "dlc/record"
_NPZ = schema.NPZ_NAME
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


def _record(seq: int, meta: dict) -> dict:
    return {"seq": seq, "step": int(meta["step"]), "epoch": int(meta["epoch"]), "spec_hash": meta["spec_hash"]}


def _npz_bytes(params: dict[str, np.ndarray], state: dict[str, np.ndarray], record: dict) -> tuple[bytes, dict]:
    arrays, listing = {}, {"params": {}, "state": {}}
    for group, prefix, items in (("params", "param/", params), ("state", "state/", state)):
        for name, value in items.items():
            a = np.asarray(value)
            if a.dtype.hasobject:
                raise _err(f"cannot checkpoint {group} `{name}`: object arrays are not allowed")
            if _dtype_name(a.dtype) not in DTYPES:
                raise _err(f"cannot checkpoint {group} `{name}`: dtype {a.dtype} is not one of dlc's")
            arrays[prefix + name] = a
            listing[group][name] = {"shape": list(a.shape), "dtype": _dtype_name(a.dtype)}
    arrays[RECORD] = np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue(), listing


# -- saving -------------------------------------------------------------------
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
    folder = claim(Path(dir))
    tidy(folder)  # what a killed save left behind
    try:
        meta = json.loads(json.dumps(meta, default=_json_default))  # plain JSON from here on
    except (TypeError, ValueError) as e:
        raise _err(f"checkpoint meta is not JSON-serialisable: {e}") from None
    existing = manifests(folder)
    seq = existing[-1][0] + 1 if existing else 0
    data, listing = _npz_bytes(params, state, _record(seq, meta))
    # A fresh npz name when this step's file exists: a manifest may still point at it.
    stem = f"ckpt-{int(step):08d}"
    npz_name, k = f"{stem}.npz", 0
    while (folder / npz_name).exists() or (folder / npz_name).is_symlink():
        k += 1
        npz_name = f"{stem}.{k}.npz"
    manifest = {"format": FORMAT, "version": schema.VERSION, "seq": seq,
                "npz": npz_name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                **listing, "meta": meta}
    manifest["manifest_sha256"] = schema.self_hash(manifest)
    manifest_path = folder / f"{stem}.json"
    for target in (folder / npz_name, manifest_path, folder / LATEST):
        check_target(target)  # before the first byte lands: a link or directory in the way stops the save
    write_atomic(folder / npz_name, data, prefix=_TMP)
    write_atomic(manifest_path, json.dumps(manifest, indent=1).encode(), prefix=_TMP)
    write_atomic(folder / LATEST, json.dumps({"format": LATEST_FORMAT, "manifest": manifest_path.name,
                                               "step": int(step)}).encode(), prefix=_TMP)
    prune(folder, keep)
    return manifest_path


# -- loading --------------------------------------------------------------
def latest(dir: Path) -> Path | None:
    """The manifest ``latest.json`` names; without it, the newest manifest; else None."""
    folder = Path(dir)
    if not folder.is_dir():
        return None
    pointer = folder / LATEST
    if pointer.exists():
        info = read_json(pointer)
        if not isinstance(info, dict) or info.get("format") != LATEST_FORMAT \
                or not isinstance(info.get("manifest"), str):
            raise _err(f"`{pointer}` is not a dlc checkpoint pointer",
                       hint="delete it, or point --resume at a ckpt-*.json manifest")
        target = folder / Path(info["manifest"]).name
        if not target.is_file():
            raise _err(f"`{pointer}` names `{target.name}`, which does not exist",
                       hint="the folder was edited by hand; point --resume at a ckpt-*.json manifest")
        return target
    found = manifests(folder)
    return found[-1][1] if found else None


def _find_manifest(path: Path) -> Path:
    if not path.exists():
        raise _err(f"no checkpoint at `{path}`: it does not exist")
    if path.is_dir():
        found = latest(path)
        if found is None:
            raise _err(f"no checkpoint in `{path}`", hint="train without resuming first, or check the path")
        return found
    if not path.is_file():  # a FIFO would block the read forever, a device read without end
        raise _err(f"no checkpoint at `{path}`: it is not a regular file (a FIFO, socket or device)")
    if path.suffix == ".npz":
        # An npz is only trusted through its manifest: a kill may have left it without one.
        for _, mpath, m in manifests(path.parent):
            if m.get("npz") == path.name:
                return mpath
        raise _err(f"`{path}` has no manifest: it is not a complete dlc checkpoint",
                   hint="load the folder or a ckpt-*.json manifest instead")
    return path


def _read_manifest(path: Path) -> dict:
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _err(f"`{path}` is not a dlc checkpoint manifest",
                   hint="checkpoints are the ckpt-*.json files dlc writes next to ckpt-*.npz")
    try:
        schema.validate(m)
    except schema.ManifestError as e:
        raise schema.error(path, e) from None
    return m


def _lie(path: Path, field: str, problem: str) -> DlcError:
    return schema.error(path, schema.ManifestError(field, problem))


def load(dir_or_file: Path, *, expect_spec_hash: str | None = None,
         expect_params: dict[str, tuple] | None = None) -> Checkpoint:
    """Read a checkpoint folder (its latest), a manifest, or an npz with a manifest.

    Validates the manifest against its schema and its own hash, the sha256,
    size and record of the npz, every array against the manifest's listing, the
    spec hash when ``expect_spec_hash`` is given, and the parameter
    names/shapes/dtypes against ``expect_params`` (name -> (shape, dtype)),
    listing every mismatch in one E0403."""
    path = _find_manifest(Path(dir_or_file))
    m = _read_manifest(path)
    npz = path.parent / m["npz"]
    try:
        if npz.is_symlink():
            raise OSError("it is a symbolic link")
        size = npz.stat().st_size
        if size != m["bytes"]:
            raise _err(f"checkpoint `{npz}` is corrupt or truncated: {size} bytes, {m['bytes']} expected",
                       hint="resume from an older checkpoint manifest in the same folder, or start afresh")
        data = npz.read_bytes()
    except OSError as e:
        raise _err(f"checkpoint arrays `{npz}` cannot be read: {e.strerror or e}") from None
    if hashlib.sha256(data).hexdigest() != m["sha256"]:
        raise _err(f"checkpoint `{npz}` is corrupt or truncated: its sha256 does not match the manifest "
                   f"({len(data)} bytes, {m['bytes']} expected)",
                   hint="resume from an older checkpoint manifest in the same folder, or start afresh")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/format errors come in many types
        raise _err(f"checkpoint `{npz}` cannot be read: {e}") from None
    _check_record(path, m, arrays.pop(RECORD, None))
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    if set(params) != set(m["params"]) or set(state) != set(m["state"]) or len(params) + len(state) != len(arrays):
        raise _lie(path, "params", f"does not list the arrays `{npz.name}` holds")
    for group, items in (("params", params), ("state", state)):
        for name, a in items.items():
            entry = m[group][name]
            if list(a.shape) != entry["shape"]:
                raise _lie(path, f"{group}.{name}.shape", f"says {entry['shape']}, the array is {list(a.shape)}")
            if _dtype_name(a.dtype) != entry["dtype"]:
                raise _lie(path, f"{group}.{name}.dtype", f"says {entry['dtype']}, the array is "
                                                          f"{_dtype_name(a.dtype)}")
    meta = m["meta"]
    if expect_spec_hash is not None and meta.get("spec_hash") != expect_spec_hash:
        raise _err(f"checkpoint `{path.name}` was written for a different spec "
                   f"(spec hash {meta.get('spec_hash')!r}, the current spec is {expect_spec_hash!r})",
                   hint="the model changed since this checkpoint; start afresh or resume the matching spec")
    if expect_params is not None:
        _check_params(path, params, expect_params)
    return Checkpoint(params, state, meta, path)


def _check_record(path: Path, m: dict, raw) -> None:
    """The npz says which checkpoint it belongs to; the manifest must agree field by field."""
    try:
        record = json.loads(bytes(np.asarray(raw, dtype=np.uint8)).decode()) if raw is not None else None
    except (ValueError, UnicodeDecodeError, TypeError):
        record = None
    if not isinstance(record, dict):
        raise _lie(path, "npz", f"names `{m['npz']}`, which holds no record of the checkpoint it belongs to")
    want = _record(m["seq"], m["meta"])
    for key, field_name in (("seq", "seq"), ("step", "meta.step"), ("epoch", "meta.epoch"),
                            ("spec_hash", "meta.spec_hash")):
        if record.get(key) != want[key]:
            raise _lie(path, field_name, f"says {want[key]!r}, but `{m['npz']}` was written for "
                                         f"{record.get(key)!r}")


# -- resuming -------------------------------------------------------------
@dataclass
class Resume:
    """Where a resumed run continues: the folder it saves into, the checkpoint (None: start
    afresh) and what the user should be told."""

    folder: Path
    checkpoint: Checkpoint | None
    messages: list[str] = field(default_factory=list)


def resume_point(path: Path, *, expect_spec_hash: str | None = None,
                 expect_params: dict[str, tuple] | None = None) -> Resume:
    """The checkpoint ``--checkpoint PATH --resume`` continues from.

    A manifest (or npz) path: exactly that checkpoint (E0403 when it is
    invalid); saves then go to its folder.  A folder: the checkpoint
    ``latest.json`` names, else — when it or the pointer is damaged — the
    newest valid one, saying so; E0403 listing every reason when none is
    valid; no checkpoint at all: start afresh, saying so."""
    path = Path(path)
    expect = {"expect_spec_hash": expect_spec_hash, "expect_params": expect_params}
    if path.exists() and not path.is_dir():
        c = load(path, **expect)
        tidy(path.parent)
        return Resume(path.parent, c, [f"resumed from {c.path} (epoch {c.meta['epoch']}, step {c.meta['step']})"])
    if not path.is_dir():
        return Resume(path, None, [f"no checkpoint in `{path}` yet: training from the start"])
    tidy(path)
    candidates, problems = [], []
    try:
        pointed = latest(path)
        if pointed is not None:
            candidates.append(pointed)
    except DlcError as e:
        problems.append(e.message)
    newest_first = sorted((p for p in path.iterdir() if MANIFEST.match(p.name)), key=_save_order, reverse=True)
    candidates += [p for p in newest_first if p not in candidates]
    if not candidates and not problems:
        return Resume(path, None, [f"no checkpoint in `{path}` yet: training from the start"])
    first_error = None
    for p in candidates:
        try:
            c = load(p, **expect)
        except DlcError as e:
            first_error = first_error or e
            problems.append(e.message)
            continue
        messages = []
        if problems:
            messages.append(f"the newest checkpoint in `{path}` is not usable ({problems[0]}); "
                            f"falling back to the newest valid one")
        messages.append(f"resumed from {c.path} (epoch {c.meta['epoch']}, step {c.meta['step']})")
        return Resume(path, c, messages)
    if first_error is not None and len(problems) == 1:
        raise first_error
    raise _err(f"no valid checkpoint in `{path}` to resume from", notes=problems,
               hint="start afresh without --resume, or with a new --checkpoint folder")


def _save_order(p: Path):
    m = read_json(p)
    seq = m.get("seq") if isinstance(m, dict) and schema._is_int(m.get("seq")) else -1
    return (seq, p.name)


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

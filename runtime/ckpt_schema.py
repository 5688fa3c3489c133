"""The schema of a checkpoint manifest: every field's type and range.

A manifest is trusted only after :func:`validate` accepted it; any field that
lies is E0403 naming the field (``meta.epoch``, ``params.w.shape``, ...).  The
manifest carries ``manifest_sha256``, the hash of its own canonical JSON (every
other field), so a hand edit that keeps every field in range is caught too;
the npz carries a record of the checkpoint it belongs to (see checkpoint.py),
so a manifest pointed at another checkpoint's arrays is caught even when its
``sha256`` was fixed.
"""
from __future__ import annotations

import hashlib
import json
import re

from dlc.compiler.types import DTYPES
from dlc.grammar.errors import DlcError

FORMAT = "dlc-checkpoint"
VERSION = 2
NPZ_NAME = re.compile(r"^ckpt-(\d{8,})(\.\d+)?\.npz$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[^\x00]+$")


class ManifestError(Exception):
    """One field of a manifest is wrong; ``field`` is its dotted path."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field `{field}` {problem}")
        self.field = field
        self.problem = problem


def canonical(obj) -> bytes:
    """The bytes hashed into ``manifest_sha256``: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def self_hash(manifest: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in manifest.items() if k != "manifest_sha256"})).hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(m: dict, key: str, field: str, *, lo: int = 0, optional: bool = False, none: bool = False):
    if key not in m:
        if optional:
            return
        raise ManifestError(field, "is missing")
    v = m[key]
    if v is None and none:
        return
    if not _is_int(v) or v < lo:
        raise ManifestError(field, f"must be an integer >= {lo}, got {v!r}")


def _str(m: dict, key: str, field: str, *, optional: bool = False, pattern=None):
    if key not in m:
        if optional:
            return
        raise ManifestError(field, "is missing")
    v = m[key]
    if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
        raise ManifestError(field, f"must be {'a string' if pattern is None else 'of the form ' + pattern.pattern}"
                                   f", got {v!r}")


def _dict(m: dict, key: str, field: str, *, optional: bool = False) -> dict | None:
    if key not in m:
        if optional:
            return None
        raise ManifestError(field, "is missing")
    v = m[key]
    if not isinstance(v, dict):
        raise ManifestError(field, f"must be an object, got {v!r}")
    return v


def _listing(m: dict, group: str) -> None:
    items = _dict(m, group, group)
    for name, entry in items.items():
        f = f"{group}.{name}"
        if not _NAME.match(name):
            raise ManifestError(f, "is not a valid array name")
        if not isinstance(entry, dict):
            raise ManifestError(f, f"must be an object with shape and dtype, got {entry!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ManifestError(f + ".shape", f"must be a list of integers >= 0, got {shape!r}")
        if entry.get("dtype") not in DTYPES:
            raise ManifestError(f + ".dtype", f"must be one of {', '.join(DTYPES)}, got {entry.get('dtype')!r}")


def _meta(meta: dict) -> None:
    _str(meta, "spec_hash", "meta.spec_hash")
    _int(meta, "step", "meta.step")
    _int(meta, "epoch", "meta.epoch")
    _int(meta, "seed", "meta.seed", lo=-(2**63), optional=True)
    for key in ("model", "backend"):
        _str(meta, key, f"meta.{key}", optional=True)
    if "history" in meta:
        history = meta["history"]
        if not isinstance(history, list):
            raise ManifestError("meta.history", f"must be a list of per-epoch rows, got {history!r}")
        for i, row in enumerate(history):
            if not isinstance(row, dict):
                raise ManifestError(f"meta.history[{i}]", f"must be an object, got {row!r}")
            for k, v in row.items():
                if not (v is None or _is_num(v)):
                    raise ManifestError(f"meta.history[{i}].{k}", f"must be a number, got {v!r}")
            if "epoch" in row:
                _int(row, "epoch", f"meta.history[{i}].epoch", lo=1)
    es = _dict(meta, "early_stop", "meta.early_stop", optional=True)
    if es is not None:
        best = es.get("best")
        if not (best is None or _is_num(best)):
            raise ManifestError("meta.early_stop.best", f"must be a number or null, got {best!r}")
        _int(es, "best_epoch", "meta.early_stop.best_epoch", lo=1, optional=True, none=True)
        _int(es, "bad", "meta.early_stop.bad", optional=True)
        if "stopped" in es and not isinstance(es["stopped"], bool):
            raise ManifestError("meta.early_stop.stopped", f"must be true or false, got {es['stopped']!r}")
    opt = _dict(meta, "optimizers", "meta.optimizers", optional=True)
    for k, v in (opt or {}).items():
        if not isinstance(v, str):
            raise ManifestError(f"meta.optimizers.{k}", f"must be a string, got {v!r}")


def validate(m) -> None:
    """Raise :class:`ManifestError` at the first field of ``m`` that breaks the schema."""
    if not isinstance(m, dict):
        raise ManifestError("(manifest)", "must be a JSON object")
    if m.get("format") != FORMAT:
        raise ManifestError("format", f"must be {FORMAT!r}, got {m.get('format')!r}")
    if m.get("version") != VERSION:
        raise ManifestError("version", f"must be {VERSION}, got {m.get('version')!r}")
    _str(m, "manifest_sha256", "manifest_sha256", pattern=_HEX64)
    if self_hash(m) != m["manifest_sha256"]:
        raise ManifestError("manifest_sha256", "does not match the manifest's content: it was edited after dlc "
                                               "wrote it")
    _int(m, "seq", "seq")
    _str(m, "npz", "npz", pattern=NPZ_NAME)
    _str(m, "sha256", "sha256", pattern=_HEX64)
    _int(m, "bytes", "bytes")
    _listing(m, "params")
    _listing(m, "state")
    meta = _dict(m, "meta", "meta")
    _meta(meta)


def error(path, e: ManifestError) -> DlcError:
    return DlcError("E0403", f"checkpoint manifest `{path}` is not valid: {e}",
                    hint="resume from another checkpoint in the folder, or start afresh")


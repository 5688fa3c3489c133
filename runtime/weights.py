"""Trained weights in and out of dlc: loading them for a model, and safetensors files.

:func:`load_for_model` reads what ``--checkpoint`` names — a checkpoint
folder, a ``ckpt-*.json`` manifest (runtime/checkpoint.py), or a
``.safetensors`` file written by :func:`write_safetensors` — checks it
against the model (names, shapes, dtypes; the spec hash for checkpoints) and
returns the parameters and the spec's state to use.

:func:`write_safetensors` writes parameters and the spec's state under their
dlc names (``h.W``, ``bn.running_mean``) in the safetensors format
(``pip install 'dlc[safetensors]'``); its string metadata records the format
tag, model name, spec hash, epoch and which tensors are parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dlc.compiler.optional import import_optional
from dlc.grammar.errors import DlcError

from .checkpoint import Checkpoint
from .checkpoint import load as load_checkpoint
from .files import refuse_foreign, write_atomic
from .train import BEST

SAFETENSORS_FORMAT = "dlc-weights"


def _safetensors():
    return import_optional("safetensors.numpy", "reading and writing .safetensors files")


def load_for_model(path: Path, model, *, best: bool = True) -> tuple[Checkpoint, dict, dict]:
    """(the checkpoint as read, parameters, the spec's state) for ``model`` from ``path``.
    ``best``: a checkpoint's best epoch when the run kept one, else its last."""
    expect = {k: (v.shape, v.dtype) for k, v in model.params.items()}
    if Path(path).suffix == ".safetensors":
        ckpt = read_safetensors(Path(path), expect_spec_hash=model.spec_hash)
        from .checkpoint import _check_params

        _check_params(ckpt.path, ckpt.params, expect)
        kept = {}
    else:
        ckpt = load_checkpoint(Path(path), expect_params=expect)
        _check_spec(ckpt, model)
        kept = {k[len(BEST):]: v for k, v in ckpt.state.items() if k.startswith(BEST)} if best else {}
    source = {**ckpt.params, **ckpt.state, **kept}
    missing = [k for k in model.state if k not in source]
    if missing:
        raise DlcError("E0403", f"checkpoint {ckpt.path} lacks the state {', '.join(missing)}")
    params = {k: np.array(source[k]) for k in ckpt.params}
    state = {k: np.array(source[k]) for k in model.state}
    return ckpt, params, state


def checkpoint_weights(path: Path, *, best: bool = True) -> tuple[dict, dict, dict]:
    """(parameters, the spec's state, metadata) of a checkpoint, without the spec: the
    spec's state is what has a plain dlc name (optimizer slots and counters have a ``/``);
    ``best``: the best epoch's values when the run kept them."""
    ckpt = load_checkpoint(Path(path))
    kept = {k[len(BEST):]: v for k, v in ckpt.state.items() if k.startswith(BEST)} if best else {}
    params = {k: kept.get(k, v) for k, v in ckpt.params.items()}
    state = {k: kept.get(k, v) for k, v in ckpt.state.items() if "/" not in k and not k.startswith(BEST)}
    epoch = ckpt.meta.get("epoch")
    if kept:
        epoch = (ckpt.meta.get("early_stop") or {}).get("best_epoch", epoch)
    meta = {"model": ckpt.meta.get("model", ""), "spec_hash": ckpt.meta.get("spec_hash", ""),
            "epoch": epoch, "source": str(ckpt.path)}
    return params, state, meta


def _check_spec(ckpt: Checkpoint, model) -> None:
    """The checkpoint was written for this spec with these --set values (they are part of its hash)."""
    if ckpt.meta.get("spec_hash") == model.spec_hash:
        return
    hyper = ckpt.meta.get("hyper")
    if isinstance(hyper, dict) and hyper != model.hyper:
        shown = " ".join(f"--set {k}={v}" for k, v in sorted(hyper.items())) or "no --set values"
        hint = f"the run used {shown}: pass the same values"
    else:
        hint = "the model changed since this checkpoint was written; use the spec that wrote it"
    raise DlcError("E0403", f"checkpoint `{ckpt.path.name}` was written for a different spec "
                            f"(spec hash {ckpt.meta.get('spec_hash')!r}, the current spec is {model.spec_hash!r})",
                   hint=hint)


def write_safetensors(target: Path, params: dict, state: dict, meta: dict) -> int:
    """Write ``params`` and ``state`` (disjoint names) to ``target``; returns its size in bytes."""
    st = _safetensors()
    clash = sorted(set(params) & set(state))
    if clash:
        raise DlcError("E0501", f"`{clash[0]}` is both a parameter and a state: safetensors keys must be unique")
    tensors = {k: np.ascontiguousarray(v) for k, v in {**params, **state}.items()}
    info = {"format": SAFETENSORS_FORMAT, "params": json.dumps(sorted(params)),
            **{k: str(v) for k, v in meta.items()}}
    data = st.save(tensors, metadata=info)
    target = Path(target)
    refuse_foreign(target, _exported_by_dlc, force=False, code="E0501", flag="another -o path")
    write_atomic(target, data)
    return len(data)


def _exported_by_dlc(path: Path) -> bool:
    """Whether ``path`` is a safetensors file of :func:`write_safetensors` (its header's metadata says so)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(n, 1 << 24)))
        return (header.get("__metadata__") or {}).get("format") == SAFETENSORS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_safetensors(path: Path, *, expect_spec_hash: str | None = None) -> Checkpoint:
    """A ``.safetensors`` file of :func:`write_safetensors` as a Checkpoint (no optimizer state)."""
    st = _safetensors()
    if not path.is_file():  # a FIFO would block the read forever
        raise DlcError("E0403", f"cannot read `{path}`: it is not a regular file (a FIFO, socket or device)")
    try:
        data = path.read_bytes()
        tensors = st.load(data)
        header_len = int.from_bytes(data[:8], "little")
        info = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except OSError as e:
        raise DlcError("E0403", f"cannot read `{path}`: {e}") from None
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise DlcError("E0403", f"`{path}` is not a safetensors file: {e}") from None
    if info.get("format") != SAFETENSORS_FORMAT:
        raise DlcError("E0403", f"`{path}` was not written by `dlc export-weights`",
                       hint="dlc reads back the safetensors files it writes (their metadata names the tensors' roles)")
    if expect_spec_hash is not None and info.get("spec_hash") != expect_spec_hash:
        raise DlcError("E0403", f"`{path.name}` was written for a different spec "
                                f"(spec hash {info.get('spec_hash')!r}, the current spec is {expect_spec_hash!r})",
                       hint="the model or its --set values changed since these weights were exported")
    names = set(json.loads(info.get("params", "[]")))
    meta = {k: v for k, v in info.items() if k not in ("format", "params")}
    if "epoch" in meta:
        meta["epoch"] = int(meta["epoch"])
    return Checkpoint({k: v for k, v in tensors.items() if k in names},
                      {k: v for k, v in tensors.items() if k not in names}, meta, path)

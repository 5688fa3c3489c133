"""``dlc check``: every model of a spec compiled in both modes, its training steps built.

The whole-file counterpart of :class:`dlc.model.Model`, which compiles one model; the
CLI's ``dlc check`` and the docs' spec tests call :func:`check`.
"""
from __future__ import annotations

from pathlib import Path

from dlc.compiler.lower import compile_model, load_module
from dlc.grammar.errors import DlcError
from dlc.model import Model


def check(path: str | Path, **hyper) -> str:
    """Compile every model of the spec at ``path`` in both modes and build its
    training steps; returns a one-line summary or raises the first error.
    ``hyper`` sets hyperparameters of the models that declare them (a name no
    model declares is an error)."""
    loaded = load_module(str(path))
    declared = {f.name for d in loaded.models.values() for f in d.formals}
    unknown = [k for k in hyper if k not in declared]
    if unknown and loaded.models:
        Model(loaded, None, hyper={unknown[0]: hyper[unknown[0]]})  # raises E0102 with a suggestion
    parts = []
    for name, defn in loaded.models.items():
        mine = {k: v for k, v in hyper.items() if k in {f.name for f in defn.formals}}
        m = Model(loaded, name, mode="train", hyper=mine)
        compile_model(loaded, m.defn, "eval", mine)
        m.check_train()
        parts.append(f"{name} ({m.param_count():,} weights{', trains' if name in loaded.trains else ''})")
    for t in loaded.trains.values():
        if t.model not in loaded.models:
            from dlc.grammar.errors import suggest

            raise DlcError("E0201", f"train block for unknown model `{t.model}`", t.loc,
                           hint=suggest(t.model, loaded.models))
    layers = len(loaded.env.layers)
    return ", ".join(parts) if parts else f"no models, {layers} layer{'s' if layers != 1 else ''}"

"""A train block's data: validated without loading (``dlc check``), and loaded as
its train / val / test splits matched to the model's inputs; data errors
carry the span of the block's ``data`` entry."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from dlc.grammar.errors import DlcError

from .data import check_dataset, check_fits, declared_schema, load_dataset, match_inputs, split
from .finite import check_dataset_finite


def data_options(model, spec) -> tuple[dict, dict]:
    """(options of the data set itself, split options) of the train block's ``data``."""
    opts = dict(spec.data.kwargs)
    split_opts = {"fractions": opts.pop("split", (0.8, 0.1, 0.1)), "same": bool(opts.pop("same", False)),
                  "seed": int(opts.pop("seed", spec.seed))}
    base = Path(model.loaded.path).resolve().parent if model.loaded.path != "<string>" else None
    return {"base_dir": base, **opts}, split_opts


def check_data(model, spec) -> None:
    """Validate the data reference of a train block without loading it (``dlc check``)."""
    opts, _ = data_options(model, spec)
    with _at(spec.data.loc):
        check_dataset(spec.data.name, **opts)
        schema = declared_schema(spec.data.name, **opts)
        if schema is not None:  # the arrays' names, ranks and dims against the inputs, from the schema
            check_fits(schema, model.inputs, spec.inputs or None)


def load_splits(model, spec, allow_nonfinite: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The train/val/test splits; a NaN or Inf in the data is E0402 naming the array, unless allowed."""
    opts, so = data_options(model, spec)
    data_seed, fractions, same = so["seed"], so["fractions"], so["same"]
    with _at(spec.data.loc):
        ds = load_dataset(spec.data.name, seed=data_seed, **opts)
        if not allow_nonfinite:
            check_dataset_finite(ds)
        parts = split(ds, fractions, seed=data_seed, same=same)
        return {k: match_inputs(v, model.inputs, spec.inputs or None) for k, v in parts.items()}


@contextlib.contextmanager
def _at(loc):
    """Give data errors (raised without a span) the span of the train block's `data`."""
    try:
        yield
    except DlcError as e:
        if e.loc is None:
            e.loc = loc
        raise

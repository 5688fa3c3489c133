"""Datasets as dicts of NumPy arrays: built-ins, user files, splits, batches.

Everything is offline and seeded: the same (name, seed, options) gives the same
arrays bit for bit, and :func:`batches` derives its order from (seed, epoch)
alone, so a run resumed at epoch k sees exactly the batches it would have seen.

A :class:`Dataset` holds arrays that share their leading (example) axis N.
Built-ins (``load_dataset(name, **options)``) live in ``datasets.py``.

User files (a name ending ``.npz`` or ``.csv``) are resolved against
``base_dir``; see :func:`_load_npz` and :func:`_load_csv`.
"""
from __future__ import annotations

import csv
import inspect
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dlc.compiler.dims import Sym, shape_str, solve
from dlc.compiler.types import DTYPES, np_dtype
from dlc.grammar.errors import DlcError, suggest

from . import generated  # noqa: F401  (registers the generated data sets)
from .datasets import BUILTINS, Dataset, length_of, positive_int


def _resolve(name: str, base_dir: Path | None) -> Path:
    """Relative paths must stay inside ``base_dir``; absolute ones may go anywhere."""
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    p = Path(name)
    if p.is_absolute():
        return p
    full = (base / p).resolve()
    if full != base and base not in full.parents:
        raise DlcError("E0002", f"data file `{name}` is outside `{base}`",
                       hint="give an absolute path to read a file outside the spec's folder")
    return full


def _n_classes(y: np.ndarray | None) -> int | None:
    if y is None or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        return None
    return int(y.max()) + 1


def _load_npz(path: Path, n_classes: int | None = None) -> Dataset:
    """Every array of the archive under its own name; ``y`` (integer) gives n_classes."""
    from .npy_file import check_npz

    check_npz(path, "data file")  # headers against the memory budget before any data is read
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DlcError("E0002", f"cannot read `{path}` as an .npz archive: {e}",
                       hint="write it with numpy.savez and plain numeric arrays (no objects)") from None
    if not arrays:
        raise DlcError("E0002", f"`{path}` holds no arrays")
    lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        listing = ", ".join(f"{k}: {shape_str(a.shape)}" for k, a in arrays.items())
        raise DlcError("E0002", f"the arrays of `{path}` do not share a leading example axis ({listing})")
    nc = n_classes if n_classes is not None else _n_classes(arrays.get("y"))
    return Dataset(arrays, nc, f"{path.name}: " + ", ".join(sorted(arrays)))


def _load_csv(path: Path, target: str | None = None, n_classes: int | None = None) -> Dataset:
    """Header row of names, numeric rows.  ``target`` goes to ``y`` (i64[N] when every
    value is a whole number, else f32[N,1]) and the other columns to x f32[N,C];
    without ``target`` every column goes to ``x``."""
    from dlc.compiler import budget

    from .files import file_size

    # parsed, a CSV takes about 40 times its text (a Python list of strings per row, then float64)
    budget.check(f"data file `{path}` ({budget.fmt_bytes(file_size(path, 'data file'))} of CSV)",
                 40 * file_size(path, "data file"))
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise DlcError("E0002", f"cannot read `{path}`: {e}") from None
    if len(rows) < 2:
        raise DlcError("E0002", f"`{path}` needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DlcError("E0002", f"{path}:{i}: {len(row)} columns, the header has {len(header)}")
        for j, cell in enumerate(row):
            try:
                values[i - 2, j] = float(cell)
            except ValueError:
                raise DlcError("E0002", f"{path}:{i}: column `{header[j]}` holds {cell.strip()!r}, not a number",
                               hint="data files must be all numeric; encode categories as integers") from None
    if target is None:
        return Dataset({"x": values.astype(np.float32)}, n_classes, f"{path.name}: {len(header)} columns")
    if target not in header:
        raise DlcError("E0201", f"target column `{target}` is not in `{path}` (columns: {', '.join(header)})",
                       hint=suggest(target, header))
    t = header.index(target)
    col = values[:, t]
    y = col.astype(np.int64) if np.all(col == np.round(col)) else col.astype(np.float32)[:, None]
    x = np.delete(values, t, axis=1).astype(np.float32)
    nc = n_classes if n_classes is not None else _n_classes(y)
    return Dataset({"x": x, "y": y}, nc, f"{path.name}: target `{target}`")


_FILES: dict[str, Callable[..., Dataset]] = {".npz": _load_npz, ".csv": _load_csv}


def _existing(name: str, base_dir: Path | None) -> Path:
    path = _resolve(name, base_dir)
    if not path.is_file():
        where = "the spec's folder" if base_dir is not None else "the current directory"
        raise DlcError("E0002", f"data file `{name}` does not exist", hint=f"relative paths start in {where}")
    return path


def check_dataset(name: str, *, base_dir: Path | None = None, **options) -> None:
    """Validate a data reference (name, file existence, options) without loading anything."""
    suffix = Path(name).suffix.lower()
    if suffix in _FILES:
        _existing(name, base_dir)
        _check_options(_FILES[suffix], name, options)
    elif name not in BUILTINS:
        load_dataset(name)  # raises the unknown-name error with its suggestion
    else:
        _check_options(BUILTINS[name], name, options)


def _call(fn: Callable[..., Dataset], what: str, first, options: dict) -> Dataset:
    _check_options(fn, what, options)
    return fn(first, **options)


def _check_options(fn: Callable[..., Dataset], what: str, options: dict) -> None:
    allowed = [p for p in inspect.signature(fn).parameters][1:]
    for key in options:
        if key not in allowed:
            raise DlcError("E0201", f"unknown option `{key}` for dataset `{what}`",
                           hint=suggest(key, allowed) or ("options: " + ", ".join(allowed) if allowed
                                                          else "it takes no options"))


def load_dataset(name: str, *, seed: int = 0, base_dir: Path | None = None, **options) -> Dataset:
    """A built-in by name, or a ``.npz``/``.csv`` file relative to ``base_dir``."""
    suffix = Path(name).suffix.lower()
    if suffix in _FILES:
        return _call(_FILES[suffix], name, _existing(name, base_dir), options)
    if name not in BUILTINS:
        close = suggest(name, BUILTINS)
        listing = "built-in datasets: " + ", ".join(BUILTINS) + "; or a path to a .npz or .csv file"
        raise DlcError("E0201", f"unknown dataset `{name}`",
                       hint=f"{close} ({listing})" if close else listing)
    return _call(BUILTINS[name], name, seed, options)


# -- splits and batches ---------------------------------------------------
def _arrays(ds) -> dict[str, np.ndarray]:
    return ds.arrays if isinstance(ds, Dataset) else dict(ds)


def split(ds, fractions=(0.8, 0.1, 0.1), seed: int = 0, *, same: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Seeded disjoint train/val/test splits of the example axis.

    ``same=True`` makes all three the full set (for tiny sets like xor, or the
    one-example karate graph that is split by masks instead)."""
    arrays = _arrays(ds)
    if same:
        _check_train_size(length_of(arrays), "the data set has no examples")
        return {k: dict(arrays) for k in ("train", "val", "test")}
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DlcError("E0201", f"split fractions must be three numbers >= 0 summing to 1, got {tuple(fractions)}")
    n = length_of(arrays)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(np.floor(fr[0] * n + 0.5))
    _check_train_size(n_train, f"split {tuple(fractions)} of {n} example{'s' * (n != 1)} leaves none to train on")
    n_val = n - n_train if fr[2] == 0 else min(n - n_train, int(np.floor(fr[1] * n + 0.5)))
    if fr[1] == 0:
        n_val = 0
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {k: {name: a[idx] for name, a in arrays.items()} for k, idx in parts.items()}


def _check_train_size(n_train: int, why: str) -> None:
    """An empty training split is E0201: epochs of no steps would report a loss of 0."""
    if n_train == 0:
        raise DlcError("E0201", f"the training split is empty: {why}",
                       hint="give the training split a larger fraction, or use more examples")


def batches(arrays, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
            drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Mini-batches of ``arrays``; the order depends only on (seed, epoch)."""
    arrays = _arrays(arrays)
    size = positive_int("batch_size", batch_size)
    n = length_of(arrays)
    order = batch_indices(n, size, shuffle=shuffle, seed=seed, epoch=epoch)
    stop = n - n % size if drop_last else n
    for start in range(0, stop, size):
        if order is None:
            yield {k: a[start:start + size] for k, a in arrays.items()}
        else:
            idx = order[start:start + size]
            yield {k: a[idx] for k, a in arrays.items()}


def batch_indices(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray | None:
    """The row order :func:`batches` cuts into consecutive batches of ``batch_size``:
    a permutation that depends only on (seed, epoch), or None (rows in order).
    Data-parallel workers cut their shards from the same order (runtime/distributed.py)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n) if shuffle else None


# -- feeding a model ------------------------------------------------------
def _describe(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}: {_dtype_str(a.dtype)}{shape_str(a.shape)}" for k, a in arrays.items()) or "nothing"


def _dtype_str(dt) -> str:
    for name, t in DTYPES.items():
        if np.dtype(t) == dt:
            return name
    return str(dt)


def _mismatch(name: str, ty, src: str, dtype: str, shape: tuple, env: dict) -> str | None:
    """Why an array of ``dtype``/``shape`` (axis 0, the example axis, is not compared)
    cannot feed input ``name`` of type ``ty``, or None."""
    want = tuple(ty.shape)
    found = f"{dtype}{shape_str(tuple('N' if d is None else d for d in shape))}"
    if len(shape) != len(want):
        return (f"model input `{name}` is {ty.dtype}{shape_str(want)} but dataset array `{src}` is "
                f"{found} (rank {len(shape)}, not {len(want)})")
    bad = [i for i in range(1, len(shape)) if not isinstance(want[i], (int, Sym)) or
           not solve(want[i], int(shape[i]), env)]
    if bad:
        return (f"model input `{name}` is {ty.dtype}{shape_str(want)} but dataset array `{src}` is "
                f"{found} (axis {', '.join(map(str, bad))} differs)")
    return None


def _check_mapping(mapping: dict, inputs: dict) -> None:
    for key in mapping:
        if key not in inputs:
            raise DlcError("E0201", f"data mapping names `{key}`, which is not a model input",
                           hint=suggest(key, inputs) or "model inputs: " + ", ".join(inputs))


def _missing_array(name: str, src: str, names, described: str) -> DlcError:
    close = suggest(src, names)
    return DlcError("E0201", f"model input `{name}` needs a dataset array `{src}`; the dataset has {described}",
                    hint=(close + " " if close else "") + f"map `{name}` to one of the dataset's arrays in the train block")


def match_inputs(arrays, inputs: dict, mapping: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Dataset arrays for each model input, by equal name or ``mapping[input] = array``.

    Arrays are cast to the input's dtype (float to integer only when every value
    is whole).  Axis 0 is the example/batch axis and is not checked; the other
    axes must match the input's int dims, and symbolic dims must agree across
    inputs.  Every mismatch is reported in one E0201."""
    arrays = _arrays(arrays)
    mapping = dict(mapping or {})
    _check_mapping(mapping, inputs)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    env: dict = {}
    for name, ty in inputs.items():
        src = mapping.get(name, name)
        if src not in arrays:
            raise _missing_array(name, src, arrays, _describe(arrays))
        a = arrays[src]
        dt = np_dtype(ty.dtype) if isinstance(ty.dtype, str) else np.dtype(ty.dtype)
        problem = _mismatch(name, ty, src, _dtype_str(a.dtype), (None, *a.shape[1:]) if a.ndim else (), env)
        if problem is None and np.issubdtype(a.dtype, np.floating) and not np.issubdtype(dt, np.floating) \
                and dt != np.bool_:
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                problem = f"model input `{name}` is {_dtype_str(dt)} but dataset array `{src}` holds non-integer values"
        if problem:
            problems.append(problem)
            continue
        out[name] = a.astype(dt, copy=False)
    if problems:
        raise DlcError("E0201", "the dataset does not fit the model inputs",
                       notes=[(p, None) for p in problems], hint=f"the dataset has {_describe(arrays)}")
    return out


def declared_schema(name: str, *, base_dir: Path | None = None, **options):
    """{array: (dtype, shape with None for the example axis)} of a data reference, from
    what it declares without loading it: a built-in's schema, an ``.npz``'s array
    headers; None when that is not known in advance (a ``.csv``)."""
    from .datasets import SCHEMAS

    suffix = Path(name).suffix.lower()
    if suffix == ".npz":
        return _npz_schema(_existing(name, base_dir))
    if name in SCHEMAS:
        return SCHEMAS[name](**options)
    return None


def _npz_schema(path: Path):
    """The arrays' dtypes and shapes from the archive's .npy headers (no data read)."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[info.filename[:-4]] = (_dtype_str(dtype), (None, *shape[1:]) if shape else ())
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # unreadable: loading reports it, with the reason
    return out or None


def check_fits(schema: dict, inputs: dict, mapping: dict[str, str] | None = None) -> None:
    """The checks of :func:`match_inputs` on a declared schema: every input has an
    array of its rank and fixed dims.  Values are not known, so a float array for
    an integer input passes (loading checks that its values are whole)."""
    mapping = dict(mapping or {})
    _check_mapping(mapping, inputs)
    described = ", ".join(f"{k}: {d}{shape_str(tuple('N' if x is None else x for x in sh))}"
                          for k, (d, sh) in schema.items()) or "nothing"
    problems, env = [], {}
    for name, ty in inputs.items():
        src = mapping.get(name, name)
        if src not in schema:
            close = suggest(src, schema)
            problems.append(f"model input `{name}` needs a dataset array `{src}`, which the dataset lacks"
                            + (f" ({close})" if close else ""))
            continue
        dtype, shape = schema[src]
        problem = _mismatch(name, ty, src, dtype, shape, env)
        if problem:
            problems.append(problem)
    if problems:
        raise DlcError("E0201", "the dataset does not fit the model inputs",
                       notes=[(p, None) for p in problems],
                       hint=f"the dataset has {described}; map inputs to its arrays with `inputs = {{...}}`")

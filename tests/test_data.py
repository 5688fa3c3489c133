"""Datasets: built-ins, user files, seeded splits and batches, feeding model inputs."""
from __future__ import annotations

import numpy as np
import pytest

from dlc.compiler.dims import Sym
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.data import BUILTINS, Dataset, batches, load_dataset, match_inputs, split

B, T = Sym.var("B"), Sym.var("T")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_digits():
    ds = load_dataset("digits")
    x, y = ds.arrays["x"], ds.arrays["y"]
    assert x.dtype == np.float32 and x.shape == (1797, 64) and y.dtype == np.int64 and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0
    assert ds.n_classes == 10 and set(np.unique(y)) == set(range(10)) and len(ds) == 1797


@pytest.mark.parametrize("name", ["digits", "iris"])
def test_shipped_arrays_equal_scikit_learn(name):
    """The package data is scikit-learn's data set, bit for bit (the `test` extra installs scikit-learn;
    the core install does not need it)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from dlc.runtime.datasets import shipped_arrays

    ref = getattr(sklearn_datasets, f"load_{name}")()
    data, target = shipped_arrays(name)
    assert data.dtype == ref.data.dtype and np.array_equal(data, ref.data)
    assert np.array_equal(target, ref.target) and target.dtype == np.int64


def test_iris_standardised():
    ds = load_dataset("iris")
    x = ds.arrays["x"]
    assert x.shape == (150, 4) and x.dtype == np.float32 and ds.n_classes == 3
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-5)


def test_karate():
    ds = load_dataset("karate", seed=3)
    a = ds.arrays
    assert a["x"].shape == a["adj"].shape == (1, 34, 34) and a["x"].dtype == a["adj"].dtype == np.float32
    np.testing.assert_array_equal(a["x"][0], np.eye(34))
    adj = a["adj"][0]
    np.testing.assert_allclose(adj, adj.T)
    assert np.all(np.diag(adj) > 0)
    # D^-1/2 (A+I) D^-1/2 has spectral radius 1
    assert abs(np.linalg.eigvalsh(adj.astype(np.float64)).max() - 1) < 1e-5
    y = a["y"][0]
    assert a["y"].dtype == np.int64 and y[0] == 0 and y[33] == 1 and set(y) == {0, 1}
    train, test = a["train_mask"][0], a["test_mask"][0]
    assert a["train_mask"].dtype == np.bool_ and train.sum() == 4 and train[0] and train[33]
    assert np.array_equal(test, ~train) and set(y[train]) == {0, 1} and np.bincount(y[train]).tolist() == [2, 2]
    assert _same(ds.arrays, load_dataset("karate", seed=3).arrays)


def test_xor():
    ds = load_dataset("xor", repeat=2)
    assert ds.arrays["x"].shape == (8, 2) and ds.arrays["y"].tolist() == [0, 1, 1, 0] * 2
    assert ds.arrays["y_f"].shape == (8, 1) and ds.arrays["y_f"].dtype == np.float32
    parts = split(ds, seed=0, same=True)
    assert all(_same(parts[k], ds.arrays) for k in ("train", "val", "test"))


def test_adding_targets():
    ds = load_dataset("adding", seed=5, n=300, T=10)
    x, y, yc = ds.arrays["x"], ds.arrays["y"], ds.arrays["y_cls"]
    assert x.shape == (300, 10, 2) and x.dtype == np.float32 and y.shape == (300, 1) and yc.dtype == np.int64
    marker = x[..., 1]
    assert np.all(marker[:, :5].sum(axis=1) == 1) and np.all(marker[:, 5:].sum(axis=1) == 1)
    assert np.all((x[..., 0] >= 0) & (x[..., 0] < 1))
    expect = (x[..., 0].astype(np.float64) * marker).sum(axis=1)
    np.testing.assert_allclose(y[:, 0], expect, rtol=1e-6)
    assert np.array_equal(yc, (expect > 1.0).astype(np.int64))
    assert 0.35 < yc.mean() < 0.65  # chance is about one half
    assert _same(ds.arrays, load_dataset("adding", seed=5, n=300, T=10).arrays)
    assert not np.array_equal(x, load_dataset("adding", seed=6, n=300, T=10).arrays["x"])


def test_gaussian_mixture():
    ds = load_dataset("gaussian_mixture", seed=1, n=90, k=3, std=0.1)
    x, y = ds.arrays["x"], ds.arrays["y"]
    assert x.shape == (90, 2) and ds.n_classes == 3 and np.bincount(y).tolist() == [30, 30, 30]
    centres = np.array([x[y == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.0, atol=0.1)


def test_splits_disjoint_seeded_deterministic():
    ds = load_dataset("digits")
    n = len(ds)
    ds.arrays["idx"] = np.arange(n)
    parts = split(ds, (0.8, 0.1, 0.1), seed=7)
    idx = [parts[k]["idx"] for k in ("train", "val", "test")]
    assert [len(i) for i in idx] == [1438, 180, 179]
    assert len(np.unique(np.concatenate(idx))) == n  # disjoint and covering
    assert np.array_equal(parts["train"]["x"], ds.arrays["x"][parts["train"]["idx"]])
    again = split(ds, (0.8, 0.1, 0.1), seed=7)
    assert all(_same(parts[k], again[k]) for k in parts)
    other = split(ds, (0.8, 0.1, 0.1), seed=8)
    assert not np.array_equal(other["train"]["idx"], parts["train"]["idx"])
    zero = split(ds.arrays, (0.9, 0.0, 0.1), seed=7)
    assert len(zero["val"]["idx"]) == 0 and zero["val"]["x"].shape == (0, 64)
    assert len(zero["train"]["idx"]) + len(zero["test"]["idx"]) == n
    assert len(split(ds, (0.5, 0.5, 0.0), seed=1)["test"]["idx"]) == 0
    with pytest.raises(DlcError) as e:
        split(ds, (0.5, 0.2, 0.1))
    assert e.value.code == "E0201"


def test_batches_deterministic_per_seed_and_epoch():
    arrays = {"x": np.arange(10, dtype=np.float32)[:, None], "y": np.arange(10)}

    def run(**kw):
        return [b["y"].tolist() for b in batches(arrays, 4, **kw)]

    plain = run(shuffle=False, seed=0, epoch=0)
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert run(shuffle=False, seed=0, epoch=0, drop_last=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    e3 = run(shuffle=True, seed=1, epoch=3)
    assert e3 == run(shuffle=True, seed=1, epoch=3)  # resuming at epoch 3 sees the same batches
    assert sorted(sum(e3, [])) == list(range(10))
    assert e3 != run(shuffle=True, seed=1, epoch=4) and e3 != run(shuffle=True, seed=2, epoch=3)
    for b in batches(arrays, 3, shuffle=True, seed=1, epoch=0):
        assert np.array_equal(b["x"][:, 0], b["y"].astype(np.float32))  # rows stay aligned
    assert list(batches({"x": np.zeros((0, 2))}, 4, shuffle=True, seed=0, epoch=0)) == []
    with pytest.raises(DlcError) as e:
        list(batches(arrays, 0, shuffle=False, seed=0, epoch=0))
    assert e.value.code == "E0201"


def test_csv_loading(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1.5,2,0\n3,4.25,1\n\n5,6,2\n")
    ds = load_dataset("d.csv", base_dir=tmp_path, target="label")
    assert ds.arrays["x"].dtype == np.float32 and ds.arrays["x"].tolist() == [[1.5, 2], [3, 4.25], [5, 6]]
    assert ds.arrays["y"].dtype == np.int64 and ds.arrays["y"].tolist() == [0, 1, 2] and ds.n_classes == 3
    reg = load_dataset("d.csv", base_dir=tmp_path, target="a")
    assert reg.arrays["y"].dtype == np.float32 and reg.arrays["y"].shape == (3, 1) and reg.n_classes is None
    assert load_dataset("d.csv", base_dir=tmp_path).arrays["x"].shape == (3, 3)
    with pytest.raises(DlcError) as e:
        load_dataset("d.csv", base_dir=tmp_path, target="lable")
    assert e.value.code == "E0201" and "did you mean `label`?" in e.value.hint
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(DlcError) as e:
        load_dataset("bad.csv", base_dir=tmp_path)
    assert e.value.code == "E0002" and "bad.csv:3" in e.value.message and "'x'" in e.value.message
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DlcError) as e:
        load_dataset("ragged.csv", base_dir=tmp_path)
    assert e.value.code == "E0002"


def test_npz_loading(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3), np.float32), y=np.array([0, 1, 2, 1, 0]))
    ds = load_dataset("d.npz", base_dir=tmp_path)
    assert set(ds.arrays) == {"x", "y"} and ds.n_classes == 3 and len(ds) == 5
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(DlcError) as e:  # relative paths may not leave base_dir
        load_dataset("../d.npz", base_dir=sub)
    assert e.value.code == "E0002" and "absolute" in e.value.hint
    assert len(load_dataset(str(tmp_path / "d.npz"), base_dir=sub)) == 5  # absolute is fine
    with pytest.raises(DlcError) as e:
        load_dataset("missing.npz", base_dir=tmp_path)
    assert e.value.code == "E0002" and "does not exist" in e.value.message
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DlcError) as e:
        load_dataset("junk.npz", base_dir=tmp_path)
    assert e.value.code == "E0002"
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DlcError) as e:
        load_dataset("obj.npz", base_dir=tmp_path)
    assert e.value.code == "E0002"
    np.savez(tmp_path / "ragged.npz", x=np.ones((5, 3)), y=np.ones(4))
    with pytest.raises(DlcError) as e:
        load_dataset("ragged.npz", base_dir=tmp_path)
    assert e.value.code == "E0002" and "leading" in e.value.message


def test_unknown_name_and_option():
    with pytest.raises(DlcError) as e:
        load_dataset("digts")
    err = e.value
    assert err.code == "E0201" and "unknown dataset `digts`" in err.message
    assert "did you mean `digits`?" in err.hint and all(name in err.hint for name in BUILTINS)
    with pytest.raises(DlcError) as e:
        load_dataset("zzz")
    assert "did you mean" not in e.value.hint and ".csv" in e.value.hint
    with pytest.raises(DlcError) as e:
        load_dataset("adding", n_samples=3)
    assert e.value.code == "E0201" and "n_samples" in e.value.message
    with pytest.raises(DlcError) as e:
        load_dataset("adding", T=1)
    assert e.value.code == "E0201"
    with pytest.raises(DlcError) as e:
        load_dataset("digits", n=3)
    assert e.value.code == "E0201" and "no options" in e.value.hint


def test_match_inputs():
    ds = load_dataset("adding", n=8, T=6)
    inputs = {"seq": TensorType("f64", (B, T, 2)), "label": TensorType("i32", (B,))}
    fed = match_inputs(ds.arrays, inputs, {"seq": "x", "label": "y_cls"})
    assert fed["seq"].dtype == np.float64 and fed["seq"].shape == (8, 6, 2) and fed["label"].dtype == np.int32
    xs = load_dataset("xor")
    assert match_inputs(xs, {"x": TensorType("f32", (B, 2))})["x"] is xs.arrays["x"]  # no copy needed
    # float labels become ints only when whole
    assert match_inputs(xs, {"y_f": TensorType("i64", (B, 1))})["y_f"].dtype == np.int64
    with pytest.raises(DlcError) as e:
        match_inputs(ds.arrays, {"y": TensorType("i64", (B, 1))})
    assert "non-integer" in e.value.notes[0][0]


def test_match_inputs_errors():
    ds = load_dataset("xor")
    with pytest.raises(DlcError) as e:
        match_inputs(ds, {"x": TensorType("f32", (B, 2)), "target": TensorType("i64", (B,))})
    err = e.value
    assert err.code == "E0201" and "`target`" in err.message
    assert "x: f32[4, 2]" in err.message and "y: i64[4]" in err.message and "y_f: f32[4, 1]" in err.message
    with pytest.raises(DlcError) as e:
        match_inputs(ds, {"x": TensorType("f32", (B, 3)), "y": TensorType("i64", (B, 1))})
    err = e.value
    assert err.code == "E0201" and len(err.notes) == 2
    assert "axis 1" in err.notes[0][0] and "rank 1, not 2" in err.notes[1][0]
    with pytest.raises(DlcError) as e:  # one symbol must mean one size across inputs
        match_inputs({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))},
                     {"a": TensorType("f32", (B, T)), "b": TensorType("f32", (B, T))})
    assert "`b`" in e.value.notes[0][0]
    with pytest.raises(DlcError) as e:
        match_inputs(ds, {"x": TensorType("f32", (B, 2))}, {"xx": "x"})
    assert e.value.code == "E0201" and "did you mean `x`?" in e.value.hint


def test_dataset_is_plain():
    ds = Dataset({"x": np.zeros((3, 1))}, None, "tiny")
    assert len(ds) == 3 and split(ds, (1, 0, 0))["train"]["x"].shape == (3, 1)


@pytest.mark.parametrize("name, options", [(n, {}) for n in BUILTINS] + [
    ("adding", {"n": 10, "T": 7}), ("first_token_repeats", {"n": 6, "T": 4}), ("skipgram", {"n": 30, "negatives": 3}),
    ("xor", {"repeat": 3})])
def test_declared_schemas_are_what_the_builtins_return(name, options):
    """`dlc check` fits data to inputs from the declared schema: it must be the truth."""
    from dlc.runtime.data import _dtype_str
    from dlc.runtime.datasets import SCHEMAS

    ds = load_dataset(name, **options)
    real = {k: (_dtype_str(a.dtype), (None, *a.shape[1:])) for k, a in ds.arrays.items()}
    assert SCHEMAS[name](**options) == real


def test_check_fits_reports_rank_names_and_dims_without_data(tmp_path):
    from dlc.runtime.data import check_fits, declared_schema

    schema = declared_schema("digits")
    check_fits(schema, {"x": TensorType("f32", (B, 64)), "y": TensorType("i64", (B,))})
    with pytest.raises(DlcError) as e:
        check_fits(schema, {"x": TensorType("f32", (B, 8, 8)), "label": TensorType("i64", (B,))})
    notes = [n for n, _ in e.value.notes]
    assert e.value.code == "E0201" and len(notes) == 2
    assert "rank 2, not 3" in notes[0] and "`label`" in notes[1]
    check_fits(schema, {"x": TensorType("f32", (B, 64)), "label": TensorType("i64", (B,))}, {"label": "y"})
    np.savez(tmp_path / "d.npz", a=np.zeros((5, 3, 2), np.float32), b=np.zeros(5, np.int64))
    schema = declared_schema("d.npz", base_dir=tmp_path)
    assert schema == {"a": ("f32", (None, 3, 2)), "b": ("i64", (None,))}
    with pytest.raises(DlcError) as e:
        check_fits(schema, {"a": TensorType("f32", (B, 3, 4))})
    assert "axis 2 differs" in e.value.notes[0][0]


def test_an_empty_training_split_is_an_error_not_epochs_of_loss_zero(tmp_path):
    """`split = [0, 0, 1]` (or a data set of no examples) trained nothing and printed `loss 0.0000`
    every epoch; it is E0201 at the train block's `data`."""
    import dlc

    ds = {"x": np.arange(10, dtype=np.float32).reshape(10, 1)}
    with pytest.raises(DlcError) as e:
        split(ds, (0.0, 0.0, 1.0), seed=0)
    assert e.value.code == "E0201" and "split (0.0, 0.0, 1.0) of 10 examples leaves none to train on" in e.value.message
    with pytest.raises(DlcError) as e:
        split({"x": np.zeros((0, 1), np.float32)}, same=True)
    assert e.value.code == "E0201" and "no examples" in e.value.message
    assert len(split(ds, (0.1, 0.0, 0.9), seed=0)["train"]["x"]) == 1  # one example is enough
    np.savez(tmp_path / "d.npz", x=ds["x"], y=ds["x"])
    spec = tmp_path / "t.dl"
    spec.write_text("model m() {\n    input x: f32[B, 1]\n    input y: f32[B, 1]\n    param W: [1, 1] = zeros()\n"
                    "    output loss = mean((x @ W - y) ** 2)\n}\ntrain m {\n"
                    '    data = file("d.npz", split = [0, 0, 1])\n    loss = loss\n}\n')
    with pytest.raises(DlcError) as e:
        dlc.load(spec, mode="train").train(progress=False, echo=lambda *a: None)
    assert e.value.code == "E0201" and (e.value.loc.line, e.value.loc.col) == (8, 12)

"""Checkpoints: bit-exact round trips, pruning, crash safety and clear errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dlc.grammar.errors import DlcError
from dlc.runtime import checkpoint as ck


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    params = {"dense.w": rng.standard_normal((3, 4)).astype(np.float32),
              "dense.b": np.array([np.nan, -0.0, np.inf, 1e-45], dtype=np.float32),
              "emb.table": rng.standard_normal((5, 2)),  # f64
              }
    state = {"bn.mean": rng.standard_normal(4).astype(np.float32), "step": np.array(7, dtype=np.int64),
             "mask": np.array([True, False])}
    return params, state


def _meta(step, **extra):
    return {"spec_hash": "abc123", "step": step, "epoch": step // 10, **extra}


def _save(tmp_path, step, seed=0, **kw):
    params, state = _arrays(seed)
    return ck.save(tmp_path, params=params, state=state, meta=_meta(step), **kw)


def test_round_trip_bit_exact(tmp_path):
    params, state = _arrays()
    meta = _meta(12, optimizer="adam", rng=np.uint64(2**63 + 5), history=[{"loss": 0.5}, {"loss": float("nan")}])
    path = ck.save(tmp_path, params=params, state=state, meta=meta)
    assert path == tmp_path / "ckpt-00000012.json"
    assert (tmp_path / "ckpt-00000012.npz").is_file()
    assert ck.latest(tmp_path) == path
    got = ck.load(tmp_path, expect_spec_hash="abc123",
                  expect_params={k: (v.shape, v.dtype) for k, v in params.items()})
    assert got.path == path
    for mine, theirs in ((params, got.params), (state, got.state)):
        assert set(mine) == set(theirs)
        for k in mine:
            assert theirs[k].dtype == mine[k].dtype and theirs[k].shape == mine[k].shape
            assert theirs[k].tobytes() == mine[k].tobytes()
    assert got.meta["optimizer"] == "adam" and got.meta["rng"] == 2**63 + 5
    assert got.meta["step"] == 12 and got.meta["epoch"] == 1
    assert np.isnan(got.meta["history"][1]["loss"])
    # dtype names as strings work too
    ck.load(path, expect_params={"dense.w": ((3, 4), "f32"), "dense.b": ((4,), "f32"), "emb.table": ((5, 2), "f64")})


def test_no_pickle_in_npz(tmp_path):
    ck.save(tmp_path, params={"w": np.ones(2)}, state={}, meta=_meta(0))
    with np.load(tmp_path / "ckpt-00000000.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["dlc/record", "param/w"]
    with pytest.raises(DlcError) as e:
        ck.save(tmp_path, params={"w": np.array([object()])}, state={}, meta=_meta(1))
    assert e.value.code == "E0403"


def test_keep_prunes_oldest(tmp_path):
    for step in (10, 20, 30, 40, 50):
        _save(tmp_path, step, seed=step)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".dlc-checkpoints", "ckpt-00000030.json", "ckpt-00000030.npz", "ckpt-00000040.json", "ckpt-00000040.npz",
                     "ckpt-00000050.json", "ckpt-00000050.npz", "latest.json"]
    assert ck.load(tmp_path).meta["step"] == 50
    assert ck.load(tmp_path / "ckpt-00000030.json").meta["step"] == 30
    _save(tmp_path, 60, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dlc-checkpoints", "ckpt-00000060.json", "ckpt-00000060.npz", "latest.json"]


def test_resave_same_step_and_older_step(tmp_path):
    _save(tmp_path, 5, seed=1)
    _save(tmp_path, 5, seed=2)  # e.g. a resumed run saving the same step again
    got = ck.load(tmp_path)
    assert got.params["dense.w"].tobytes() == _arrays(2)[0]["dense.w"].tobytes()
    # the replaced npz is gone; the manifest points at the new one
    assert len(list(tmp_path.glob("*.npz"))) == 1
    _save(tmp_path, 9)
    _save(tmp_path, 3)  # resumed from an earlier point: latest is the newest save, not the highest step
    assert ck.latest(tmp_path).name == "ckpt-00000003.json"
    assert ck.load(tmp_path).meta["step"] == 3


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_kill_mid_save_keeps_previous(tmp_path, monkeypatch, fail_at):
    first = _save(tmp_path, 1, seed=1)
    real = os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:  # 1: the npz, 2: its manifest, 3: latest.json
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, seed=2)
    monkeypatch.setattr(os, "replace", real)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    got = ck.load(tmp_path)
    if fail_at < 3:
        assert ck.latest(tmp_path) == first
        assert got.meta["step"] == 1
        assert got.params["dense.w"].tobytes() == _arrays(1)[0]["dense.w"].tobytes()
    else:  # the new manifest is complete; latest.json still names the old one, which is intact
        assert got.meta["step"] == 1
        assert ck.load(tmp_path / "ckpt-00000002.json").meta["step"] == 2
    if fail_at == 2:
        # the new npz landed without a manifest: it is never taken for a checkpoint
        with pytest.raises(DlcError) as e:
            ck.load(tmp_path / "ckpt-00000002.npz")
        assert e.value.code == "E0403" and "no manifest" in e.value.message
    # the next save cleans up and works
    _save(tmp_path, 3, seed=3)
    assert ck.load(tmp_path).meta["step"] == 3


def test_truncated_npz(tmp_path):
    path = _save(tmp_path, 4)
    npz = tmp_path / "ckpt-00000004.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(DlcError) as e:
        ck.load(path)
    assert e.value.code == "E0403"
    assert "corrupt or truncated" in e.value.message and "100 bytes" in e.value.message
    assert "error[E0403]" in e.value.render()


def test_npz_missing(tmp_path):
    _save(tmp_path, 4)
    (tmp_path / "ckpt-00000004.npz").unlink()
    with pytest.raises(DlcError) as e:
        ck.load(tmp_path)
    assert e.value.code == "E0403" and "cannot be read" in e.value.message


def test_mismatched_params_all_listed(tmp_path):
    params, _ = _arrays()
    path = _save(tmp_path, 1)
    expect = {"dense.w": ((4, 3), np.float32),      # wrong shape
              "dense.b": ((4,), np.float64),        # wrong dtype
              "head.w": ((2, 2), np.float32)}       # missing; emb.table is extra
    with pytest.raises(DlcError) as e:
        ck.load(path, expect_params=expect)
    err = e.value
    assert err.code == "E0403" and "4 mismatches" in err.message
    text = "\n".join(n for n, _ in err.notes)
    assert "`dense.w` is f32[3, 4] in the checkpoint, the model has f32[4, 3]" in text
    assert "`dense.b` is f32[4]" in text and "f64[4]" in text
    assert "`head.w` (f32[2, 2]) is missing" in text
    assert "`emb.table` (f64[5, 2]) is in the checkpoint but not in the model" in text
    assert err.render().count("= note:") == 4


def test_spec_hash_mismatch(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(DlcError) as e:
        ck.load(tmp_path, expect_spec_hash="other")
    assert e.value.code == "E0403" and "different spec" in e.value.message


def test_foreign_and_missing(tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DlcError) as e:
        ck.load(foreign)
    assert e.value.code == "E0403" and "not a dlc checkpoint manifest" in e.value.message
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DlcError) as e:
        ck.load(garbage)
    assert e.value.code == "E0403"
    with pytest.raises(DlcError) as e:
        ck.load(tmp_path / "nope")
    assert e.value.code == "E0403" and "does not exist" in e.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ck.latest(empty) is None and ck.latest(tmp_path / "nope") is None
    with pytest.raises(DlcError) as e:
        ck.load(empty)
    assert e.value.code == "E0403" and "no checkpoint in" in e.value.message
    (empty / "latest.json").write_text(json.dumps({"format": "dlc-checkpoint-latest", "manifest": "ckpt-1.json"}))
    with pytest.raises(DlcError) as e:
        ck.load(empty)
    assert e.value.code == "E0403" and "does not exist" in e.value.message


def test_latest_without_pointer_falls_back(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "latest.json").unlink()
    assert ck.latest(tmp_path).name == "ckpt-00000002.json"


def test_bad_meta(tmp_path):
    with pytest.raises(DlcError) as e:
        ck.save(tmp_path, params={}, state={}, meta={"step": 1})
    assert e.value.code == "E0403" and "spec_hash" in e.value.message
    with pytest.raises(DlcError) as e:
        ck.save(tmp_path, params={}, state={}, meta=_meta(1, fn=len))
    assert e.value.code == "E0403" and "JSON" in e.value.message


def test_leftovers_of_a_real_kill_are_ignored_then_removed(tmp_path):
    _save(tmp_path, 1)
    # what SIGKILL can leave: a temp file and an npz whose manifest never landed
    (tmp_path / ".ckpt-tmp-abc123.tmp").write_bytes(b"partial")
    (tmp_path / "ckpt-00000002.npz").write_bytes(b"partial")
    assert ck.latest(tmp_path).name == "ckpt-00000001.json"
    assert ck.load(tmp_path).meta["step"] == 1
    _save(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".dlc-checkpoints", "ckpt-00000001.json", "ckpt-00000001.npz", "ckpt-00000002.json", "ckpt-00000002.npz", "latest.json"]
    assert ck.load(tmp_path).meta["step"] == 2


def test_unreadable_npz_with_matching_hash(tmp_path):
    import hashlib

    path = _save(tmp_path, 1)
    junk = b"this is not a zip archive"
    (tmp_path / "ckpt-00000001.npz").write_bytes(junk)
    m = json.loads(path.read_text())
    m["sha256"] = hashlib.sha256(junk).hexdigest()
    m["bytes"] = len(junk)
    m["manifest_sha256"] = ck.schema.self_hash(m)
    path.write_text(json.dumps(m))
    with pytest.raises(DlcError) as e:
        ck.load(tmp_path)
    assert e.value.code == "E0403" and "cannot be read" in e.value.message


def test_a_fresh_run_never_prunes_an_earlier_runs_checkpoints(tmp_path):
    """Training afresh into a folder of an earlier run's checkpoints is E0403 before any
    epoch (its saves would have pruned them); --resume continues; a new folder starts afresh."""
    from pathlib import Path

    import dlc

    spec = Path(__file__).resolve().parent.parent / "specs" / "xor.dl"
    folder = tmp_path / "run"
    m = dlc.load(spec, mode="train")
    m.train(epochs=2, checkpoint=folder, progress=False, echo=lambda s: None)
    before = sorted(p.name for p in folder.iterdir())
    assert any(n.startswith("ckpt-") for n in before)
    lines = []
    with pytest.raises(DlcError) as err:
        dlc.load(spec, mode="train").train(epochs=4, checkpoint=folder, progress=False,
                                                                 echo=lines.append)
    assert err.value.code == "E0403" and "--resume" in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == before and not [s for s in lines if s.startswith("epoch")]
    history = dlc.load(spec, mode="train").train(epochs=4, checkpoint=folder, resume=True,
                                                                      progress=False, echo=lambda s: None)
    assert [row["epoch"] for row in history.epochs] == [1, 2, 3, 4]  # epochs 1-2 restored, 3-4 trained on

"""dlc never loses or overwrites a user's file: checkpoint folders it owns, no
writes through links, coded errors for odd targets, the user's umask, no stray
files after a kill at any file operation, and resume that falls back to the
newest valid checkpoint."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

import dlc
from dlc.cli import main
from dlc.grammar.errors import DlcError
from dlc.runtime import checkpoint as ck
from dlc.runtime import ckpt_folder
from dlc.runtime import files

from test_training import QUIET, regression


def _meta(step, **extra):
    return {"spec_hash": "abc", "step": step, "epoch": step, **extra}


def _save(folder, step, **kw):
    return ck.save(folder, params={"w": np.full(3, float(step), np.float32)}, state={}, meta=_meta(step), **kw)


# -- checkpoint folders -------------------------------------------------------------
@pytest.mark.parametrize("name", ["latest.json", "ckpt-00000001.npz", "ckpt-00000001.json", "metrics.csv"])
def test_folder_with_a_colliding_user_file_is_refused(tmp_path, name):
    mine = tmp_path / name
    mine.write_bytes(b"the user's own file")
    with pytest.raises(DlcError) as e:
        _save(tmp_path, 1)
    assert e.value.code == "E0403" and name in e.value.message
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, not even the marker


def test_foreign_files_that_do_not_collide_survive_pruning(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "ckpt-old.npz").write_text("not a dlc name either")
    for step in range(1, 7):
        _save(tmp_path, step, keep=2)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "ckpt-old.npz").exists()
    assert ckpt_folder.owns(tmp_path)


def test_checkpoint_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DlcError) as e:
        _save(f, 1)
    assert e.value.code == "E0403" and "is a file" in e.value.message
    assert f.read_text() == "x"


def test_no_write_through_a_link_in_the_folder(tmp_path):
    _save(tmp_path, 1)
    victim = tmp_path.parent / f"{tmp_path.name}-victim.json"
    victim.write_text("precious")
    (tmp_path / "latest.json").unlink()
    (tmp_path / "latest.json").symlink_to(victim)
    with pytest.raises(DlcError) as e:
        _save(tmp_path, 2)
    assert e.value.code == "E0002" and "symbolic link" in e.value.message
    assert victim.read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "ckpt-00000002.npz").exists()  # checked before the first byte was written


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _save(tmp_path, 1)
        files.write_atomic(tmp_path / "x.bin", b"1")
    finally:
        os.umask(old)
    for name in ("ckpt-00000001.npz", "ckpt-00000001.json", "latest.json", "x.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


# -- kills at every file operation of a save --------------------------------------------
class Killed(BaseException):
    """A simulated SIGKILL: no handler of the process runs after it."""


class Killer:
    """Counts the mutating file operations; at operation ``at`` the process "dies":
    that and every later operation raise :class:`Killed` without effect (a close
    still releases the descriptor, as the kernel would)."""

    OPS = ("open", "write", "fsync", "close", "replace", "unlink")

    def __init__(self, monkeypatch, at: int | None):
        self.at, self.n, self.dead, self.log = at, 0, False, []
        self.real = {op: getattr(os, op) for op in self.OPS}
        for op in self.OPS:
            monkeypatch.setattr(os, op, self._wrap(op))

    def _wrap(self, op):
        real = self.real[op]

        def call(*args, **kwargs):
            if op == "open" and not (args[1] if len(args) > 1 else kwargs.get("flags", 0)) & os.O_CREAT:
                return real(*args, **kwargs)  # reading a folder to fsync it changes nothing
            self.n += 1
            self.log.append(op)
            if self.dead or self.n == self.at:
                self.dead = True
                if op == "close":
                    real(*args, **kwargs)
                raise Killed(op)
            return real(*args, **kwargs)

        return call

    def revive(self, monkeypatch):
        for op in self.OPS:
            monkeypatch.setattr(os, op, self.real[op])


def _count_ops(tmp_path, monkeypatch, keep=3):
    """The mutating file operations of a save that also prunes (``keep`` checkpoints saved before)."""
    folder = tmp_path / f"count{keep}"
    for step in range(1, keep + 1):
        _save(folder, step, keep=keep)
    k = Killer(monkeypatch, None)
    _save(folder, keep + 1, keep=keep)
    k.revive(monkeypatch)
    assert k.log.count("replace") == 3 and k.log.count("unlink") == 2, k.log  # 3 files; prune drops 2
    return k.n


def test_a_kill_at_any_file_operation_of_a_save(tmp_path, monkeypatch):
    n = _count_ops(tmp_path, monkeypatch, keep=1)
    for at in range(1, n + 1):
        folder = tmp_path / f"k{at}"
        _save(folder, 1, keep=1)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        k = Killer(monkeypatch, at)
        with pytest.raises(Killed):
            _save(folder, 2, keep=1)
        k.revive(monkeypatch)
        got = ck.resume_point(folder, expect_spec_hash="abc")  # tidies what the kill left
        assert got.checkpoint.meta["step"] in (1, 2), at
        names = {p.name for p in folder.iterdir()}
        assert not [n_ for n_ in names if n_.endswith(".tmp")], (at, names)
        live = {json.loads((folder / m).read_text())["npz"] for m in names if m.startswith("ckpt-") and
                m.endswith(".json")}
        assert {n_ for n_ in names if n_.endswith(".npz")} == live, (at, names)  # no orphan arrays
        for name, data in before.items():  # a file is replaced whole or not at all, never changed in place
            if name in names and name != "latest.json":
                assert (folder / name).read_bytes() == data, (at, name)
        _save(folder, 3, keep=1)
        assert ck.load(folder).meta["step"] == 3


@pytest.mark.slow
def test_training_resumes_bit_identically_after_a_kill_at_any_file_operation(tmp_path, monkeypatch):
    spec = regression(tmp_path, opt="adam(lr = 0.01)", epochs=5)
    whole = dlc.load(spec, mode="train")
    whole.train(**QUIET)
    n = _count_ops(tmp_path, monkeypatch)
    for at in range(1, n + 1):
        folder = tmp_path / f"run{at}"
        m = dlc.load(spec, mode="train")
        m.train(epochs=3, checkpoint=folder, **QUIET)
        k = Killer(monkeypatch, at)
        with pytest.raises(Killed):
            dlc.load(spec, mode="train").train(checkpoint=folder, resume=True, epochs=4, **QUIET)
        k.revive(monkeypatch)
        resumed = dlc.load(spec, mode="train")
        resumed.train(checkpoint=folder, resume=True, **QUIET)
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        for name in whole.params:
            assert np.array_equal(whole.params[name], resumed.params[name]), (at, name)


# -- lying manifests ------------------------------------------------------------------
def _edit(path, fix_hash=True, **changes):
    m = json.loads(path.read_text())
    for dotted, value in changes.items():
        d, *keys = dotted.split("__")
        target = m
        for key in [d, *keys][:-1]:
            target = target[key]
        target[[d, *keys][-1]] = value
    if fix_hash:
        m["manifest_sha256"] = ck.schema.self_hash(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("field,value", [
    ("meta__epoch", "abc"), ("meta__epoch", -5), ("meta__early_stop", []), ("meta__step", -1),
    ("meta__history", "oops"), ("meta__early_stop__bad", "x"), ("seq", 1.5), ("bytes", -1),
    ("npz", "../elsewhere.npz"), ("sha256", "zz"), ("params__w__shape", [-1]), ("params__w__dtype", "f128"),
    ("version", 99), ("meta__history", [{"loss": "low"}]), ("meta__optimizers", {"main": 3}),
])
def test_every_manifest_lie_is_named(tmp_path, field, value):
    path = _save(tmp_path, 2, )
    ck.save(tmp_path, params={"w": np.ones(3, np.float32)}, state={},
            meta=_meta(2, history=[{"epoch": 1, "loss": 0.5}], early_stop={"best": None, "best_epoch": None,
                                                                          "bad": 0, "stopped": False},
                       optimizers={"main": "adam"}))
    _edit(path, **{field: value})
    with pytest.raises(DlcError) as e:
        ck.load(path)
    assert e.value.code == "E0403"
    assert f"`{field.replace('__', '.')}" in e.value.message, e.value.message


def test_a_hand_edit_without_the_hash_is_caught(tmp_path):
    path = _save(tmp_path, 2)
    _edit(path, fix_hash=False, meta__epoch=1)  # in range, but not what dlc wrote
    with pytest.raises(DlcError) as e:
        ck.load(path)
    assert e.value.code == "E0403" and "`manifest_sha256`" in e.value.message


def test_a_manifest_pointed_at_an_older_npz_is_caught(tmp_path):
    _save(tmp_path, 1)
    path = _save(tmp_path, 2)
    old = json.loads((tmp_path / "ckpt-00000001.json").read_text())
    _edit(path, npz=old["npz"], sha256=old["sha256"], bytes=old["bytes"])  # every hash fixed
    with pytest.raises(DlcError) as e:
        ck.load(path)
    assert e.value.code == "E0403" and "`seq`" in e.value.message and "ckpt-00000001.npz" in e.value.message


# -- resuming -----------------------------------------------------------------------
def _trained_and_checkpointed(tmp_path):
    """A 4-epoch spec, a model trained on it whole, and a folder of checkpoints of its first 3 epochs."""
    spec = regression(tmp_path, epochs=4)
    whole = dlc.load(spec, mode="train")
    whole.train(**QUIET)
    folder = tmp_path / "ck"
    dlc.load(spec, mode="train").train(checkpoint=folder, epochs=3, **QUIET)
    return spec, whole, folder


def test_resume_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    spec, whole, folder = _trained_and_checkpointed(tmp_path)
    newest = ck.latest(folder)
    npz = folder / json.loads(newest.read_text())["npz"]
    npz.write_bytes(npz.read_bytes()[:50])
    said = []
    m = dlc.load(spec, mode="train")
    m.train(checkpoint=folder, resume=True, progress=False, echo=said.append)
    assert any("not usable" in s and "falling back" in s for s in said), said
    assert any("resumed from" in s and "epoch 2" in s for s in said), said
    for k in whole.params:
        assert np.array_equal(whole.params[k], m.params[k]), k


def test_resume_from_a_manifest_path_continues_there(tmp_path):
    """The E0403 hint's own advice: `--checkpoint D/ckpt-N.json --resume` continues from that epoch."""
    spec, whole, folder = _trained_and_checkpointed(tmp_path)
    second = sorted(folder.glob("ckpt-*.json"))[1]
    said = []
    m = dlc.load(spec, mode="train")
    h = m.train(checkpoint=second, resume=True, progress=False, echo=said.append)
    assert any("resumed from" in s and "epoch 2" in s for s in said), said
    assert [r["epoch"] for r in h.epochs] == [1, 2, 3, 4]
    assert ck.load(folder).meta["epoch"] == 4
    for k in whole.params:
        assert np.array_equal(whole.params[k], m.params[k]), k


def test_resume_of_an_empty_folder_says_so(tmp_path):
    said = []
    dlc.load(regression(tmp_path, epochs=1), mode="train").train(checkpoint=tmp_path / "new", resume=True,
                                                                 progress=False, echo=said.append)
    assert any("no checkpoint" in s and "from the start" in s for s in said), said


# -- dlc run --out, dlc compile -o -----------------------------------------------------
def _cli(*args, code=0):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def test_run_out_refuses_a_foreign_file_and_links(tmp_path):
    out = tmp_path / "results.npz"
    out.write_bytes(b"user data")
    r = _cli("run", "specs/xor.dl", "--out", str(out), code=2)
    assert "E0002" in r.output and "refusing to overwrite" in r.output
    assert out.read_bytes() == b"user data"
    _cli("run", "specs/xor.dl", "--out", str(out), "--force")
    assert set(np.load(out).files)
    _cli("run", "specs/xor.dl", "--out", str(out))  # its own file: replaced without --force
    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "target.npz")
    r = _cli("run", "specs/xor.dl", "--out", str(link), "--force", code=2)
    assert "symbolic link" in r.output and not (tmp_path / "target.npz").exists()


def test_compile_targets_that_cannot_be_written(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    cases = {tmp_path / "adir": "is a directory", tmp_path / "afile" / "m.onnx": "is a file, not a folder",
             tmp_path / "fifo": "not a regular file", tmp_path / "missing" / "m.onnx": "does not exist"}
    for target, words in cases.items():
        r = _cli("compile", "specs/xor.dl", "--onnx", "-o", str(target), "--force", code=2)
        assert "E0002" in r.output and words in r.output, r.output
    assert not (tmp_path / "missing").exists()
    old = os.umask(0o022)
    try:
        _cli("compile", "specs/xor.dl", "--onnx", "-o", str(tmp_path / "m.onnx"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_train_log_refuses_a_foreign_file(tmp_path):
    log = tmp_path / "notes.csv"
    log.write_text("my own notes\n")
    with pytest.raises(DlcError) as e:
        dlc.load(regression(tmp_path, epochs=1), mode="train").train(log=log, **QUIET)
    assert e.value.code == "E0002" and "refusing to overwrite" in e.value.message
    assert log.read_text() == "my own notes\n"
    ok = tmp_path / "run.csv"
    dlc.load(regression(tmp_path, epochs=1), mode="train").train(log=ok, **QUIET)
    dlc.load(regression(tmp_path, epochs=1), mode="train").train(log=ok, **QUIET)  # its own log: rewritten
    assert ok.read_text().startswith("epoch,")


def test_export_weights_refuses_a_foreign_file(tmp_path):
    pytest.importorskip("safetensors")
    spec = regression(tmp_path, epochs=1)
    dlc.load(spec, mode="train").train(checkpoint=tmp_path / "ck", **QUIET)
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"not mine to overwrite")
    r = _cli("export-weights", str(tmp_path / "ck"), "-o", str(target), code=2)
    assert "refusing to overwrite" in r.output and target.read_bytes() == b"not mine to overwrite"
    target.unlink()
    _cli("export-weights", str(tmp_path / "ck"), "-o", str(target))
    _cli("export-weights", str(tmp_path / "ck"), "-o", str(target))  # its own export: replaced


def test_export_weights_targets_that_cannot_be_written(tmp_path):
    """The same E0002 as `dlc compile -o`: no folder is created, a file in the way is no traceback."""
    pytest.importorskip("safetensors")
    dlc.load(regression(tmp_path, epochs=1), mode="train").train(checkpoint=tmp_path / "ck", **QUIET)
    (tmp_path / "adir.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = {tmp_path / "adir.safetensors": "is a directory",
             tmp_path / "afile" / "w.safetensors": "is a file, not a folder",
             tmp_path / "missing" / "w.safetensors": "does not exist"}
    for target, words in cases.items():
        r = _cli("export-weights", str(tmp_path / "ck"), "-o", str(target), code=2)
        assert "E0002" in r.output and words in r.output, r.output
    assert not (tmp_path / "missing").exists()
    assert (tmp_path / "afile").read_text() == "x"


def test_graph_o_never_overwrites_a_file_without_force(tmp_path):
    """`dlc graph spec.dl -o spec.dl` replaced the user's spec with the graph text, and a missing
    folder was a FileNotFoundError traceback."""
    spec = tmp_path / "mine.dl"
    spec.write_text("# my own spec\n")
    before = spec.read_text()
    r = _cli("graph", "specs/xor.dl", "-o", str(spec), code=2)
    assert "E0002" in r.output and "refusing to overwrite" in r.output and spec.read_text() == before
    r = _cli("graph", "specs/xor.dl", "-o", str(tmp_path / "missing" / "g.txt"), code=2)
    assert "E0002" in r.output and "does not exist" in r.output and not (tmp_path / "missing").exists()
    out = tmp_path / "g.dot"
    _cli("graph", "specs/xor.dl", "--format", "dot", "-o", str(out))
    assert out.read_text().startswith("digraph")
    _cli("graph", "specs/xor.dl", "-o", str(out), code=2)
    _cli("graph", "specs/xor.dl", "-o", str(out), "--force")
    assert out.read_text().startswith("%0 = input x")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name", ["ckpt", "w.safetensors"])
def test_a_fifo_as_a_checkpoint_is_refused_not_read_forever(tmp_path, name):
    """`dlc run --checkpoint FIFO` blocked in read() until killed; it is E0403 at once."""
    import subprocess
    import sys

    fifo = tmp_path / name
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "dlc", "run", "specs/xor.dl", "--checkpoint", str(fifo)],
                       capture_output=True, text=True, timeout=120)  # the timeout kills a blocked child
    assert r.returncode == 2 and "error[E0403]" in r.stderr and "not a regular file" in r.stderr, r.stderr

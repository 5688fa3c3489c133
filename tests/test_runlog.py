"""Run logs (runtime/runlog.py): metrics.csv and metrics.jsonl per epoch, across --resume."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dlc
from dlc.runtime import checkpoint as ckpt
from dlc.runtime import train as train_module

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"progress": False, "echo": lambda s: None}
TIMES = ("time", "wall")  # wall-clock columns differ between any two runs


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(f)]


def mlp():
    return dlc.load(ROOT / "specs/mlp.dl", mode="train")


def test_a_run_logs_one_row_per_epoch_and_the_test_row(tmp_path):
    h = mlp().train(epochs=3, checkpoint=tmp_path, **QUIET)
    table = rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in table] == ["1", "2", "3", "test"]
    assert list(table[0])[:3] == ["epoch", "step", "lr"]
    assert {"loss", "train.accuracy", "val.loss", "val.accuracy", "test.accuracy"} <= set(table[0])
    assert [int(r["step"]) for r in table] == [20, 40, 60, 60]
    assert float(table[-1]["test.accuracy"]) == h.test["accuracy"]  # repr round-trips floats
    assert float(table[1]["val.accuracy"]) == h.epochs[1]["val.accuracy"]
    assert 0 < float(table[2]["lr"]) < 3e-3  # the cosine schedule's rate after 60 updates
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, "test"]
    assert lines[2]["wall"] >= lines[1]["wall"] >= lines[0]["wall"] > 0


class Killed(Exception):
    pass


@pytest.mark.parametrize("log_ahead", [False, True])
def test_a_killed_and_resumed_run_logs_what_an_uninterrupted_one_does(tmp_path, monkeypatch, log_ahead):
    mlp().train(epochs=5, checkpoint=tmp_path / "whole", **QUIET)
    real_save = ckpt.save
    calls = []

    def dying_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if not log_ahead:
                raise Killed  # killed while saving epoch 3: the log has epochs 1-2
            return None  # epoch 3's checkpoint lost, its log row written: the log runs ahead
        if len(calls) == 4:
            raise Killed
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train_module.ckpt, "save", dying_save)
    with pytest.raises(Killed):
        mlp().train(epochs=5, checkpoint=tmp_path / "cut", **QUIET)
    monkeypatch.setattr(train_module.ckpt, "save", real_save)
    assert [r["epoch"] for r in rows(tmp_path / "cut" / "metrics.csv")] == (["1", "2", "3"] if log_ahead
                                                                            else ["1", "2"])
    mlp().train(epochs=5, checkpoint=tmp_path / "cut", resume=True, **QUIET)
    assert rows(tmp_path / "cut" / "metrics.csv") == rows(tmp_path / "whole" / "metrics.csv")
    jl = [json.loads(x)["epoch"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert jl == [1, 2, 3, 4, 5, "test"]


def test_log_file_without_checkpoints(tmp_path):
    mlp().train(epochs=2, log=tmp_path / "run.jsonl", **QUIET)
    mlp().train(epochs=2, log=tmp_path / "run.csv", **QUIET)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run.jsonl").read_text().splitlines()] == [1, 2, "test"]
    assert [r["epoch"] for r in rows(tmp_path / "run.csv")] == ["1", "2", "test"]
    assert not list(tmp_path.glob("ckpt-*"))


def _train_cli(tmp_path, *args) -> subprocess.CompletedProcess:
    with (tmp_path / "log").open("w") as err:
        r = subprocess.run([sys.executable, "-m", "dlc", "train", "specs/mlp.dl", *args], cwd=ROOT, stderr=err,
                           stdout=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0
    return r


def test_no_progress_frames_when_stderr_is_a_file(tmp_path):
    r = _train_cli(tmp_path, "--epochs", "3", "--log", tmp_path / "m.csv")
    assert (tmp_path / "log").stat().st_size < 5_000
    assert [row["epoch"] for row in rows(tmp_path / "m.csv")] == ["1", "2", "3", "test"]
    assert "\r" not in (tmp_path / "log").read_text()
    assert "train.accuracy" in r.stdout and "val.accuracy" in r.stdout  # train metrics beside validation ones


@pytest.mark.slow
def test_a_whole_run_leaves_a_small_log(tmp_path):
    _train_cli(tmp_path)
    assert (tmp_path / "log").stat().st_size < 5_000


@pytest.mark.slow
def test_a_run_killed_for_real_resumes_to_the_same_log(tmp_path):
    """SIGKILL a `dlc train` process after its first logged epoch, resume it, and compare
    with an uninterrupted run (wherever in epoch 2 the kill lands)."""
    import signal
    import time

    args = [sys.executable, "-m", "dlc", "train", "specs/cnn.dl", "--epochs", "3", "--checkpoint"]
    subprocess.run([*args, str(tmp_path / "whole")], cwd=ROOT, capture_output=True, timeout=300, check=True)
    proc = subprocess.Popen([*args, str(tmp_path / "cut")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    subprocess.run([*args, str(tmp_path / "cut"), "--resume"], cwd=ROOT, capture_output=True, timeout=300,
                   check=True)
    assert rows(tmp_path / "cut" / "metrics.csv") == rows(tmp_path / "whole" / "metrics.csv")

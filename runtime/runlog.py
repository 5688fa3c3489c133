"""Run logs: one row per epoch in ``metrics.csv`` and ``metrics.jsonl``.

A training run with a checkpoint folder writes both files there; ``--log
FILE`` writes one more (JSON lines when FILE ends in ``.jsonl``, CSV
otherwise).  A row holds ``epoch``, ``step`` (updates so far), ``time``
(seconds of this epoch), ``wall`` (training seconds since the run began,
summed across resumes), ``lr`` (the rate of the epoch's last update;
``lr.<group>`` for further step groups), the training loss(es), ``train.<metric>``
(training metrics, averaged per example over the epoch) and ``val.<metric>``;
the last row has ``epoch = "test"`` and ``test.<metric>``.

A resumed run keeps the rows up to the epoch it resumes from and drops the
rest (rows of epochs after the checkpoint, and an earlier test row), so a
killed and resumed run leaves the same rows as one never interrupted.
Files are rewritten atomically per row: a kill never leaves half a line.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .files import refuse_foreign, write_atomic

CSV_NAME = "metrics.csv"
JSONL_NAME = "metrics.jsonl"
_FIRST = ("epoch", "step", "time", "wall", "lr")


class EpochMeter:
    """Per-example averages over one epoch of the first step group's metrics, and each
    group's last learning rate."""

    def __init__(self, groups: list[str]):
        self.groups = groups
        self.sums: dict[str, float] = {}
        self.count = 0
        self.lr: dict[int, float] = {}

    def add(self, group: int, out: dict, n: int) -> None:
        if "train/lr" in out:
            self.lr[group] = float(out["train/lr"])
        if group:
            return
        self.count += n
        for k, v in out.items():
            kind, _, name = k.partition("/")
            if kind == "metric" and name != "loss" and not name.startswith("loss."):
                self.sums[f"train.{name}"] = self.sums.get(f"train.{name}", 0.0) + float(v) * n

    def row(self) -> dict:
        """``lr``/``lr.<group>`` and ``train.<metric>``; resets the sums for the next epoch."""
        out = {("lr" if gi == 0 else f"lr.{self.groups[gi]}"): lr for gi, lr in sorted(self.lr.items())}
        out.update({k: v / max(self.count, 1) for k, v in self.sums.items()})
        self.sums, self.count = {}, 0
        return out


class RunLog:
    """The metric files of one run (none when neither a folder nor a file is given)."""

    def __init__(self, folder: Path | None = None, file: Path | None = None, *, resume_epoch: int | None = None):
        self.targets: list[tuple[Path, str]] = []
        if folder is not None:
            self.targets += [(Path(folder) / CSV_NAME, "csv"), (Path(folder) / JSONL_NAME, "jsonl")]
        if file is not None:
            file = Path(file)
            refuse_foreign(file, _is_run_log, force=False, flag="another --log path")  # before the first epoch
            self.targets.append((file, "jsonl" if file.suffix == ".jsonl" else "csv"))
        self.rows: list[dict] = []
        self.columns: list[str] | None = None
        if resume_epoch is not None and self.targets:
            self.rows = [r for r in _read_jsonl_or_csv(self.targets)
                         if isinstance(r.get("epoch"), int) and r["epoch"] <= resume_epoch]
        self.wall = float(self.rows[-1].get("wall", 0.0)) if self.rows else 0.0

    def epoch(self, row: dict, step: int) -> None:
        """Record one epoch's row (the loop's ``row``: epoch, loss(es), lr, train.* and val.*)."""
        self.wall += float(row.get("time", 0.0))
        self._add({"epoch": row["epoch"], "step": step, "time": row.get("time"), "wall": self.wall,
                   **{k: v for k, v in row.items() if k not in ("epoch", "time")}})

    def test(self, metrics: dict, step: int) -> None:
        self._add({"epoch": "test", "step": step, **{f"test.{k}": v for k, v in metrics.items()}})

    def _add(self, row: dict) -> None:
        if not self.targets:
            return
        self.rows.append(row)
        for path, kind in self.targets:
            text = _jsonl(self.rows) if kind == "jsonl" else _csv(self.rows)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode())


def _is_run_log(path: Path) -> bool:
    """A file dlc's run log wrote (its first line is the CSV header or a JSON row, epoch first)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("epoch,") or first.startswith('{"epoch":') or first == ""


def _columns(rows: list[dict]) -> list[str]:
    """Fixed columns first, then every other key in order of first appearance."""
    seen = [c for c in _FIRST if any(c in r for r in rows)]
    for r in rows:
        seen += [k for k in r if k not in seen]
    return seen


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def _cell(v):
    return repr(v) if isinstance(v, float) else v  # repr: the shortest text that reads back the same float


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in r.items()}) + "\n" for r in rows)


def _read_jsonl_or_csv(targets: list[tuple[Path, str]]) -> list[dict]:
    """The rows already logged: from a JSON-lines target when there is one (typed), else a CSV one."""
    for path, kind in sorted(targets, key=lambda t: t[1] != "jsonl"):
        if not path.is_file():
            continue
        if kind == "jsonl":
            rows = []
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line (written by something else than dlc): keep what precedes it
            return rows
        with path.open(newline="") as f:
            return [{k: _parse(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return []


def _parse(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text

"""The train block reads the model's hyperparameters and consts (compiler/training/spec.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dlc
from dlc.cli import main
from dlc.grammar.errors import DlcError
from dlc.model import init_params
from dlc.runtime.checkpoint import load as load_ckpt

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"progress": False, "echo": lambda s: None}
SPEC = """
const EPOCHS = 2
model m(lr: float = 0.1, batch: int = 16, momentum: float = 0.5, nesterov: bool = true) {
    input x: f32[B, 64]
    input y: i64[B]
    param W: [64, 10] = glorot_uniform()
    output loss = cross_entropy(x @ W, y)
}
train m {
    data = digits(); loss = loss; batch = batch; epochs = EPOCHS
    optimizer = momentum(lr = lr * 2, beta = momentum)
    schedule = cosine(total = EPOCHS * 3)
    early_stop = patience(2, restore_best = nesterov)
}
"""


def cli(*args, code: int = 0):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def test_the_train_block_reads_hyperparameters_and_consts():
    spec = dlc.compile(SPEC, lr=0.25, batch=128, nesterov=False).train_spec()
    assert spec.batch == 128 and spec.epochs == 2
    assert spec.steps[0].optimizer.kwargs == {"lr": 0.5, "beta": 0.5}
    assert spec.steps[0].schedule.kwargs["total"] == 6
    assert spec.early_stop.kwargs["restore_best"] is False


@pytest.mark.parametrize("edit, message", [
    (("batch = batch", "batch = lr"), "`batch` must be an integer, got 0.1"),
    (("lr = lr * 2", "lr = nesterov"), "must be a number, got True"),
    (("lr = lr * 2", "lr = rate"), "`rate` is neither a hyperparameter of the model nor a const"),
    (("restore_best = nesterov", "restore_best = lr"), "must be true or false, got 0.1"),
])
def test_values_read_are_type_checked(edit, message):
    with pytest.raises(DlcError) as e:
        dlc.compile(SPEC.replace(*edit)).train_spec()
    assert e.value.code == "E0201" and message in e.value.render()


def test_ranges_apply_to_values_read():
    with pytest.raises(DlcError, match="must be >= 0, got -2.0"):
        dlc.compile(SPEC, lr=-1.0).train_spec()
    with pytest.raises(DlcError, match="must be > 0"):
        dlc.compile(SPEC.replace("momentum(lr = lr * 2, beta = momentum)", "ftrl(lr = lr)"), lr=0.0).train_spec()


def test_set_lr_zero_leaves_the_parameters_unchanged(tmp_path):
    cli("train", ROOT / "specs/mlp.dl", "--set", "lr=0", "--epochs", "2", "--checkpoint", tmp_path / "c")
    m = dlc.load(ROOT / "specs/mlp.dl", lr=0.0)
    start = init_params(m.graph, m.train_spec().seed)
    trained = load_ckpt(tmp_path / "c").params
    for k, v in start.items():
        np.testing.assert_array_equal(trained[k], v, err_msg=k)


def test_set_sweeps_lr_and_batch():
    a = dlc.load(ROOT / "specs/mlp.dl", mode="train", lr=1e-2, batch=128)
    out = a.train(epochs=2, **QUIET)
    assert a.train_spec().batch == 128 and len(out.epochs) == 2
    b = dlc.load(ROOT / "specs/mlp.dl", mode="train", lr=1e-4, batch=128)
    slow = b.train(epochs=2, **QUIET)
    assert out.epochs[-1]["loss"] < slow.epochs[-1]["loss"]


def test_check_takes_set(tmp_path):
    path = tmp_path / "m.dl"
    path.write_text(SPEC)
    assert "trains" in cli("check", path, "--set", "batch=8").output
    r = cli("check", path, "--set", "batch=0", code=2)
    assert "`batch` must be an integer >= 1" in r.stderr
    r = cli("check", path, "--set", "lrr=1", code=2)
    assert "no hyperparameter `lrr`" in r.stderr and "did you mean `lr`" in r.stderr

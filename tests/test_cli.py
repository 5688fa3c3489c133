"""The command line through click's CliRunner: every command on the real specs,
exit codes, deterministic output, files written, and errors without tracebacks."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli_harness import cli as dlc
from dlc.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_check_every_spec():
    specs = sorted(glob.glob("specs/*.dl"))
    out = dlc("check", *specs).stdout
    for s in specs:
        assert f"{s}: ok" in out


def test_graph_text_is_deterministic_and_has_matmul():
    first = dlc("graph", "specs/mlp.dl").stdout
    assert first == dlc("graph", "specs/mlp.dl").stdout
    assert "matmul(" in first and "param h.W : f32[64, 64]" in first
    assert first.rstrip().splitlines()[-1].startswith("outputs:")


def test_graph_dot():
    out = dlc("graph", "specs/mlp.dl", "--format", "dot").stdout
    assert out.startswith("digraph") and out.rstrip().endswith("}")


def test_graph_json():
    data = json.loads(dlc("graph", "specs/mlp.dl", "--format", "json").stdout)
    assert data["nodes"] and any("matmul" in json.dumps(n) for n in data["nodes"])


def test_graph_with_gradients_and_training_step():
    assert "backward of" in dlc("graph", "specs/mlp.dl", "--grad").stdout
    train = dlc("graph", "specs/mlp.dl", "--train").stdout
    assert "adam" in train and "backward of" in train


def test_summary_has_a_total_and_symbolic_lengths():
    out = dlc("summary", "specs/lstm.dl").stdout
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert len(total) == 1 and "4,546" in total[0] and "T" in total[0]
    assert "f32[B, T, 32]" in out


def test_run_with_bound_dims_writes_outputs(tmp_path):
    out = tmp_path / "tmp.npz"
    text = dlc("run", "specs/lstm.dl", "--bind", "B=2", "--bind", "T=5", "--out", out).stdout
    assert "probs: float32[2, 2]" in text and f"saved 2 output(s) to {out}" in text
    with np.load(out) as saved:
        assert set(saved.files) == {"probs", "loss"}
        assert saved["probs"].shape == (2, 2) and saved["loss"].shape == ()
        np.testing.assert_allclose(saved["probs"].sum(-1), 1.0, rtol=1e-5)


def test_run_with_an_input_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    out = tmp_path / "y.npz"
    dlc("run", "specs/mlp.dl", "--input", f"x={path}", "--out", out)
    with np.load(out) as saved:
        assert saved["probs"].shape == (3, 10)  # B comes from the file


def test_run_with_an_unknown_input_is_an_error(tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.zeros((2, 64), np.float32))
    result = dlc("run", "specs/mlp.dl", "--input", f"z={path}", code=64)
    assert "no input `z`" in result.stderr


def test_compile_onnx(tmp_path):
    import onnx

    target = tmp_path / "m.onnx"
    assert "wrote" in dlc("compile", "specs/mlp.dl", "--onnx", "-o", target).stdout
    onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    first = target.read_bytes()
    dlc("compile", "specs/mlp.dl", "--onnx", "-o", target)  # dlc's own file: replaced without --force
    assert target.read_bytes() == first


def test_compile_refuses_to_overwrite_a_foreign_file(tmp_path):
    target = tmp_path / "notes.onnx"
    target.write_text("my notes")
    result = dlc("compile", "specs/mlp.dl", "--onnx", "-o", target, code=2)
    assert "E0501" in result.stderr and "--force" in result.stderr
    assert target.read_text() == "my notes"
    dlc("compile", "specs/mlp.dl", "--onnx", "-o", target, "--force")
    assert target.read_bytes()[:8] != b"my notes"


def test_gradcheck():
    out = dlc("gradcheck", "specs/xor.dl").stdout
    assert "all 4 parameters within" in out


def test_missing_file():
    result = dlc("check", "specs/nope.dl", code=2)
    assert "error[E0002]: no such file: specs/nope.dl" in result.stderr
    result = dlc("graph", "specs/nope.dl", code=2)
    assert "E0002" in result.stderr


def test_bad_bind_and_set_are_user_errors():
    assert "not an integer" in dlc("run", "specs/mlp.dl", "--bind", "B=two", code=64).stderr
    assert "E0102" in dlc("summary", "specs/mlp.dl", "--set", "hiden=3", code=2).stderr
    assert "did you mean `hidden`?" in dlc("summary", "specs/mlp.dl", "--set", "hiden=3", code=2).stderr


def test_model_option_picks_a_model():
    out = dlc("summary", "specs/xor.dl", "--model", "perceptron").stdout
    assert "perceptron" in out
    assert "did you mean `perceptron`?" in dlc("summary", "specs/xor.dl", "--model", "perceptro", code=2).stderr


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path):
    spec = tmp_path / "bom.dl"
    spec.write_bytes("\ufeffmodel m() {\n    input x: f32[B, 4]\n    output y = relu(x)\n}\n".encode("utf-8"))
    assert "ok: m" in dlc("check", spec).stdout


def test_compile_train_exports_a_chosen_step_group(tmp_path):
    import onnx

    out = tmp_path / "g.onnx"
    res = CliRunner().invoke(main, ["compile", "specs/gan.dl", "--onnx", "--train", "--group", "generator",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert "new/G.W" in names and "new/D_W1" not in names
    res = CliRunner().invoke(main, ["compile", "specs/gan.dl", "--onnx", "--train", "--group", "gen",
                                    "-o", str(out)])
    assert res.exit_code == 2 and "no step group `gen`" in res.output


def test_group_needs_train():
    res = CliRunner().invoke(main, ["compile", "specs/gan.dl", "--onnx", "--group", "generator", "-o", "/tmp/x.onnx"])
    assert res.exit_code == 64 and "use it with --train" in res.output


def test_usage_errors_exit_64_spec_errors_2():
    """A wrong command line is not a wrong spec: scripts can tell them apart."""
    assert "No such option" in dlc("check", "--nope", "specs/mlp.dl", code=64).stderr
    assert "No such command" in dlc("chek", "specs/mlp.dl", code=64).stderr
    dlc("run", "specs/mlp.dl", "--backend", "tpu", code=64)
    dlc("check", "tests/bad/unknown_name.dl", code=2)


def test_bind_names_a_dim_of_the_model():
    """`--bind` of a dim the model does not have is an error, never silently another dim."""
    err = dlc("run", "specs/lstm.dl", "--bind", "Q=3", code=64).stderr
    assert "no dim `Q`" in err and "B, T" in err
    err = dlc("run", "specs/lstm.dl", "--bind", "b=3", code=64).stderr
    assert "did you mean `B`?" in err
    out = dlc("run", "specs/lstm.dl", "--bind", "B=3", "--bind", "T=4").stdout
    assert "[3" in out


def test_errors_are_coloured_on_request_and_plain_otherwise(monkeypatch):
    plain = dlc("check", "tests/bad/unknown_name.dl", code=2).stderr
    assert "\x1b[" not in plain
    coloured = dlc("--color", "always", "check", "tests/bad/unknown_name.dl", code=2).stderr
    assert "\x1b[1;31merror[E0101]\x1b[0m" in coloured
    import re

    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    from dlc.cli import use_color

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


@pytest.mark.parametrize("args", [["train", "specs/xor.dl", "--seed", "-1"], ["train", "specs/xor.dl", "--epochs", "-1"],
                                  ["run", "specs/xor.dl", "--seed", "-1"], ["gradcheck", "specs/xor.dl", "--seed", "-1"]])
def test_a_negative_seed_or_epoch_count_is_a_usage_error(args):
    """Both are integers >= 0 in the train block; on the command line -1 was NumPy's traceback
    (seeds) or a silent run of no epochs."""
    r = dlc(*args, code=64)
    assert f"Invalid value for '{args[2]}': -1 is not in the range x>=0" in r.stderr
    assert "epoch" not in r.stdout


@pytest.mark.parametrize("args, what", [
    (["run", "specs/xor.dl", "--bind", "N=2", "--bind", "N=3"], "--bind `N`"),
    (["train", "specs/mlp.dl", "--set", "lr=1", "--set", "lr=0.1", "--epochs", "1"], "--set `lr`"),
    (["check", "specs/mlp.dl", "--set", "hidden=3", "--set", "hidden=3"], "--set `hidden`")])
def test_one_name_given_two_values_is_a_usage_error(args, what):
    """Contradictory options: which value was meant is a guess (the last one silently won)."""
    r = dlc(*args, code=64)
    assert f"error[E0110]: {what} is given twice" in r.stderr and "epoch" not in r.stdout


def test_one_input_given_two_files_is_a_usage_error(tmp_path):
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.zeros((2, 2), np.float32))
    r = dlc("run", "specs/xor.dl", "--input", f"x={tmp_path / 'a.npy'}", "--input", f"x={tmp_path / 'b.npy'}", code=64)
    assert "--input `x` is given twice" in r.stderr

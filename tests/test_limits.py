"""Every reproducer of the hardening issue: a coded error with exit status 2 and no
traceback (or the correct result), through the real command line.

The fast tier runs the table in-process with ``--max-memory 256M``; the slow tier
runs each case as its own ``dlc`` process under a 512 MB address-space limit
(``RLIMIT_AS``) with the default budget, which must notice the limit by itself.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main

REPO = Path(__file__).resolve().parent.parent
LIMIT = 512 * 2**20

TRAIN_BLOCK = """
train m {{ data = "{data}"; inputs = map(x = x, y = y); loss = loss; optimizer = sgd(lr = 0.1); batch = 4
          epochs = 2 }}
"""
MODEL = """model m() {
    input x: f32[N, 3]
    input y: f32[N, 1]
    param W: [3, 1] = zeros()
    output loss = mse(x @ W, y)
}
"""


def reg(data: str) -> str:
    return MODEL + TRAIN_BLOCK.format(data=data)


def _npy_header_only(path: Path, shape) -> None:
    """An .npy whose header declares ``shape`` (float64) but holds no data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})


def _setup(case: str, d: Path) -> list[str]:
    """Write the files of ``case`` into ``d``; returns the dlc arguments."""
    spec = d / "m.dl"

    def write(text):
        spec.write_text(text)
        return str(spec)

    if case == "huge spec file":
        with open(spec, "wb") as f:
            f.truncate(700 * 2**20)  # sparse: 700 MB by stat, nothing on disk
        return ["check", str(spec)]
    if case == "zeros 2^15 x 2^15":
        return ["run", write("model m() { input x: f32[4]\n output y = sum(zeros([2 ** 15, 2 ** 15])) }")]
    if case == "param 16384^2":
        return ["run", write("model m() { input x: f32[2, 16384]\n param W: [16384, 16384] = normal()\n"
                             " output y = sum(x @ W) }")]
    if case == "bind B=500000":
        return ["run", write("model m() { input x: f32[B, 1000]\n output y = sum(x) }"), "--bind", "B=500000"]
    if case == "x @ x^T, B=60000":
        return ["run", write("model m() { input x: f32[B, 4]\n output y = sum(x @ transpose(x)) }"),
                "--bind", "B=60000"]
    if case == "npy header 2^20 x 2^20":
        _npy_header_only(d / "x.npy", (2**20, 2**20))
        return ["run", write("model m() { input x: f64[A, B]\n output y = sum(x) }"), "--input", f"x={d / 'x.npy'}"]
    if case == "npz data header 2^20 x 2^20":
        import zipfile

        with zipfile.ZipFile(d / "x.npz", "w") as z:
            with z.open("x.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                         "shape": (2**20, 2**20)})
        return ["train", write(reg("x.npz")), "--no-progress"]
    if case == "nested repeat 1000 x 1000":
        return ["check", write("layer blk(x: f32[B, 4]) { return tanh(x) }\n"
                               "layer outer(x: f32[B, 4]) { return repeat 1000 blk(x) }\n"
                               "model m() { input x: f32[B, 4]\n output y = sum(repeat 1000 outer(x)) }")]
    if case == "10^6 nested parentheses":
        return ["check", write("model m() { input x: f32[4]\n output y = " + "(" * 10**6 + "x" + ")" * 10**6 + " }")]
    if case == "10^5 nested parentheses":
        return ["check", write("model m() { input x: f32[4]\n output y = " + "(" * 10**5 + "x" + ")" * 10**5 + " }")]
    if case == "normal(1e300)":
        return ["run", write("model m() { input x: f32[2, 4]\n param W: [4, 4] = normal(1e300)\n"
                             " output y = x @ W }")]
    if case == "nll on a scalar":
        return ["check", write("model m() { input x: f32[4]\n input c: i64[]\n output l = nll(sum(x), c) }")]
    if case == "unary minus on bool":
        return ["check", write("model m() { input x: f32[4]\n output y = -(x > 0.0) }")]
    if case == "GRU 10001 units orthogonal":
        return ["run", write("model m() { input x: f32[2, 10001]\n param U: [10001, 30003] = orthogonal()\n"
                             " output y = sum(x @ U) }")]
    if case == "NaN in --input":
        np.save(d / "x.npy", np.array([[1.0, np.nan, 2.0]], np.float32))
        return ["run", write("model m() { input x: f32[B, 3]\n output y = sum(x) }"), "--input", f"x={d / 'x.npy'}"]
    if case == "NaN in the data":
        x = np.ones((8, 3), np.float32)
        x[5, 2] = np.inf
        np.savez(d / "d.npz", x=x, y=np.ones((8, 1), np.float32))
        return ["train", write(reg("d.npz")), "--no-progress"]
    if case == "user's latest.json":
        (d / "ck").mkdir()
        (d / "ck" / "latest.json").write_text('{"mine": true}')
        np.savez(d / "d.npz", x=np.ones((8, 3), np.float32), y=np.ones((8, 1), np.float32))
        return ["train", write(reg("d.npz")), "--checkpoint", str(d / "ck"), "--no-progress"]
    if case == "user's ckpt-00000001.npz":
        (d / "ck").mkdir()
        (d / "ck" / "ckpt-00000001.npz").write_text("mine")
        np.savez(d / "d.npz", x=np.ones((8, 3), np.float32), y=np.ones((8, 1), np.float32))
        return ["train", write(reg("d.npz")), "--checkpoint", str(d / "ck"), "--no-progress"]
    if case == "run --out onto a user's file":
        (d / "results.npz").write_text("mine")
        return ["run", str(REPO / "specs/xor.dl"), "--out", str(d / "results.npz")]
    if case == "run --out through a symlink":
        (d / "results.npz").symlink_to(d / "elsewhere.npz")
        return ["run", str(REPO / "specs/xor.dl"), "--out", str(d / "results.npz"), "--force"]
    if case == "compile --force onto a directory":
        (d / "out.onnx").mkdir()
        return ["compile", str(REPO / "specs/xor.dl"), "--onnx", "-o", str(d / "out.onnx"), "--force"]
    if case == "compile -o under a regular file":
        (d / "f").write_text("x")
        return ["compile", str(REPO / "specs/xor.dl"), "--onnx", "-o", str(d / "f" / "m.onnx")]
    if case == "compile -o onto a FIFO":
        os.mkfifo(d / "fifo")
        return ["compile", str(REPO / "specs/xor.dl"), "--onnx", "-o", str(d / "fifo"), "--force"]
    if case.startswith("manifest "):
        field, value = {"manifest epoch abc": ("epoch", "abc"), "manifest epoch -5": ("epoch", -5),
                        "manifest early_stop []": ("early_stop", []), "manifest step -1": ("step", -1),
                        "manifest history oops": ("history", "oops")}[case]
        np.savez(d / "d.npz", x=np.ones((8, 3), np.float32), y=np.ones((8, 1), np.float32))
        write(reg("d.npz"))
        assert CliRunner().invoke(main, ["train", str(spec), "--checkpoint", str(d / "ck"), "--epochs", "1",
                                         "--no-progress"]).exit_code == 0
        manifest = next((d / "ck").glob("ckpt-*.json"))
        m = json.loads(manifest.read_text())
        m["meta"][field] = value
        from dlc.runtime.ckpt_schema import self_hash

        m["manifest_sha256"] = self_hash(m)  # even with its own hash fixed, the lie is found
        manifest.write_text(json.dumps(m))
        return ["train", str(spec), "--checkpoint", str(d / "ck"), "--resume", "--no-progress"]
    raise AssertionError(case)


# case -> (exit status, words the output must hold)
CASES = {
    "huge spec file": (2, "E0003"),
    "zeros 2^15 x 2^15": (2, "E0003"),
    "param 16384^2": (2, "E0003"),
    "bind B=500000": (2, "E0003"),
    "x @ x^T, B=60000": (2, "E0003"),
    "npy header 2^20 x 2^20": (2, "E0003"),
    "npz data header 2^20 x 2^20": (2, "E0003"),
    "nested repeat 1000 x 1000": (2, "E0003"),
    "10^6 nested parentheses": (2, "E0003"),
    "10^5 nested parentheses": (2, "nest more than"),
    "normal(1e300)": (2, "E0110"),
    "nll on a scalar": (2, "E0104"),
    "unary minus on bool": (2, "E0104"),
    "GRU 10001 units orthogonal": (2, "E0003"),
    "NaN in --input": (2, "E0402"),
    "NaN in the data": (2, "E0402"),
    "user's latest.json": (2, "E0403"),
    "user's ckpt-00000001.npz": (2, "E0403"),
    "run --out onto a user's file": (2, "E0002"),
    "run --out through a symlink": (2, "symbolic link"),
    "compile --force onto a directory": (2, "is a directory"),
    "compile -o under a regular file": (2, "not a folder"),
    "compile -o onto a FIFO": (2, "not a regular file"),
    "manifest epoch abc": (2, "`meta.epoch`"),
    "manifest epoch -5": (2, "`meta.epoch`"),
    "manifest early_stop []": (2, "`meta.early_stop`"),
    "manifest step -1": (2, "`meta.step`"),
    "manifest history oops": (2, "`meta.history`"),
}
EXTRA = {  # what else each case must say
    "NaN in --input": ["input `x`", "index [0, 1]"],
    "NaN in the data": ["`x`", "index [5, 2]"],
    "param 16384^2": ["`W`", "f32[16384, 16384]", "memory budget"],
    "x @ x^T, B=60000": ["13.4 GiB", "B=60000"],
    "npy header 2^20 x 2^20": ["[1048576, 1048576]"],
}


def _check(case: str, d: Path, code: int, out: str) -> None:
    status, words = CASES[case]
    assert code == status, (case, code, out)
    assert "Traceback" not in out, (case, out)
    for w in [words, *EXTRA.get(case, [])]:
        assert w in out, (case, w, out)
    if case == "user's latest.json":
        assert (d / "ck" / "latest.json").read_text() == '{"mine": true}'
    if case == "user's ckpt-00000001.npz":
        assert (d / "ck" / "ckpt-00000001.npz").read_text() == "mine"
    if case == "run --out onto a user's file":
        assert (d / "results.npz").read_text() == "mine"
    if case == "run --out through a symlink":
        assert not (d / "elsewhere.npz").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_reproducer_in_process(case, tmp_path, monkeypatch):
    from dlc.compiler import budget

    monkeypatch.chdir(tmp_path)
    args = _setup(case, tmp_path)
    result = CliRunner().invoke(main, ["--max-memory", "256M", *args])
    budget.set_budget(None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    _check(case, tmp_path, result.exit_code, result.output)


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_reproducer_under_512mb(case, tmp_path):
    args = _setup(case, tmp_path)
    r = subprocess.run([sys.executable, "-m", "dlc.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                       preexec_fn=_limited, timeout=60, env={**os.environ, "DLC_MAX_MEMORY": ""})
    _check(case, tmp_path, r.returncode, r.stdout + r.stderr)


CORRECT = {
    "1500-binding chain, output first": "y: float32[4]",
    "squeeze with B = 1": "y: float32[1, 3]",
    "squeeze with B = 1 on onnxruntime": "y: float32[1, 3]",
    "form feed in a comment": "3 |     output y = foo(x)",
}


def _setup_correct(case: str, d: Path) -> list[str]:
    spec = d / "m.dl"
    if case.startswith("1500"):
        lines = [f"    a{i} = a{i - 1} + 1.0" for i in range(1, 1500)]
        spec.write_text("model m() {\n    input a0: f32[4]\n    output y = a1499\n" + "\n".join(lines) + "\n}\n")
        return ["run", str(spec)]
    if case.startswith("squeeze"):
        spec.write_text("model m() { input x: f32[B, 3]\n output y = squeeze(x) }")
        return ["run", str(spec), "--bind", "B=1"] + (["--backend", "onnxruntime"] if "onnx" in case else [])
    if case.startswith("form feed"):
        spec.write_text("model m() {  # a comment\x0c with a form feed\n    input x: f32[4]\n"
                        "    output y = foo(x)\n}\n")
        return ["check", str(spec)]
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(CORRECT))
def test_reproducer_gives_the_right_result(case, tmp_path):
    result = CliRunner().invoke(main, _setup_correct(case, tmp_path))
    assert "Traceback" not in result.output
    assert CORRECT[case] in result.output, result.output

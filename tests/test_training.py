"""The training loop: determinism, checkpoints and resume, backends, optimizers,
schedules, regularisation, non-finite detection, strict train blocks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.runtime import checkpoint as ckpt

QUIET = {"progress": False, "echo": lambda s: None}

# a small regression problem every optimizer can make progress on
REGRESSION = """
model reg() {{
    input x: f32[N, 4]
    input y: f32[N, 1]
    param W1: [4, 8] = glorot_uniform()
    param b1: [8] = zeros()
    param W2: [8, 1] = glorot_uniform()
    h = tanh(x @ W1 + b1)
    output loss = mse(h @ W2, y)
}}
train reg {{
    data = {data}
    inputs = map(x = x, y = y_f)
    loss = loss
    optimizer = {opt}
    schedule = {sched}
    batch = 8
    epochs = {epochs}
    {extra}
}}
"""


def regression(tmp_path: Path, opt="sgd(lr = 0.1)", sched="constant()", epochs=30, extra="") -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]], np.float32))
    np.savez(tmp_path / "reg.npz", x=x, y_f=y.astype(np.float32))
    spec = tmp_path / "reg.dl"
    spec.write_text(REGRESSION.format(data='"reg.npz"', opt=opt, sched=sched, epochs=epochs, extra=extra))
    return spec


OPTIMIZERS = ["sgd(lr = 0.1)", "momentum(lr = 0.05)", "nesterov(lr = 0.05)", "adagrad(lr = 0.1)",
              "rmsprop(lr = 0.01)", "adadelta()", "adam(lr = 0.02)", "adamw(lr = 0.02, weight_decay = 0.01)",
              "ftrl(lr = 0.5)"]


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(tmp_path, opt):
    m = dlc.load(regression(tmp_path, opt=opt), mode="train")
    h = m.train(**QUIET)
    first, last = h.epochs[0]["loss"], h.epochs[-1]["loss"]
    assert last < 0.7 * first, (opt, first, last)


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_optimizer_steps_match_between_backends(tmp_path, opt):
    spec = regression(tmp_path, opt=opt, sched="warmup(1, then = cosine(total = 3))", epochs=3)
    a = dlc.load(spec, mode="train")
    b = dlc.load(spec, mode="train")
    a.train(**QUIET)
    b.train(backend="onnxruntime", **QUIET)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-4, atol=2e-5, err_msg=f"{opt} {k}")


def _one_step(spec: Path):
    """(model, first batch, the step's outputs) for the first update of a run."""
    from dlc.compiler.training.step import initial_state
    from dlc.runtime.data import batches
    from dlc.runtime.runner import make_runner
    from dlc.runtime.train_data import load_splits
    from dlc.runtime.trainer import build_steps

    m = dlc.load(spec, mode="train")
    train_spec = m.train_spec()
    first = next(batches(load_splits(m, train_spec)["train"], 8, shuffle=True, seed=0, epoch=0))
    step = build_steps(m, train_spec, 1)[0]
    out = make_runner(step.graph, "numpy")({**first, "__rng": np.int64(0)}, m.params, initial_state(step))
    return m, first, out


def test_sgd_update_is_exact(tmp_path):
    """new p = p - lr * dL/dp, with dL/dp from the model's own gradient graph."""
    m, batch, out = _one_step(regression(tmp_path, opt="sgd(lr = 0.1)"))
    grads = m.gradients(batch)
    for k, p in m.params.items():
        np.testing.assert_allclose(out[f"new/{k}"], p - 0.1 * grads[k], rtol=1e-5, atol=1e-7)


def test_l2_and_decoupled_decay_are_exact(tmp_path):
    m, batch, out = _one_step(regression(tmp_path, opt="sgd(lr = 0.1)", extra="regularize = [l2(0.5, params = \"W*\")]"))
    grads = m.gradients(batch)
    for k, p in m.params.items():
        decay = 0.5 * p if k.startswith("W") else 0.0
        np.testing.assert_allclose(out[f"new/{k}"], p - 0.1 * (grads[k] + decay), rtol=1e-5, atol=1e-7)
    m, batch, out = _one_step(regression(tmp_path, opt="sgd(lr = 0.1)", extra="weight_decay = 0.2"))
    grads = m.gradients(batch)
    for k, p in m.params.items():
        np.testing.assert_allclose(out[f"new/{k}"], p - 0.1 * grads[k] - 0.1 * 0.2 * p, rtol=1e-5, atol=1e-7)


def test_clipping_by_global_norm_is_exact(tmp_path):
    m, batch, out = _one_step(regression(tmp_path, opt="sgd(lr = 1.0)", extra="clip = norm(0.01)"))
    grads = m.gradients(batch)
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert norm > 0.01
    for k, p in m.params.items():
        np.testing.assert_allclose(out[f"new/{k}"], p - grads[k] * (0.01 / norm), rtol=1e-4, atol=1e-7)


def test_same_seed_same_numbers(tmp_path):
    spec = regression(tmp_path, opt="adam(lr = 0.01)", epochs=3)
    runs = []
    for _ in range(2):
        m = dlc.load(spec, mode="train")
        m.train(**QUIET)
        runs.append(m.params)
    for k in runs[0]:
        assert np.array_equal(runs[0][k], runs[1][k])
    m = dlc.load(spec, mode="train")
    m.train(seed=1, **QUIET)
    assert not all(np.array_equal(runs[0][k], m.params[k]) for k in m.params)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_resume_is_bit_identical(tmp_path, backend):
    spec = regression(tmp_path, opt="adam(lr = 0.01)", epochs=6)
    whole = dlc.load(spec, mode="train")
    whole.train(checkpoint=tmp_path / "a", backend=backend, **QUIET)
    part = dlc.load(spec, mode="train")
    part.train(epochs=3, checkpoint=tmp_path / "b", backend=backend, **QUIET)
    resumed = dlc.load(spec, mode="train")
    resumed.train(checkpoint=tmp_path / "b", resume=True, backend=backend, **QUIET)
    for k in whole.params:
        assert np.array_equal(whole.params[k], resumed.params[k]), k
    a, b = ckpt.load(tmp_path / "a"), ckpt.load(tmp_path / "b")
    assert a.meta["step"] == b.meta["step"]
    for k in a.state:
        assert np.array_equal(a.state[k], b.state[k]), k


def test_kill_during_checkpoint_write_loses_nothing(tmp_path, monkeypatch):
    spec = regression(tmp_path, opt="momentum(lr = 0.05)", epochs=5)
    whole = dlc.load(spec, mode="train")
    whole.train(**QUIET)
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        if str(dst).endswith(".npz"):
            calls["n"] += 1
            if calls["n"] == 3:  # the third epoch's save, after its arrays were written to a temp file
                raise KeyboardInterrupt("killed while writing the checkpoint")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    m = dlc.load(spec, mode="train")
    with pytest.raises(KeyboardInterrupt):
        m.train(checkpoint=tmp_path / "ck", **QUIET)
    monkeypatch.setattr(os, "replace", real_replace)
    survivor = ckpt.load(tmp_path / "ck")
    assert survivor.meta["epoch"] == 2
    resumed = dlc.load(spec, mode="train")
    resumed.train(checkpoint=tmp_path / "ck", resume=True, **QUIET)
    for k in whole.params:
        assert np.array_equal(whole.params[k], resumed.params[k]), k


def test_foreign_checkpoint_is_refused(tmp_path):
    spec = regression(tmp_path, epochs=1)
    m = dlc.load(spec, mode="train")
    m.train(checkpoint=tmp_path / "ck", **QUIET)
    other = tmp_path / "other.dl"
    other.write_text(spec.read_text().replace("[4, 8]", "[4, 9]").replace("[8]", "[9]").replace("[8, 1]", "[9, 1]"))
    m2 = dlc.load(other, mode="train")
    with pytest.raises(DlcError) as e:
        m2.train(checkpoint=tmp_path / "ck", resume=True, **QUIET)
    assert e.value.code == "E0403"


def test_schedules_shape_the_learning_rate(tmp_path):
    from dlc.compiler.training.step import initial_state
    from dlc.runtime.runner import make_runner
    from dlc.runtime.trainer import build_steps

    cases = {"constant()": lambda t: 0.1,
             "step(every = 1, gamma = 0.5)": lambda t: 0.1 * 0.5 ** (t // 8),
             "exponential(gamma = 0.5)": lambda t: 0.1 * 0.5 ** (t / 8),
             "inverse(gamma = 1.0)": lambda t: 0.1 / (1 + t / 8),
             "cosine(total = 2)": lambda t: 0.05 * (1 + np.cos(np.pi * min(t, 16) / 16)),
             "warmup(1, then = constant())": lambda t: 0.1 * (t + 1) / 8 if t < 8 else 0.1}
    for sched, want in cases.items():
        m = dlc.load(regression(tmp_path, sched=sched), mode="train")
        step = build_steps(m, m.train_spec(), steps_per_epoch=8)[0]
        run = make_runner(step.graph, "numpy")
        feeds = {"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 1), np.float32), "__rng": np.int64(0)}
        state = initial_state(step)
        for t in (0, 3, 8, 12, 20):
            state["step/main"] = np.int64(t)
            lr = float(run(feeds, m.params, state)["train/lr"])
            assert lr == pytest.approx(want(t), rel=1e-5), (sched, t)


def test_regularisers_and_clipping_all_change_training(tmp_path):
    base = dlc.load(regression(tmp_path, epochs=2), mode="train")
    base.train(**QUIET)
    for extra in ("regularize = [l1(0.01)]", "clip = value(0.001)"):
        m = dlc.load(regression(tmp_path, epochs=2, extra=extra), mode="train")
        m.train(**QUIET)
        assert not np.allclose(m.params["W1"], base.params["W1"]), extra


def test_non_finite_loss_names_the_node(tmp_path):
    spec = tmp_path / "nan.dl"
    spec.write_text("""
model m() {
    input x: f32[N, 2]
    input y: f32[N, 1]
    param W: [2, 1] = ones()
    z = log(x @ W - 100.0)
    output loss = mean(z)
}
train m { data = xor(same = true)  inputs = map(y = y_f)  loss = loss  epochs = 1  batch = 4 }
""")
    with pytest.raises(DlcError) as e:
        dlc.load(spec, mode="train").train(**QUIET)
    assert e.value.code == "E0402"
    assert "`log`" in e.value.message
    assert e.value.loc.line == 6


@pytest.mark.parametrize("block, words", [
    ("data = digits()  loss = loss  optimiser = adam()", ["unknown train key `optimiser`", "optimizer"]),
    ("data = digits()  loss = loss  optimizer = adma()", ["unknown optimizer `adma`", "adam"]),
    ("data = digits()  loss = loss  optimizer = adam(lr = true)", ["`lr` of `adam` must be a number"]),
    ("data = digits()  loss = loss  optimizer = adam(learning_rate = 0.1)", ["no argument `learning_rate`"]),
    ("data = digitz()  loss = loss", ["unknown dataset `digitz`", "digits"]),
    ("data = digits()  loss = loss  batch = 0", ["`batch` must be an integer >= 1"]),
    ("data = digits()  loss = probs", ["the loss must be a float scalar", "f32[B, 10]"]),
    ("data = digits()  loss = sum(y)", ["the loss must be a float scalar", "i64[]"]),
    ("data = digits()  loss = loss  optimizer = adam(beta1 = 1.0)", ["`beta1` of `adam` must be >= 0 and < 1"]),
    ("data = digits()  loss = loss  clip = norm(-1.0)", ["`max` of `norm` must be > 0"]),
    ("data = digits()  loss = loss  early_stop = patience(0)", ["`patience` of `patience` must be >= 1"]),
    ("data = digits()  step a { loss = loss; params = \"nothing*\" }", ["step `a`", "match no parameter"]),
    ("loss = loss", ["needs `data`"]),
])
def test_train_block_is_strict(block, words):
    text = f"""
model m() {{
    input x: f32[B, 64]
    input y: i64[B]
    param W: [64, 10] = zeros()
    logits = x @ W
    output probs = softmax(logits)
    output loss = cross_entropy(logits, y)
}}
train m {{ {block} }}
"""
    with pytest.raises(DlcError) as e:
        m = dlc.compile(text, mode="train")
        m.train(epochs=0, **QUIET)
    text = e.value.render()
    for w in words:
        assert w in text, text


def test_checkpoints_load_from_python(tmp_path):
    spec = regression(tmp_path, epochs=2)
    trained = dlc.load(spec, mode="train")
    history = trained.train(checkpoint=tmp_path / "ck", **QUIET)
    fresh = dlc.load(spec)
    meta = fresh.load_checkpoint(tmp_path / "ck")
    assert meta["epoch"] == 2 and meta["history"] == history.epochs
    for k in trained.params:
        assert np.array_equal(fresh.params[k], trained.params[k])


KILLER = """
import os, runpy, signal, sys
real = os.replace
count = [0]
def replace(src, dst):
    if str(dst).endswith(".npz"):
        count[0] += 1
        if count[0] == 3:  # the third epoch's checkpoint: its arrays are in a temp file, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
sys.argv = ["dlc"] + sys.argv[1:]
runpy.run_module("dlc.cli", run_name="__main__")
"""


def test_sigkill_during_checkpoint_write_then_resume(tmp_path):
    """A real `dlc train` process killed with SIGKILL mid-save, then `dlc train --resume`."""
    import signal
    import subprocess
    import sys

    spec = regression(tmp_path, opt="adam(lr = 0.01)", epochs=5)
    ck = tmp_path / "ck"
    args = [str(spec), "--checkpoint", str(ck), "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", KILLER, "train", *args], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ckpt.load(ck).meta["epoch"] == 2  # the last good checkpoint survived
    resumed = subprocess.run([sys.executable, "-m", "dlc.cli", "train", *args, "--resume"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    whole = dlc.load(spec, mode="train")
    whole.train(**QUIET)
    final = ckpt.load(ck)
    assert final.meta["epoch"] == 5
    for k in whole.params:
        assert np.array_equal(final.params[k], whole.params[k]), k


def test_early_stopping_on_an_empty_validation_split_is_refused_before_the_first_epoch(tmp_path):
    """It was E0201 without a location after a whole epoch; now at `early_stop`, before any epoch."""
    regression(tmp_path)  # writes reg.npz
    spec = tmp_path / "noval.dl"
    spec.write_text(REGRESSION.format(data='file("reg.npz", split = [0.5, 0, 0.5])', opt="sgd(lr = 0.1)",
                                      sched="constant()", epochs=3, extra="early_stop = patience(2)"))
    lines = []
    with pytest.raises(DlcError) as e:
        dlc.load(spec, mode="train").train(progress=False, echo=lines.append)
    assert e.value.code == "E0201" and "the validation split is empty" in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (19, 18)  # the line of `early_stop`
    assert not any(line.startswith("epoch") for line in lines)
    spec.write_text(spec.read_text().replace("patience(2)", "patience(2, monitor = loss)"))
    assert len(dlc.load(spec, mode="train").train(**QUIET).epochs) == 3  # a training value is fine


def test_an_unmeasured_monitor_is_reported_at_early_stop(tmp_path):
    spec = regression(tmp_path, epochs=2, extra="early_stop = patience(2, monitor = val.nosuch)")
    with pytest.raises(DlcError) as e:
        dlc.load(spec, mode="train").train(**QUIET)
    assert e.value.code == "E0201" and "`val.nosuch`, which is not measured" in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (19, 18)  # the line of `early_stop`


def test_resume_continues_with_the_seed_the_run_was_trained_with(tmp_path):
    """`dlc train --seed 3 --checkpoint ck`, interrupted, then `--resume` without --seed continued
    with the train block's seed 0: other batches, so not the uninterrupted run's numbers."""
    spec = regression(tmp_path, epochs=4)
    whole = dlc.load(spec, mode="train").train(seed=3, checkpoint=tmp_path / "whole", **QUIET)
    dlc.load(spec, mode="train").train(seed=3, epochs=2, checkpoint=tmp_path / "cut", **QUIET)
    said = []
    m = dlc.load(spec, mode="train")
    resumed = m.train(checkpoint=tmp_path / "cut", resume=True, progress=False, echo=said.append)
    assert "continuing with the run's seed 3" in said
    assert [r["loss"] for r in resumed.epochs] == [r["loss"] for r in whole.epochs]
    with pytest.raises(DlcError) as e:
        dlc.load(spec, mode="train").train(seed=4, epochs=5, checkpoint=tmp_path / "cut", resume=True, **QUIET)
    assert e.value.code == "E0403" and "was trained with seed 3, not 4" in e.value.message

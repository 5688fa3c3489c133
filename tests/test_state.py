"""`state` / `update`: tensors carried from one training step to the next."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.grammar.parse import parse
from dlc.grammar.printer import unparse

COUNTER = """
model m() {
    input x: f32[N, 2]
    param w: [2] = ones()
    state seen: [1] = zeros()          # how many examples the training steps have seen
    update seen = seen + cast(count(x, axes = [0]), f32)
    output loss = mean(x * w) + 0.0 * sum(seen)
}
train m { data = xor(same = true)  loss = loss  batch = 2  epochs = 3 }
"""


def test_state_is_carried_between_steps_on_both_backends():
    for backend in ("numpy", "onnxruntime"):
        m = dlc.compile(COUNTER, mode="train")
        assert m.state == {"seen": np.zeros(1, np.float32)}
        m.train(backend=backend, progress=False, echo=lambda s: None)
        np.testing.assert_array_equal(m.state["seen"], [12.0])  # 3 epochs x 4 examples


def test_state_round_trips_through_the_printer():
    m = parse(COUNTER)
    assert parse(unparse(m)) == m


@pytest.mark.parametrize("body, words", [
    ("update w = w", ["`update` needs a `state` of this block"]),
    ("state s: [2] = zeros()\\n update s = x", ["state `s` is f32[2], but its update is f32[N, 2]"]),
    ("state s: [2] = zeros()\\n update s = s\\n update s = s", ["updated twice"]),
    ("state s: [N] = zeros()", ["symbolic dim N"]),
])
def test_state_errors(body, words):
    text = f"model m() {{ input x: f32[N, 2]\n param w: [2] = ones()\n {body}\n output y = x }}"
    with pytest.raises(DlcError) as e:
        dlc.compile(text.replace("\\n", "\n"))
    for w in words:
        assert w in e.value.render()


def test_state_cannot_be_updated_inside_a_scan_cell():
    text = """
layer cell(x: f32[B, 2], h: f32[B, 2]) {
    state s: [2] = zeros()
    update s = s + 1.0
    return h + x
}
model m() { input xs: f32[B, T, 2]
    hs, h = scan cell over xs init (zeros([B, 2]))
    output y = h }"""
    with pytest.raises(DlcError) as e:
        dlc.compile(text)
    assert "inside a scan cell" in e.value.message


def test_checkpoints_restore_state(tmp_path):
    spec = tmp_path / "c.dl"
    spec.write_text(COUNTER)
    m = dlc.load(spec, mode="train")
    m.train(checkpoint=tmp_path / "ck", progress=False, echo=lambda s: None)
    fresh = dlc.load(spec)
    fresh.load_checkpoint(tmp_path / "ck")
    np.testing.assert_array_equal(fresh.state["seen"], [12.0])


def test_state_moves_once_per_batch_with_several_step_groups():
    text = COUNTER.replace("train m { data = xor(same = true)  loss = loss  batch = 2  epochs = 3 }",
                           "train m { data = xor(same = true)  batch = 2  epochs = 1\n"
                           "  step a { loss = loss }\n  step best { loss = loss } }")
    m = dlc.compile(text, mode="train")
    m.train(progress=False, echo=lambda s: None)
    np.testing.assert_array_equal(m.state["seen"], [4.0])  # one epoch of 4 examples, not 8


def test_a_group_named_best_resumes(tmp_path):
    text = COUNTER.replace("train m { data = xor(same = true)  loss = loss  batch = 2  epochs = 3 }",
                           "train m { data = xor(same = true)  batch = 2  epochs = 2\n"
                           "  step best { loss = loss; optimizer = adam() } }")
    spec = tmp_path / "b.dl"
    spec.write_text(text)
    dlc.load(spec, mode="train").train(epochs=1, checkpoint=tmp_path / "ck", progress=False, echo=lambda s: None)
    m = dlc.load(spec, mode="train")
    m.train(checkpoint=tmp_path / "ck", resume=True, progress=False, echo=lambda s: None)
    np.testing.assert_array_equal(m.state["seen"], [8.0])


def test_dotted_paths_read_state():
    m = dlc.compile("""
layer counted(x: f32[N, 2]) { state total: [1] = ones()  update total = total + 1.0  return x }
model m() { input x: f32[N, 2]
  h = counted(x)
  output t = h.total }""")
    np.testing.assert_array_equal(m.run({"x": np.zeros((1, 2), np.float32)})["t"], [1.0])


def test_checkpoints_load_the_best_epoch_when_the_run_kept_it(tmp_path):
    spec = tmp_path / "c.dl"
    spec.write_text(COUNTER.replace("epochs = 3 }", "epochs = 3  early_stop = patience(1, monitor = val.seen_metric, "
                                    "mode = max)  metrics = [seen_metric] }").replace(
        "output loss =", "output seen_metric = 0.0 - sum(seen)\n    output loss ="))
    m = dlc.load(spec, mode="train")
    m.train(checkpoint=tmp_path / "ck", progress=False, echo=lambda s: None)  # best: the first epoch
    best = dlc.load(spec)
    best.load_checkpoint(tmp_path / "ck")
    last = dlc.load(spec)
    last.load_checkpoint(tmp_path / "ck", best=False)
    np.testing.assert_array_equal(best.state["seen"], m.state["seen"])
    assert last.state["seen"][0] > best.state["seen"][0]

"""`dlc summary`: golden tables for every spec, and the facts behind them.

    DLC_UPDATE_GOLDEN=1 python -m pytest tests/test_summary.py   # rewrite tests/golden/summary/*.txt
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import dlc
from cli_harness import assert_matches_golden
from dlc.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "summary"
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.dl"))


@pytest.mark.parametrize("spec", SPECS)
def test_summary_matches_golden(spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["summary", f"specs/{spec}.dl"])
    assert result.exit_code == 0, result.output
    assert_matches_golden(result.output, GOLDEN / f"{spec}.txt")


def _rows(spec: str):
    return dlc.load(ROOT / "specs" / f"{spec}.dl").summary().rows


def test_rows_run_in_execution_order_with_loose_ops_as_rows():
    rows = [(r.name, r.type) for r in _rows("cnn")]
    assert rows == [("img", "reshape"), ("h1", "conv"), ("h1", "max_pool2d"), ("h2", "conv"), ("h2", "max_pool2d"),
                    ("h", "flatten"), ("h", "relu_dense"), ("logits", "dense"), ("probs", "softmax"),
                    ("loss", "cross_entropy")]
    pooled = [r for r in _rows("cnn") if r.type == "max_pool2d"][0]
    assert pooled.outputs == ["f32[B, 16, 4, 4]"]  # the pooled binding, not the conv output


def test_state_is_counted_apart_from_trainable_parameters():
    s = dlc.load(ROOT / "specs" / "cnn.dl").summary()
    assert (s.trainable, s.state, s.total) == (13_754, 96, 13_850)
    assert s.trainable_bytes == 4 * 13_754 and s.state_bytes == 4 * 96
    conv = [r for r in s.rows if r.name == "h1" and r.type == "conv"][0]
    assert (conv.params, conv.state) == (16 * 9 + 32, 32)  # kernel + gamma/beta; running mean/var


def test_a_layer_returning_two_values_shows_both(tmp_path):
    spec = tmp_path / "two.dl"
    spec.write_text("layer two(x: f32[B, D], k: int) {\n    param W: [D, 3] = zeros()\n    param V: [D, k] = zeros()\n"
                    "    return x @ W, x @ V\n}\nmodel m() {\n    input x: f32[B, 4]\n    a, b = two(x, 5)\n"
                    "    output y = sum(a) + sum(b)\n}\n")
    first = dlc.load(spec).summary().rows[0]
    assert (first.name, first.type, first.outputs, first.params) == ("a, b", "two", ["f32[B, 3]", "f32[B, 5]"], 32)


def test_symbolic_flops_are_kept_and_json_has_everything(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["summary", "specs/transformer.dl", "--format", "json"])
    data = json.loads(result.output)
    assert data["flops_per_example"] == "33440*T + 272*T**2 + 201"
    assert data["trainable"] == 18_242 and data["state"] == 0 and data["total_bytes"] == 4 * 18_242
    assert [r["type"] for r in data["rows"]][:3] == ["embedding", "slice", "repeat encoder_block"]
    assert sum(r["params"] for r in data["rows"]) == 18_242


def test_notebook_repr_is_the_summary_table():
    html = dlc.load(ROOT / "specs" / "mlp.dl")._repr_html_()
    assert html.startswith("<table>") and "<td>relu_dense</td>" in html and "4,810" in html


def test_every_op_counts_its_flops_on_its_samples():
    """FLOPs live on the op classes (Op.flops): every primitive op answers for every sample, ops that
    only move values count nothing, a matmul two per multiply-add."""
    import numpy as np
    from op_harness import cases, materialise, one_op_graph, seed_of

    from dlc.compiler.ops.registry import get_op
    from dlc.compiler.summary import node_flops

    for case_id, cls, _, sample in cases():
        if cls.composite:
            continue
        g, _, outs, _, _ = one_op_graph(cls, sample, materialise(sample, np.float64, seed_of(case_id)))
        n = outs[0].node
        flops = node_flops(g, n)
        assert isinstance(flops, int) and flops >= 0, case_id
        if get_op(cls.name).free:
            assert flops == 0, case_id
    mm = get_op("matmul")
    from dlc.compiler.types import TensorType

    assert mm.flops([TensorType("f32", (2, 3)), TensorType("f32", (3, 4))], [TensorType("f32", (2, 4))]) == 48

"""Graph pictures: DOT for every spec (forward and with gradients) that Graphviz accepts,
clusters for scopes, scan bodies and gradients, port labels, a legend, escaping; the
notebook representations."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import dlc
from dlc.cli import main
from dlc.compiler.dot import quote, render, to_dot
from dlc.grammar.errors import DlcError

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.dl"))
HAVE_DOT = shutil.which("dot") is not None


def test_quote_escapes_what_would_end_a_dot_string():
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\b") == '"a\\\\b"'
    assert quote("two\nlines") == '"two\\nlines"'


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_draws_forward(spec):
    text = to_dot(dlc.load(ROOT / "specs" / f"{spec}.dl").graph)
    assert text.startswith("digraph") and 'subgraph "cluster_legend"' in text
    if HAVE_DOT:
        assert render(text, "svg").startswith(b"<?xml") or b"<svg" in render(text, "svg")[:400]


def test_lstm_picture_has_its_scan_body_scopes_and_ports():
    text = to_dot(dlc.load(ROOT / "specs" / "lstm.dl").graph)
    assert "body of scan" in text and '"cluster_scope_hs"' in text
    assert 'headlabel="carry_in0"' in text and '"→ carry0"' in text  # the scan's ports, what a step returns
    assert 'headlabel="a"' in text and 'headlabel="b"' in text  # the two inputs of a matmul
    assert 'taillabel=".3"' in text  # one output of the four-way split


def test_gradient_picture_groups_backward_nodes_by_forward_node():
    m = dlc.load(ROOT / "specs" / "mlp.dl", mode="train")
    text = to_dot(m.train_graph(optimizer=False))
    assert "∂ matmul" in text and "(logits)" in text and "lightpink" in text


def test_cli_renders_or_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "g.png"
    result = CliRunner().invoke(main, ["graph", "specs/cnn.dl", "--format", "png", "-o", str(out)])
    if HAVE_DOT:
        assert result.exit_code == 0, result.output
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert result.exit_code == 2 and "E0004" in result.output
    result = CliRunner().invoke(main, ["graph", "specs/cnn.dl", "--format", "png"])
    assert result.exit_code == 64  # a png needs -o


def test_missing_dot_program_is_a_coded_error(monkeypatch):
    graphviz = pytest.importorskip("graphviz")

    def no_dot(*args, **kwargs):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz.Source, "pipe", no_dot)
    with pytest.raises(DlcError) as e:
        render("digraph { a }", "svg")
    assert e.value.code == "E0004" and "Graphviz" in e.value.message


def test_notebook_reprs():
    m = dlc.load(ROOT / "specs" / "mlp.dl")
    assert "<table>" in m._repr_html_()
    svg = m._repr_svg_()
    assert (svg is not None and "<svg" in svg) if HAVE_DOT else svg is None

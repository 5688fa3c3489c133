"""The specs train to the quality their header comments promise (NumPy backend)."""
from __future__ import annotations

import pytest

import dlc

QUIET = {"progress": False, "echo": lambda s: None}


def test_mlp_reaches_96_percent_on_digits():
    h = dlc.load("specs/mlp.dl", mode="train").train(**QUIET)
    assert h.test["accuracy"] >= 0.96


def test_xor_mlp_is_exact_and_the_perceptron_cannot_be():
    mlp = dlc.load("specs/xor.dl", mode="train", model="mlp").train(**QUIET)
    assert mlp.test["acc"] == 1.0
    perceptron = dlc.load("specs/xor.dl", mode="train", model="perceptron").train(**QUIET)
    assert perceptron.test["acc"] <= 0.75


def _readme_figure(spec: str) -> float:
    """The accuracy the README's spec table gives for ``spec`` (``≈ 92%``)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(f"| `specs/{spec}.dl` |"))
    return float(re.search(r"≈ (\d+(?:\.\d+)?)%", row).group(1)) / 100


@pytest.mark.parametrize("spec, floor", [("lstm", 0.80), ("gru", 0.80), ("rnn", 0.65)])
def test_recurrent_specs_beat_chance_on_the_adding_problem(spec, floor):
    h = dlc.load(f"specs/{spec}.dl", mode="train").train(**QUIET)
    assert h.test["accuracy"] >= floor  # chance is about 0.5
    # the README's figure is this measurement (NumPy backend, default seed)
    assert abs(h.test["accuracy"] - _readme_figure(spec)) <= 0.01, (spec, h.test["accuracy"])

"""The README's example spec compiles and its train block is valid."""
import re
from pathlib import Path

import dlc


def test_readme_example_compiles_and_trains():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```\n(# a two-layer.*?)```", text, re.S).group(1)
    m = dlc.compile(block, mode="train")
    assert sorted(m.params) == ["h.W", "h.b", "logits.W", "logits.b"]
    history = m.train(epochs=2, progress=False, echo=lambda s: None)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]

"""docs/language.md stays true: its examples compile, and its tables name
everything the implementation registers.

Every ```dl block that contains a `model` is written to a file and checked the
way `dlc check` does (every model in both modes, train blocks built into step
graphs); a train block's data set is also loaded and matched to the model's
inputs.  ```dl blocks without a model must at least parse.  ```dl-fragment
blocks (pseudo-syntax, or code that needs `use`) are skipped.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from dlc.grammar.errors import CODES
from dlc.grammar.parse import parse

DOC = Path(__file__).resolve().parent.parent / "docs" / "language.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = [(TEXT[:m.start()].count("\n") + 2, textwrap.dedent(m.group(2)))
          for m in re.finditer(r"^([ \t]*)```dl\n(.*?)^\1```", TEXT, re.S | re.M)]
MODEL_BLOCKS = [(line, b) for line, b in BLOCKS if re.search(r"^\s*model\s", b, re.M)]


def test_the_doc_has_examples():
    assert len(MODEL_BLOCKS) >= 15


@pytest.mark.parametrize("line,block", MODEL_BLOCKS, ids=[f"line{line}" for line, _ in MODEL_BLOCKS])
def test_example_compiles(tmp_path, line, block):
    from dlc.check import check
    from dlc.compiler.lower import load_module
    from dlc.model import Model
    from dlc.runtime.train_data import load_splits

    path = tmp_path / "example.dl"
    path.write_text(block, encoding="utf-8")
    check(path)  # every model, eval and train mode, train blocks built
    loaded = load_module(str(path))
    for name in loaded.trains:
        model = Model(loaded, name, mode="train")
        splits = load_splits(model, model.train_spec())  # data set, options and input mapping
        assert len(next(iter(splits["train"].values()))) > 0


def test_other_blocks_parse():
    for line, block in BLOCKS:
        if (line, block) not in MODEL_BLOCKS:
            parse(block, f"language.md:{line}")


def _documented(name: str) -> bool:
    return f"`{name}`" in TEXT or re.search(rf"`{re.escape(name)}[(`,]", TEXT) is not None


def test_every_op_is_documented():
    from dlc.compiler.ops.registry import all_ops

    missing = [n for n in all_ops() if not _documented(n)]
    assert not missing, f"ops missing from docs/language.md: {missing}"


def test_every_initialiser_is_documented():
    from dlc.compiler.ops.init import init_names

    missing = [n for n in init_names() if not _documented(n)]
    assert not missing, f"initialisers missing from docs/language.md: {missing}"


def test_every_train_call_is_documented():
    from dlc.compiler.training.spec import KEYS, OPTIMIZERS, SCHEDULES, STEP_KEYS

    names = [*OPTIMIZERS, *SCHEDULES, *KEYS, *STEP_KEYS]
    missing = [n for n in names if not _documented(n)]
    assert not missing, f"train-block names missing from docs/language.md: {missing}"


def test_every_dataset_is_documented():
    from dlc.runtime.data import BUILTINS

    missing = [n for n in BUILTINS if not _documented(n)]
    assert not missing, f"data sets missing from docs/language.md: {missing}"


def test_every_error_code_is_documented():
    missing = [c for c in CODES if f"| {c} |" not in TEXT]
    assert not missing, f"error codes missing from docs/language.md: {missing}"

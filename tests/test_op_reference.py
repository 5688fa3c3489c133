"""The op tables of docs/language.md and docs/architecture.md are what the registry generates."""
from __future__ import annotations

import pytest

from dlc.compiler.ops import reference


@pytest.mark.parametrize("name", sorted(reference.GENERATORS))
def test_generated_op_tables_are_current(name):
    assert reference.current(name) == reference.GENERATORS[name](), (
        f"docs op table `{name}` is stale: run `python -m dlc.compiler.ops.reference --write`")


def test_the_index_lists_every_op_with_its_signature():
    from dlc.compiler.ops.registry import all_ops

    index = reference.op_index()
    for name, cls in all_ops().items():
        assert reference.signature(cls) in index, name
    assert "`leaky_relu(x, alpha = 0.01)`" in index and "`one_hot(ids, depth, dtype = f32)`" in index

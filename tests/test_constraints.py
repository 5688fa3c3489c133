"""Parameter constraints (`constrain = [...]`) and step-group schedules (`every`,
`repeat`, `sees`): strict validation, the projections as nodes of the training
step (NumPy and the exported ONNX step agree), and the alternation the loop runs."""
from __future__ import annotations

import numpy as np
import pytest
from dlc.grammar.errors import DlcError
from step_parity import check_groups_after_k_steps

import dlc

QUIET = {"progress": False, "echo": lambda s: None}

MODEL = """
model m() {{
    input x: f32[B, 2]
    param A: [2, 3] = normal(2.0)
    param V: [3] = normal(2.0)
    param C: [3, 4] = normal(2.0)
    output loss = mean((x @ A * V) @ C)
    output aloss = sum((A - 1.0) ** 2) + 0.0 * mean(x)
    output bloss = sum((V - sum(A)) ** 2) + 0.0 * mean(x)
}}
train m {{
    data = gaussian_mixture(n = {n}, k = 2, split = [1.0, 0.0, 0.0])
    batch = {batch}
    epochs = {epochs}
    {body}
}}
"""


def model(body: str, n: int = 64, batch: int = 16, epochs: int = 1) -> dlc.Model:
    return dlc.compile(MODEL.format(body=body, n=n, batch=batch, epochs=epochs))


def test_constraints_hold_after_every_update_on_both_backends():
    m = model('loss = loss; optimizer = sgd(lr = 0.5)\n'
              '    constrain = [clip(-0.3, 0.3, params = "A"), max_norm(1.5, axis = 0, params = "C"),'
              ' non_neg(params = "V")]')
    m.train(**QUIET)
    A, V, C = m.params["A"], m.params["V"], m.params["C"]
    assert np.abs(A).max() <= 0.3 + 1e-7 and np.isclose(np.abs(A).max(), 0.3)  # init normal(2.0) saturates
    assert V.min() >= 0.0
    assert np.linalg.norm(C, axis=0).max() <= 1.5 + 1e-5
    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    check_groups_after_k_steps(m, [{"x": x}] * 3)


def test_max_norm_leaves_slices_within_the_limit_alone_and_unit_norm_normalises():
    m = model('loss = loss; optimizer = sgd(lr = 1e-9)\n'
              '    constrain = [max_norm(3.0, axis = [0], params = "C"), unit_norm(axis = 1, params = "A")]')
    C0 = m.params["C"].copy()
    m.train(**QUIET)
    norms0 = np.linalg.norm(C0, axis=0)
    want = C0 * np.minimum(1.0, 3.0 / norms0)
    np.testing.assert_allclose(m.params["C"], want, rtol=1e-5)
    assert (norms0 < 3.0).any() and (norms0 > 3.0).any()  # both cases exercised
    np.testing.assert_allclose(np.linalg.norm(m.params["A"], axis=1), 1.0, rtol=1e-5)


def test_group_constraints_apply_to_their_group_only():
    m = model('step a { loss = aloss; params = "A"; optimizer = sgd(lr = 0.1); constrain = clip(-0.2, 0.2) }\n'
              '    step b { loss = bloss; params = "V"; optimizer = sgd(lr = 0.1) }')
    V0 = m.params["V"].copy()
    m.train(**QUIET)
    assert np.abs(m.params["A"]).max() <= 0.2 + 1e-7
    assert np.abs(m.params["V"]).max() > 0.2 and not np.allclose(m.params["V"], V0)


@pytest.mark.parametrize("body, words", [
    ('loss = loss; constrain = clamp(0, 1)', "unknown constraint `clamp`"),
    ('loss = loss; constrain = clip(0.1, -0.1)', "lo < hi"),
    ('loss = loss; constrain = clip(-0.1)', "needs `hi`"),
    ('loss = loss; constrain = clip(-0.1, 0.1, param = "A")', "no argument `param`"),
    ('loss = loss; constrain = max_norm(0.0)', "must be > 0"),
    ('loss = loss; constrain = max_norm(1.0, axis = 0.5)', "must be an integer"),
    ('loss = loss; constrain = non_neg(params = "Q*")', "match no parameter"),
    ('loss = loss; constrain = max_norm(1.0, axis = 1, params = "V")', "axis 1 of `V`, which has rank 1"),
    ('loss = loss; constrain = clip(-1, 1, 2)', "at most 2 positional"),
    ('step a { loss = aloss; params = "A"; constrain = non_neg(params = "V") }', "match no parameter"),
    ('step a { loss = aloss; sees = everything }', "`sees` must be `updated` or `start`"),
    ('step a { loss = aloss; repeat = 0 }', "`repeat` must be an integer >= 1"),
])
def test_bad_constraints_and_schedules_are_coded_errors(body, words):
    with pytest.raises(DlcError) as e:
        m = model(body)
        m.to_onnx("train", check=False)  # constraints meet the parameters when the step is built
    assert e.value.code == "E0201" and words in e.value.message, e.value.message
    assert e.value.loc is not None


def test_n_critic_alternation_counts_updates(monkeypatch):
    """`every = 5` on the generator: the critic updates on every batch, the generator on
    every fifth; `repeat = 3`: three updates on each batch the group runs on."""
    from dlc.runtime import trainer as T

    calls = []
    real = T.rng_key
    monkeypatch.setattr(T, "rng_key", lambda seed, step, group: calls.append((step, group)) or real(seed, step, group))
    m = model('step a { loss = aloss; params = "A"; optimizer = sgd(lr = 0.01) }\n'
              '    step b { loss = bloss; params = "V"; optimizer = sgd(lr = 0.01); every = 5; repeat = 3 }',
              n=160, batch=16, epochs=2)  # 10 batches an epoch, 20 in all
    m.train(**QUIET)
    a = [s for s, g in calls if g == 0]
    b = [(s, g) for s, g in calls if g != 0]
    assert a == list(range(20))  # the critic-like group: every batch, once
    assert [s for s, _ in b] == [0, 0, 0, 5, 5, 5, 10, 10, 10, 15, 15, 15]
    assert [g for _, g in b][:3] == [1, 3, 5]  # fresh random keys per repeat (groups * r + index)


@pytest.mark.parametrize("sees, expect", [("updated", 1.0), ("start", 0.0)])
def test_a_group_sees_the_other_groups_updated_parameters_when_asked(sees, expect):
    """Group a moves A from 0 to 1 in one sgd step; group b then moves V onto sum(A)/6-ish
    targets in one step: with `sees = updated` it reads the new A, with `start` the old."""
    src = MODEL.replace("normal(2.0)", "zeros()").format(
        n=8, batch=8, epochs=1,
        body=f'step a {{ loss = aloss; params = "A"; optimizer = sgd(lr = 0.5) }}\n'
             f'    step b {{ loss = bloss; params = "V"; optimizer = sgd(lr = 0.5); sees = {sees} }}')
    m = dlc.compile(src)
    m.train(**QUIET)
    np.testing.assert_allclose(m.params["A"], 1.0)
    np.testing.assert_allclose(m.params["V"], 6.0 * expect)  # V - 0.5 * 2 (V - sum(A)) = sum(A)

"""specs/transformer.dl and specs/word2vec.dl: their data sets, the quality their
header comments promise, and ONNX/NumPy parity of one exported training step."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.runtime.data import load_dataset
from dlc.runtime.train_data import load_splits
from step_parity import check_training_step

QUIET = {"progress": False, "echo": lambda s: None}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


# -- data sets -----------------------------------------------------------------------
def test_first_token_repeats_labels_and_balance():
    ds = load_dataset("first_token_repeats", seed=3, n=501, T=7, vocab=5)
    tok, y = ds.arrays["tokens"], ds.arrays["y"]
    assert tok.shape == (501, 7) and tok.dtype == np.int64 and y.shape == (501,) and y.dtype == np.int64
    assert tok.min() >= 0 and tok.max() < 5 and ds.n_classes == 2
    assert abs(int(y.sum()) - 250) <= 1  # balanced by construction: chance is 50%
    again = (tok[:, 1:] == tok[:, :1]).sum(axis=1)
    assert np.array_equal(y, (again > 0).astype(np.int64)) and again.max() == 1  # placed exactly once
    assert _same(ds.arrays, load_dataset("first_token_repeats", seed=3, n=501, T=7, vocab=5).arrays)
    assert not np.array_equal(tok, load_dataset("first_token_repeats", seed=4, n=501, T=7, vocab=5).arrays["tokens"])
    with pytest.raises(DlcError) as e:
        load_dataset("first_token_repeats", T=1)
    assert e.value.code == "E0201"


def test_skipgram_pairs_follow_the_topics():
    ds = load_dataset("skipgram", seed=1, n=5000, vocab=40, topics=4, window=2, negatives=3)
    c, ctx, neg = ds.arrays["center"], ds.arrays["context"], ds.arrays["negatives"]
    assert c.shape == ctx.shape == (5000,) and neg.shape == (5000, 3)
    assert all(a.dtype == np.int64 and a.min() >= 0 and a.max() < 40 for a in (c, ctx, neg))
    topic = lambda w: w * 4 // 40  # noqa: E731  (documented in the data set)
    assert (topic(c) == topic(ctx)).mean() > 0.75  # sentences keep to a topic, with 10% noise words
    assert (topic(neg) == topic(c)[:, None]).mean() < 0.4  # negatives ignore the centre word
    # negatives follow the corpus unigram^(3/4): the first (most frequent) word of a topic beats the last
    counts = np.bincount(neg.ravel(), minlength=40)
    assert all(counts[t * 10] > counts[t * 10 + 9] for t in range(4))
    assert _same(ds.arrays, load_dataset("skipgram", seed=1, n=5000, vocab=40, topics=4, window=2,
                                         negatives=3).arrays)
    for bad in ({"topics": 60}, {"noise": 1.5}, {"window": 0}):
        with pytest.raises(DlcError) as e:
            load_dataset("skipgram", **bad)
        assert e.value.code == "E0201"


# -- the specs train to their floors -------------------------------------------------
def test_transformer_attends_across_positions():
    m = dlc.load("specs/transformer.dl", mode="train")
    h = m.train(**QUIET)
    assert h.test["accuracy"] >= 0.95  # chance is 0.5; measured 1.0


def test_transformer_heads_must_divide_the_model_dim():
    with pytest.raises(DlcError) as e:
        dlc.load("specs/transformer.dl", heads=5)
    assert e.value.code == "E0108" and "not divisible by heads = 5" in e.value.message


def test_transformer_sequence_length_is_symbolic():
    m = dlc.load("specs/transformer.dl")
    rng = np.random.default_rng(0)
    for b, t in ((2, 3), (5, 17)):
        out = m.run({"tokens": rng.integers(0, 8, (b, t)), "y": rng.integers(0, 2, b)})
        assert out["probs"].shape == (b, 2)


def test_word2vec_groups_words_by_topic():
    m = dlc.load("specs/word2vec.dl", mode="train")
    h = m.train(**QUIET)
    assert h.test["loss"] < 2.1  # 6 ln 2 = 4.16 at initialisation; measured 1.94
    W = m.params["W_in"]
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = W @ W.T
    topic = np.arange(50) * 5 // 50
    same, other = topic[:, None] == topic[None, :], ~np.eye(50, dtype=bool)
    within, across = cos[same & other].mean(), cos[~same].mean()
    assert within > across + 0.3  # measured 0.88 vs 0.35
    np.fill_diagonal(cos, -np.inf)
    assert (topic[cos.argmax(axis=1)] == topic).mean() >= 0.9  # measured 1.0


def test_word2vec_gradient_is_the_closed_form():
    m = dlc.load("specs/word2vec.dl", mode="train")
    batch = {k: v[:64] for k, v in load_splits(m, m.train_spec())["train"].items()}
    g = m.gradients(batch)
    Wi, Wo = m.params["W_in"].astype(np.float64), m.params["W_out"].astype(np.float64)
    c, ctx, neg = batch["center"], batch["context"], batch["negatives"]
    u, v, vn = Wi[c], Wo[ctx], Wo[neg]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    dpos = -sig(-(u * v).sum(-1)) / len(c)                       # d loss / d (u.v)
    dneg = sig(np.einsum("bd,bkd->bk", u, vn)) / len(c)           # d loss / d (u.v_k)
    gi, go = np.zeros_like(Wi), np.zeros_like(Wo)
    np.add.at(gi, c, dpos[:, None] * v + np.einsum("bk,bkd->bd", dneg, vn))
    np.add.at(go, ctx, dpos[:, None] * u)
    np.add.at(go, neg, dneg[..., None] * u[:, None, :])
    np.testing.assert_allclose(g["W_in"], gi, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g["W_out"], go, rtol=1e-4, atol=1e-7)


# -- ONNX: one exported training step equals the interpreter's -----------------------
@pytest.mark.parametrize("path", ["specs/transformer.dl", "specs/word2vec.dl"])
def test_training_step_matches_the_interpreter(path):
    m = dlc.load(path, mode="train")
    feeds = {k: v[:8] for k, v in load_splits(m, m.train_spec())["train"].items()}  # a real batch
    check_training_step(m, {**feeds, "__rng": np.int64(7)}, label=path)


# -- a compiler fix found while writing transformer.dl -------------------------------
@pytest.mark.parametrize("op", ["exp", "log", "sqrt"])
def test_float_only_math_refuses_integers(op):
    # `sqrt(D / heads)` typed as i64[] while NumPy computed float64 and ONNX refused it;
    # like sin, cos and the activations, these ops now need a float tensor.
    with pytest.raises(DlcError) as e:
        dlc.compile(f"model m {{\n input n: i64[B]\n output y = {op}(n)\n}}\n")
    assert e.value.code == "E0104" and f"`{op}` needs a float tensor" in e.value.message
    m = dlc.compile(f"model m {{\n input x: f32[B]\n output y = x / {op}(4.0)\n}}\n")
    assert m.run({"x": np.ones(2, np.float32)})["y"].dtype == np.float32

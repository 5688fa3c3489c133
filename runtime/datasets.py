"""The built-in data sets, generated or shipped with dlc as package data (nothing is
downloaded).  Each is a function ``(seed, **options) -> Dataset``; its keyword
arguments are its options.

Built-ins (``load_dataset(name, **options)``):

- ``digits``: x f32[N,64] in [0,1] (pixels / 16), y i64[N]; 10 classes.
- ``iris``: x f32[N,4] standardised per feature, y i64[N]; 3 classes.
- ``karate``: Zachary's karate club as ONE example (N = 1): x f32[1,34,34]
  (identity features), adj f32[1,34,34] = D^-1/2 (A+I) D^-1/2, y i64[1,34]
  (Mr. Hi = 0, Officer = 1), train_mask / test_mask bool[1,34]: nodes 0 and 33
  plus one more seeded node per club train, the rest test. Split it with
  ``same=True`` and use the masks.
- ``xor``: x f32[4r,2] of 0/1, y i64[4r], y_f f32[4r,1]; option ``repeat=r``.
- ``adding`` (the adding problem): x f32[n,T,2] (channel 0 uniform in [0,1),
  channel 1 a marker with one 1 in each half), y f32[n,1] = sum of the two
  marked values, y_cls i64[n] = (sum > 1); options ``n=2000, T=20``.
- ``gaussian_mixture``: x f32[n,2], y i64[n] from k gaussians with centres on a
  circle of radius 2; options ``n=300, k=3, std=0.5``.
- ``first_token_repeats``: tokens i64[n,T] in [0, vocab), y i64[n] = does
  tokens[0] appear again in tokens[1:] (balanced); options ``n=2000, T=10, vocab=8``.
- ``skipgram``: center i64[n], context i64[n], negatives i64[n,negatives]: skip-gram
  pairs from a synthetic topic corpus (word w in topic w*topics//vocab), negatives
  from unigram^0.75; options ``n=20000, vocab=50, topics=5, window=2, negatives=5,
  length=8, noise=0.1``.
- ``shapes``, ``reverse``, ``periodic``, ``cbow``: see ``generated.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dlc.grammar.errors import DlcError


@dataclass
class Dataset:
    """Arrays sharing their leading axis N; ``n_classes`` when there is a class label."""

    arrays: dict[str, np.ndarray]
    n_classes: int | None
    description: str

    def __len__(self) -> int:
        return length_of(self.arrays)


# -- option checking ------------------------------------------------------
def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DlcError("E0201", f"dataset option `{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise DlcError("E0201", f"dataset option `{name}` must be a positive number, got {value!r}")
    return float(value)


def length_of(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


# -- built-ins ------------------------------------------------------------
_SHIPPED = Path(__file__).with_name("builtin_data")


def shipped_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data f64[N, F], target i64[N]) of a data set shipped with dlc: the UCI digits
    and iris arrays exactly as scikit-learn's ``load_digits``/``load_iris`` return
    them (written once from scikit-learn; ``tests/test_data.py`` compares them), so
    the core install needs no scikit-learn."""
    with np.load(_SHIPPED / f"{name}.npz", allow_pickle=False) as z:
        return z["data"].astype(np.float64), z["target"].astype(np.int64)


def _digits(seed: int) -> Dataset:
    data, target = shipped_arrays("digits")
    x = (data / 16.0).astype(np.float32)
    return Dataset({"x": x, "y": target}, 10, "UCI digits (as in scikit-learn): 8x8 images, 10 classes")


def _iris(seed: int) -> Dataset:
    data, target = shipped_arrays("iris")
    x = (data - data.mean(axis=0)) / data.std(axis=0)
    return Dataset({"x": x.astype(np.float32), "y": target}, 3, "iris: 4 features, 3 classes")


def _karate(seed: int) -> Dataset:
    import networkx as nx

    g = nx.karate_club_graph()
    nodes = sorted(g.nodes)
    n = len(nodes)
    a = nx.to_numpy_array(g, nodelist=nodes, weight=None) + np.eye(n)  # unweighted, self loops
    d = 1.0 / np.sqrt(a.sum(axis=1))
    adj = d[:, None] * a * d[None, :]
    y = np.array([0 if g.nodes[v]["club"] == "Mr. Hi" else 1 for v in nodes], dtype=np.int64)
    # Semi-supervised split: the two leaders plus one seeded member of each club.
    rng = np.random.default_rng(seed)
    train = np.zeros(n, dtype=bool)
    train[[0, n - 1]] = True
    for c in (0, 1):
        pool = np.flatnonzero((y == c) & ~train)
        train[rng.choice(pool)] = True
    arrays = {"x": np.eye(n, dtype=np.float32)[None], "adj": adj.astype(np.float32)[None], "y": y[None],
              "train_mask": train[None], "test_mask": ~train[None]}
    return Dataset(arrays, 2, "karate club graph: one example of 34 nodes, 2 clubs; use the masks")


def _xor(seed: int, repeat: int = 1) -> Dataset:
    r = positive_int("repeat", repeat)
    x = np.tile(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32), (r, 1))
    y = (x[:, 0] != x[:, 1]).astype(np.int64)
    return Dataset({"x": x, "y": y, "y_f": y.astype(np.float32)[:, None]}, 2, "xor truth table")


def _adding(seed: int, n: int = 2000, T: int = 20) -> Dataset:
    n, T = positive_int("n", n), positive_int("T", T, minimum=2)
    rng = np.random.default_rng(seed)
    values = rng.random((n, T))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    marker = np.zeros((n, T))
    rows = np.arange(n)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    x = np.stack([values, marker], axis=-1).astype(np.float32)
    # The target is summed from the f32 values the model sees, not the f64 draws.
    total = x[rows, first, 0].astype(np.float64) + x[rows, second, 0]
    arrays = {"x": x, "y": total.astype(np.float32)[:, None], "y_cls": (total > 1.0).astype(np.int64)}
    return Dataset(arrays, 2, f"adding problem: {n} sequences of length {T}")


def _gaussian_mixture(seed: int, n: int = 300, k: int = 3, std: float = 0.5) -> Dataset:
    n, k, std = positive_int("n", n), positive_int("k", k), positive_float("std", std)
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(k) / k
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = rng.permutation(np.arange(n) % k)
    x = centres[y] + std * rng.standard_normal((n, 2))
    return Dataset({"x": x.astype(np.float32), "y": y.astype(np.int64)}, k, f"{k} gaussians in 2-D")


def _first_token_repeats(seed: int, n: int = 2000, T: int = 10, vocab: int = 8) -> Dataset:
    """Does the first token appear again later in the sequence?  Balanced labels by
    construction: positions 1..T-1 are drawn uniformly from the other vocab - 1 tokens,
    then, for label 1, one seeded position among them is set to the first token."""
    n, T, vocab = positive_int("n", n), positive_int("T", T, minimum=2), positive_int("vocab", vocab, minimum=2)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, vocab, size=n)
    rest = rng.integers(0, vocab - 1, size=(n, T - 1))
    rest += rest >= first[:, None]  # skip the first token: it appears only where placed
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    where = rng.integers(0, T - 1, size=n)
    rows = np.flatnonzero(y)
    rest[rows, where[rows]] = first[rows]
    tokens = np.concatenate([first[:, None], rest], axis=1).astype(np.int64)
    return Dataset({"tokens": tokens, "y": y}, 2,
                   f"first token repeats: {n} sequences of {T} tokens from {vocab}")


def _skipgram(seed: int, n: int = 20000, vocab: int = 50, topics: int = 5, window: int = 2,
              negatives: int = 5, length: int = 8, noise: float = 0.1) -> Dataset:
    """Skip-gram pairs from a synthetic corpus with topic structure.  Word w belongs to
    topic w * topics // vocab.  Each sentence of ``length`` words picks a topic; each
    word is, with probability 1 - noise, drawn from that topic's words (Zipf weights
    1/(rank+1) within the topic), else uniformly from the vocabulary.  Every (centre,
    context) pair within ``window`` of each other in a sentence is a positive; n of
    them are kept in seeded order, each with ``negatives`` ids drawn from the corpus
    unigram distribution raised to 3/4."""
    n, vocab, topics = positive_int("n", n), positive_int("vocab", vocab, minimum=2), positive_int("topics", topics)
    window, k, length = positive_int("window", window), positive_int("negatives", negatives), positive_int("length", length, 2)
    if topics > vocab:
        raise DlcError("E0201", f"dataset option `topics` ({topics}) must be at most `vocab` ({vocab})")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not 0 <= noise <= 1:
        raise DlcError("E0201", f"dataset option `noise` must be a number in [0, 1], got {noise!r}")
    rng = np.random.default_rng(seed)
    topic_of = np.arange(vocab) * topics // vocab
    members = [np.flatnonzero(topic_of == t) for t in range(topics)]
    weights = [1.0 / np.arange(1, len(m) + 1) for m in members]
    weights = [w / w.sum() for w in weights]
    offsets = [d for d in range(-window, window + 1) if d != 0]
    pairs_per_sentence = sum(length - abs(d) for d in offsets if abs(d) < length)
    sentences = -(-n // pairs_per_sentence)
    topic = rng.integers(0, topics, size=sentences)
    corpus = np.empty((sentences, length), dtype=np.int64)
    for t in range(topics):
        rows = np.flatnonzero(topic == t)
        corpus[rows] = rng.choice(members[t], size=(len(rows), length), p=weights[t])
    noisy = rng.random(corpus.shape) < noise
    corpus[noisy] = rng.integers(0, vocab, size=int(noisy.sum()))
    centre, context = [], []
    for d in offsets:
        if abs(d) < length:
            lo, hi = max(0, -d), length - max(0, d)
            centre.append(corpus[:, lo:hi].ravel())
            context.append(corpus[:, lo + d:hi + d].ravel())
    centre, context = np.concatenate(centre), np.concatenate(context)
    keep = rng.permutation(len(centre))[:n]
    unigram = np.bincount(corpus.ravel(), minlength=vocab) ** 0.75
    neg = rng.choice(vocab, size=(n, k), p=unigram / unigram.sum())
    arrays = {"center": centre[keep], "context": context[keep], "negatives": neg.astype(np.int64)}
    return Dataset(arrays, None, f"skip-gram pairs: {n} from a {vocab}-word corpus with {topics} topics")


BUILTINS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "iris": _iris,
    "karate": _karate,
    "xor": _xor,
    "adding": _adding,
    "gaussian_mixture": _gaussian_mixture,
    "first_token_repeats": _first_token_repeats,
    "skipgram": _skipgram,
}  # generated.py adds the seed families' sets


# -- declared schemas -----------------------------------------------------
# What each built-in returns, as {array: (dtype, shape)} with None for the example
# axis, computed from the options alone: `dlc check` fits the data to the model's
# inputs without generating anything.  tests/test_data.py checks every schema
# against the arrays the built-in really returns.
Schema = dict[str, tuple[str, tuple]]

SCHEMAS: dict[str, Callable[..., Schema]] = {
    "digits": lambda: {"x": ("f32", (None, 64)), "y": ("i64", (None,))},
    "iris": lambda: {"x": ("f32", (None, 4)), "y": ("i64", (None,))},
    "karate": lambda: {"x": ("f32", (None, 34, 34)), "adj": ("f32", (None, 34, 34)), "y": ("i64", (None, 34)),
                       "train_mask": ("bool", (None, 34)), "test_mask": ("bool", (None, 34))},
    "xor": lambda repeat=1: {"x": ("f32", (None, 2)), "y": ("i64", (None,)), "y_f": ("f32", (None, 1))},
    "adding": lambda n=2000, T=20: {"x": ("f32", (None, T, 2)), "y": ("f32", (None, 1)), "y_cls": ("i64", (None,))},
    "gaussian_mixture": lambda n=300, k=3, std=0.5: {"x": ("f32", (None, 2)), "y": ("i64", (None,))},
    "first_token_repeats": lambda n=2000, T=10, vocab=8: {"tokens": ("i64", (None, T)), "y": ("i64", (None,))},
    "skipgram": lambda n=20000, vocab=50, topics=5, window=2, negatives=5, length=8, noise=0.1: {
        "center": ("i64", (None,)), "context": ("i64", (None,)), "negatives": ("i64", (None, negatives))},
}


# -- user files -----------------------------------------------------------

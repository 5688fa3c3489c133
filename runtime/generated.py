"""Generated data sets for the seed families' specs (added to ``datasets.py``'s
BUILTINS on import; ``data.py`` imports this module).  Every one is a pure function of its seed and options: nothing is
downloaded, and the same call gives the same arrays.

- ``shapes``: segmentation.  x f32[n, 1, height, width]: one to three filled
  rectangles and discs (brightness 0.6–1.0) on a dark noisy background;
  y i64[n, height, width] = 1 on the shapes, 0 elsewhere.  Options
  ``n=400, height=16, width=16``.
- ``reverse``: sequence to sequence.  src i64[n, T] tokens in [1, vocab);
  tgt i64[n, T] = src reversed; tgt_in i64[n, T] = tgt shifted right behind
  the start token 0 (teacher forcing).  Options ``n=2000, T=6, vocab=8``.
- ``periodic``: masked language modelling.  tokens i64[n, T]: each sequence
  repeats a seeded pattern of ``period`` tokens from [2, vocab); masked
  i64[n, T] = tokens with a seeded 20% of positions (at least one) set to the
  mask token 1; is_masked f32[n, T] marks them.  Options ``n=2000, T=12,
  vocab=12, period=3``.
- ``padded_repeats``: does the first token appear again among the real ones?
  tokens i64[n, T] in [1, vocab) padded with 0 past lengths i64[n] (3..T),
  y i64[n] balanced.  Options ``n=3000, T=10, vocab=8``.
- ``cbow``: continuous bag of words.  context i64[n, 2*window], center i64[n],
  topic i64[n]: windows of a synthetic corpus where word w is in topic
  w * topics // vocab and each sentence keeps to one topic but for ``noise``
  random words.  Options ``n=6000, vocab=40, topics=4, window=2, noise=0.1``.
"""
from __future__ import annotations

import numpy as np

from dlc.grammar.errors import DlcError

from .datasets import BUILTINS, SCHEMAS, Dataset, positive_int


def _unit(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
        raise DlcError("E0201", f"dataset option `{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def shapes(seed: int, n: int = 400, height: int = 16, width: int = 16) -> Dataset:
    n, h, w = positive_int("n", n), positive_int("height", height, 4), positive_int("width", width, 4)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    x = rng.normal(0.1, 0.1, size=(n, 1, h, w))
    y = np.zeros((n, h, w), dtype=np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            size = rng.uniform(0.12, 0.3) * min(h, w)
            if rng.random() < 0.5:  # a disc
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= size ** 2
            else:  # a rectangle
                inside = (np.abs(rows - cy) <= size) & (np.abs(cols - cx) <= size * rng.uniform(0.5, 1.5))
            x[i, 0][inside] = rng.uniform(0.6, 1.0) + rng.normal(0, 0.1, size=int(inside.sum()))
            y[i][inside] = 1
    return Dataset({"x": x.astype(np.float32), "y": y}, 2, f"shapes: {n} images of {h}x{w} with masks")


def reverse(seed: int, n: int = 2000, T: int = 6, vocab: int = 8) -> Dataset:
    n, T, vocab = positive_int("n", n), positive_int("T", T, 2), positive_int("vocab", vocab, 3)
    rng = np.random.default_rng(seed)
    src = rng.integers(1, vocab, size=(n, T)).astype(np.int64)
    tgt = src[:, ::-1].copy()
    tgt_in = np.concatenate([np.zeros((n, 1), np.int64), tgt[:, :-1]], axis=1)
    return Dataset({"src": src, "tgt": tgt, "tgt_in": tgt_in}, vocab,
                   f"reverse: {n} sequences of {T} tokens from [1, {vocab})")


def periodic(seed: int, n: int = 2000, T: int = 12, vocab: int = 12, period: int = 3) -> Dataset:
    n, T, vocab = positive_int("n", n), positive_int("T", T, 2), positive_int("vocab", vocab, 3)
    period = positive_int("period", period)
    rng = np.random.default_rng(seed)
    pattern = rng.integers(2, vocab, size=(n, period))
    tokens = pattern[:, np.arange(T) % period].astype(np.int64)
    is_masked = rng.random((n, T)) < 0.2
    is_masked[np.arange(n), rng.integers(0, T, size=n)] = True
    masked = np.where(is_masked, 1, tokens).astype(np.int64)
    return Dataset({"tokens": tokens, "masked": masked, "is_masked": is_masked.astype(np.float32)}, vocab,
                   f"periodic: {n} sequences of {T} tokens repeating {period}-token patterns, 20% masked")


def cbow(seed: int, n: int = 6000, vocab: int = 40, topics: int = 4, window: int = 2, noise: float = 0.1) -> Dataset:
    n, vocab, topics = positive_int("n", n), positive_int("vocab", vocab, 2), positive_int("topics", topics)
    window, noise = positive_int("window", window), _unit("noise", noise)
    if topics > vocab:
        raise DlcError("E0201", f"dataset option `topics` ({topics}) must be at most `vocab` ({vocab})")
    rng = np.random.default_rng(seed)
    topic_of = np.arange(vocab) * topics // vocab
    members = [np.flatnonzero(topic_of == t) for t in range(topics)]
    length = 2 * window + 1
    topic = rng.integers(0, topics, size=n)
    words = np.empty((n, length), dtype=np.int64)
    for t in range(topics):
        rows = np.flatnonzero(topic == t)
        words[rows] = rng.choice(members[t], size=(len(rows), length))
    noisy = rng.random(words.shape) < noise
    words[noisy] = rng.integers(0, vocab, size=int(noisy.sum()))
    context = np.concatenate([words[:, :window], words[:, window + 1:]], axis=1)
    return Dataset({"context": context, "center": words[:, window], "topic": topic.astype(np.int64)}, vocab,
                   f"cbow: {n} windows of {2 * window} context words from a {vocab}-word corpus, {topics} topics")


def padded_repeats(seed: int, n: int = 3000, T: int = 10, vocab: int = 8) -> Dataset:
    n, T, vocab = positive_int("n", n), positive_int("T", T, 3), positive_int("vocab", vocab, 3)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, size=n)
    first = rng.integers(1, vocab, size=n)
    rest = rng.integers(1, vocab - 1, size=(n, T - 1))
    rest += rest >= first[:, None]  # never the first token, unless placed below
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    where = (rng.random(n) * (lengths - 1)).astype(np.int64)  # a real position after the first
    rows = np.flatnonzero(y)
    rest[rows, where[rows]] = first[rows]
    tokens = np.concatenate([first[:, None], rest], axis=1)
    tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0  # padding
    return Dataset({"tokens": tokens.astype(np.int64), "lengths": lengths.astype(np.int64), "y": y}, 2,
                   f"padded repeats: {n} sequences of 3..{T} tokens from [1, {vocab}), padded with 0")


BUILTINS.update(shapes=shapes, reverse=reverse, periodic=periodic, cbow=cbow, padded_repeats=padded_repeats)
# the arrays each returns, as `dlc check` reads them without generating the data (tests/test_data.py)
SCHEMAS.update(
    shapes=lambda n=400, height=16, width=16: {"x": ("f32", (None, 1, height, width)),
                                               "y": ("i64", (None, height, width))},
    reverse=lambda n=2000, T=6, vocab=8: {k: ("i64", (None, T)) for k in ("src", "tgt", "tgt_in")},
    periodic=lambda n=2000, T=12, vocab=12, period=3: {"tokens": ("i64", (None, T)), "masked": ("i64", (None, T)),
                                                       "is_masked": ("f32", (None, T))},
    cbow=lambda n=6000, vocab=40, topics=4, window=2, noise=0.1: {"context": ("i64", (None, 2 * window)),
                                                                  "center": ("i64", (None,)),
                                                                  "topic": ("i64", (None,))},
    padded_repeats=lambda n=3000, T=10, vocab=8: {"tokens": ("i64", (None, T)), "lengths": ("i64", (None,)),
                                                  "y": ("i64", (None,))})

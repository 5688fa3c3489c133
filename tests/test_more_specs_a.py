"""specs/gcn.dl and specs/vae.dl train to what their header comments promise, and one
exported ONNX training step of each matches the NumPy interpreter on real data."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.runtime.data import load_dataset, match_inputs, split
from step_parity import check_training_step

QUIET = {"progress": False, "echo": lambda s: None}


def test_gcn_classifies_the_unlabelled_karate_members():
    h = dlc.load("specs/gcn.dl", mode="train").train(**QUIET)
    assert h.test["train_acc"] == 1.0       # the 4 labelled nodes
    assert h.test["test_acc"] >= 0.85       # the 30 others (measured 29/30)
    assert h.epochs[-1]["val.loss"] < 0.1 * h.epochs[0]["val.loss"]


def test_gcn_loss_only_sees_the_labelled_nodes():
    m = dlc.load("specs/gcn.dl")
    feeds = match_inputs(load_dataset("karate").arrays, m.inputs)
    base = m.run(feeds)
    flipped = dict(feeds, y=np.where(feeds["train_mask"] > 0, feeds["y"], 1 - feeds["y"]))
    other = m.run(flipped)                  # test labels flipped: the loss cannot tell
    assert other["loss"] == pytest.approx(float(base["loss"]), rel=1e-6)
    assert other["test_acc"] == pytest.approx(1.0 - float(base["test_acc"]), abs=1e-6)


def _digits_test_split():
    parts = split(load_dataset("digits"), (0.7, 0.1, 0.2), seed=0)  # as the spec's data = digits(...)
    return parts["train"]["x"].astype(np.float64), parts["test"]["x"].astype(np.float64)


def test_vae_learns_and_beats_the_constant_mean_baseline():
    m = dlc.load("specs/vae.dl")
    h = m.train(**QUIET)
    first, last = h.epochs[0], h.epochs[-1]
    assert last["loss"] < 0.8 * first["loss"]                 # measured 33.4 -> 24.4
    train_x, test_x = _digits_test_split()
    p = np.clip(train_x.mean(axis=0), 1e-7, 1 - 1e-7)       # every pixel's training mean
    base_bce = float(-(test_x * np.log(p) + (1 - test_x) * np.log(1 - p)).sum(-1).mean())
    base_mse = float(((test_x - p) ** 2).sum(-1).mean())
    assert base_bce == pytest.approx(27.19, abs=0.01)
    assert h.test["recon"] <= 23.0                            # measured 20.9
    assert h.test["recon"] < base_bce - 4.0
    assert h.test["mse"] < 0.7 * base_mse                     # measured 2.3 vs 4.7
    assert 1.0 < h.test["kl"] < 10.0                          # the latent is used, not collapsed
    assert h.test["loss"] == pytest.approx(h.test["recon"] + h.test["kl"], rel=1e-5)
    # sample quality: prior samples through the decoder, classified by a ridge classifier of
    # the training digits (94% on the test split): every digit is generated, and a sample is
    # nearer to some real test digit than the per-pixel mean image manages to be
    train = split(load_dataset("digits"), (0.7, 0.1, 0.2), seed=0)["train"]
    X = np.c_[train["x"], np.ones(len(train["x"]))].astype(np.float64)
    W = np.linalg.solve(X.T @ X + 0.1 * np.eye(X.shape[1]), X.T @ np.eye(10)[train["y"]])
    sample = m.run({"x": np.zeros((1000, 64), np.float32)}, outputs=["sample"], seed=5)["sample"]
    share = np.bincount((np.c_[sample, np.ones(len(sample))] @ W).argmax(axis=1), minlength=10) / len(sample)
    assert share.min() >= 0.03                                # measured: every digit 5-13%
    nearest = ((sample[:, None, :] - test_x[None]) ** 2).sum(-1).min(axis=1).mean()
    assert nearest < 0.8 * ((test_x - p) ** 2).sum(-1).min()  # measured 1.70 vs 2.67


def _real_feeds(path, m):
    if "gcn" in path:
        arrays = load_dataset("karate").arrays
    else:
        arrays = {"x": _digits_test_split()[1][:16].astype(np.float32)}
    return match_inputs(arrays, m.inputs)


@pytest.mark.parametrize("path", ["specs/gcn.dl", "specs/vae.dl"])
def test_training_step_matches_the_interpreter(path):
    m = dlc.load(path, mode="train")
    feeds = {**_real_feeds(path, m), "__rng": np.int64(7)}  # the same dropout masks / noise on both
    check_training_step(m, feeds, label=path)

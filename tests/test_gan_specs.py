"""The GAN family: wgan.dl (weight clipping, n_critic = 5), wgan_gp.dl (gradient
penalty through `grad`, second order), cgan.dl (conditional), gan.dl — trained to
measured floors on both backends; their exported training steps (every group)
match the NumPy interpreter after several steps; the critic stays in its clip box."""
from __future__ import annotations

import numpy as np
import pytest
from dlc.runtime.gradcheck import gradcheck
from step_parity import check_groups_after_k_steps

import dlc

QUIET = {"progress": False, "echo": lambda s: None}
BACKENDS = ["numpy", "onnxruntime"]


def modes(k: int, radius: float = 2.0) -> np.ndarray:
    """The centres of runtime/datasets.py's gaussian_mixture."""
    a = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def mode_stats(points: np.ndarray, k: int, std: float) -> tuple[float, int]:
    """(mean distance to the nearest mode / the data's own mean distance to its mode,
    modes covered).  A mode is covered when at least a quarter of its fair share
    (n / 4k) of the points lie within 3 std of it."""
    d = np.linalg.norm(points[:, None, :] - modes(k)[None], axis=2)
    near, dist = d.argmin(axis=1), d.min(axis=1)
    spread = std * np.sqrt(np.pi / 2)  # E|N(0, std^2 I_2)|: the data's own distance to its mode
    covered = sum(int(((near == j) & (dist < 3 * std)).sum() >= len(points) / (4 * k)) for j in range(k))
    return float(dist.mean() / spread), covered


def samples(m, n: int = 2000, **feeds) -> np.ndarray:
    x = np.zeros((n, 2), np.float32)  # the real-data input only sets the batch size here
    return m.run({"x": x, **feeds}, outputs=["fake"], seed=123)["fake"]


def test_the_floor_rejects_a_ring_through_the_modes():
    """Spreading mass along the circle is not learning the modes: the distance floor fails."""
    a = np.random.default_rng(0).uniform(0, 2 * np.pi, 2000)
    ring = 2.0 * np.stack([np.cos(a), np.sin(a)], axis=1)
    ratio, covered = mode_stats(ring, 8, 0.1)
    assert ratio > 3.0 and covered == 8


def _batches(m, n: int, seed: int = 0) -> list[dict]:
    from dlc.runtime.train_data import load_splits

    train = load_splits(m, m.train_spec())["train"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.choice(len(train["x"]), 16, replace=False)
        out.append({k: v[idx] for k, v in train.items() if k in m.inputs})
    return out


@pytest.mark.parametrize("spec", ["wgan", "wgan_gp", "cgan", "gan"])
def test_exported_training_steps_of_every_group_match_numpy_after_k_steps(spec):
    m = dlc.load(f"specs/{spec}.dl", mode="train")
    params = check_groups_after_k_steps(m, _batches(m, 6), rtol=2e-4, atol=2e-5)
    assert any(not np.allclose(params[k], m.params[k]) for k in params if k.startswith("D"))
    if spec == "wgan":
        assert max(np.abs(v).max() for k, v in params.items() if k.startswith("D_")) <= 0.1 + 1e-7


def test_wgan_gp_gradcheck_is_second_order():
    """The critic's loss contains grad(...): its gradient is a second derivative, checked
    against float64 finite differences for every parameter (what `dlc gradcheck` runs)."""
    lines = []
    worst = gradcheck(dlc.load("specs/wgan_gp.dl", mode="train"), echo=lines.append)
    assert "second order" in lines[0]
    assert len(worst) == 11 and max(worst.values()) < 1e-4, worst


def test_dlc_gradcheck_passes_on_wgan_gp():
    from click.testing import CliRunner

    from dlc.cli import main

    res = CliRunner().invoke(main, ["gradcheck", "specs/wgan_gp.dl"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("second order: `d_loss` contains grad(...)")
    assert "all 11 parameters within 0.0001" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_wgan_reaches_its_floor_and_keeps_the_critic_in_the_clip_box(backend):
    m = dlc.load("specs/wgan.dl")
    m.train(backend=backend, **QUIET)
    ratio, covered = mode_stats(samples(m), 8, 0.1)
    assert ratio <= 2.0 and covered >= 6, (ratio, covered)
    critic = {k: v for k, v in m.params.items() if k.startswith("D_")}
    assert len(critic) == 5 and max(np.abs(v).max() for v in critic.values()) <= 0.1 + 1e-7
    assert any(np.isclose(np.abs(v).max(), 0.1) for v in critic.values())  # the box is active


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_wgan_gp_reaches_its_floor(backend):
    m = dlc.load("specs/wgan_gp.dl")
    h = m.train(backend=backend, **QUIET)
    ratio, covered = mode_stats(samples(m), 8, 0.1)
    assert ratio <= 2.0 and covered >= 6, (ratio, covered)
    assert max(np.abs(v).max() for k, v in m.params.items() if k.startswith("D_")) > 0.1  # nothing clips
    assert h.epochs[-1]["val.gp"] < 0.5  # the penalty holds the critic's slope near 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_cgan_samples_of_class_k_lie_closest_to_mode_k(backend):
    m = dlc.load("specs/cgan.dl")
    m.train(backend=backend, **QUIET)
    y = np.repeat(np.arange(8), 250)
    fake = samples(m, len(y), y=y)
    d = np.linalg.norm(fake[:, None, :] - modes(8)[None], axis=2)
    assert (d.argmin(axis=1) == y).mean() >= 0.9
    assert d[np.arange(len(y)), y].mean() <= 2.0 * 0.1 * np.sqrt(np.pi / 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gan_covers_the_three_modes(backend):
    m = dlc.load("specs/gan.dl")
    before = {k: v.copy() for k, v in m.params.items()}
    m.train(backend=backend, **QUIET)
    assert all(not np.array_equal(before[k], m.params[k]) for k in m.params)  # both groups trained
    fake = samples(m)
    ratio, covered = mode_stats(fake, 3, 0.5)
    share = np.bincount(np.linalg.norm(fake[:, None] - modes(3)[None], axis=2).argmin(axis=1), minlength=3)
    assert covered == 3 and share.min() >= 0.2 * len(fake) and ratio <= 2.2, (ratio, covered, share)

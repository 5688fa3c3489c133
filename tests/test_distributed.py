"""Data-parallel training on Ray (runtime/distributed.py).

The fast tests check the arithmetic without Ray (workers as plain objects); the
slow ones start Ray on this machine (loopback only) once for the module, and
stop it by the handle they started."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.runtime.distributed import BatchRef, DistributedTrainer, GradientWorker, ModelSource, shard
from dlc.runtime.trainer import make_trainer, rng_key

K_STEPS = 4


def _source(m):
    return ModelSource(m.loaded, m.defn, dict(m.hyper), dict(m.inputs))


def _single_process(path, k=K_STEPS):
    m = dlc.load(path, mode="train")
    t = make_trainer(m)
    for i, (b, _) in enumerate(t.train_batches(0)):
        if i == k:
            break
        t(b)
    return m, t.params


def test_shards_cover_a_batch_in_order_with_sizes_within_one():
    idx = np.arange(10)
    parts = [shard(idx, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert np.array_equal(np.concatenate(parts), idx)
    assert len(shard(np.arange(1), 2, 3)) == 0  # more workers than rows: an empty shard


def test_shard_gradients_weighted_by_size_are_the_global_batch_gradient():
    """Three workers' gradients of a 64-row batch (shards of 22, 21, 21), averaged by shard
    size, equal the gradient of the whole batch (same rows, one process)."""
    m = dlc.load("specs/mlp.dl", mode="train")
    spec = m.train_spec()
    workers = [GradientWorker(_source(m), spec, rank=r, world=3, seed=spec.seed) for r in range(3)]
    batch = BatchRef(epoch=0, index=1)
    key = int(rng_key(spec.seed, 0, 0))
    parts = [w.grad(0, batch, key, m.params) for w in workers]
    assert [p["n"] for p in parts] == [22, 21, 21]
    rows = np.concatenate([w.rows(batch) for w in workers])
    t = make_trainer(m)
    whole = {k: v[rows] for k, v in t.splits["train"].items()}
    want = m.gradients(whole, loss="loss")
    for name, g in want.items():
        got = sum(p["n"] * p[f"grad/{name}"].astype(np.float64) for p in parts) / 64
        np.testing.assert_allclose(got, g, rtol=1e-5, atol=1e-7)


def test_workers_without_ray_is_a_coded_error_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from dlc.cli import main\n"
            "main(['train', 'specs/mlp.dl', '--workers', '2', '--epochs', '1'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "E0004" in r.stderr and "dlc[ray]" in r.stderr and "Traceback" not in r.stderr


def test_address_without_workers_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "dlc.cli", "train", "specs/mlp.dl", "--address", "auto"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 64 and "--address needs --workers" in r.stderr


# -- on Ray ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def _distributed(m, n, k=K_STEPS, **kw):
    d = DistributedTrainer(m, workers=n, timeout=300, **kw)
    try:
        for i, (b, _) in enumerate(d.train_batches(0)):
            if i == k:
                break
            d(b)
        return d.params
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["specs/mlp.dl", "specs/lstm.dl"])
def test_n_workers_take_the_single_process_step(ray_local, path):
    m, want = _single_process(path)
    for n in (1, 2, 3):
        got = _distributed(m, n, debug=True)
        for name in want:
            if n == 1:  # one worker: gradient + update is node for node the fused step
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{path} N=1 {name}")
            else:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{path} N={n} {name}")


@pytest.mark.slow
def test_one_worker_takes_the_single_process_step_with_batch_norm(ray_local):
    """cnn.dl normalises per shard with N > 1 (no synchronised batch norm); one worker is exact."""
    m, want = _single_process("specs/cnn.dl")
    got = _distributed(m, 1)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_step_retried(ray_local):
    m, want = _single_process("specs/mlp.dl", k=5)
    d = DistributedTrainer(m, workers=2, max_restarts=1, timeout=300)
    try:
        for i, (b, _) in enumerate(d.train_batches(0)):
            if i == 5:
                break
            if i == 2:
                os.kill(d.worker_pids()[1], signal.SIGKILL)
            d(b)
        for name in want:
            np.testing.assert_allclose(d.params[name], want[name], rtol=1e-4, atol=1e-5)
    finally:
        d.close()


@pytest.mark.slow
def test_a_killed_worker_without_restarts_is_a_coded_error_not_a_hang(ray_local):
    m = dlc.load("specs/mlp.dl", mode="train")
    d = DistributedTrainer(m, workers=2, max_restarts=0, timeout=120)
    try:
        batches = d.train_batches(0)
        d(next(batches)[0])
        before = d.params
        os.kill(d.worker_pids()[1], signal.SIGKILL)
        with pytest.raises(DlcError) as e:
            d(next(batches)[0])
        assert e.value.code == "E0404"
        for name, v in d.params.items():  # nothing of the failed step was committed
            np.testing.assert_array_equal(v, before[name])
    finally:
        d.close()


@pytest.mark.slow
def test_cli_workers_reach_the_single_process_accuracy_and_resume(tmp_path):
    """`dlc train --workers 2` (Ray started and stopped by dlc itself) gets the test accuracy of
    one process; a checkpointed run resumes and finishes."""
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "dlc.cli", "train", "specs/mlp.dl", "--epochs", "3", *args],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("test")][-1]
        return float(line.split("accuracy")[1].split()[0]), r.stdout

    single, _ = run()
    ckpt = tmp_path / "run"
    first, out = run("--workers", "2", "--checkpoint", str(ckpt), "--epochs", "2")
    assert "data-parallel on 2 Ray workers" in out
    resumed, out = run("--workers", "2", "--checkpoint", str(ckpt), "--resume")
    assert "resumed from" in out
    assert abs(resumed - single) <= 0.01

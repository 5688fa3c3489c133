"""Data-parallel training on Ray (runtime/distributed.py).

The fast tests check the arithmetic without Ray (workers as plain objects); the
slow ones start Ray on this machine (loopback only) once for the module, and
stop it by the handle they started."""
import glob
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

import dlc
from dlc.grammar.errors import DlcError
from dlc.compiler.training.stages import SUMMED, stage_plan
from dlc.runtime.dist_worker import BatchRef, GradientWorker, ModelSource, params_digest, shard
from dlc.runtime.distributed import DistributedTrainer, _weighted_mean
from dlc.runtime.runner import make_runner
from dlc.runtime.staged import StagedGrad, run_stages
from dlc.runtime.trainer import build_grad_graph, make_trainer, rng_key

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
    return m, {**t.params, **t.state}  # the state: batch norm's running statistics


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


# -- synchronised batch statistics (compiler/training/stages.py, runtime/staged.py) --------
def _grad_graph(path):
    m = dlc.load(path, mode="train")
    spec = m.train_spec()
    return m, spec, build_grad_graph(m, spec, spec.steps[0])[0]


@pytest.mark.parametrize("path", ["specs/mlp.dl", "specs/lstm.dl", "specs/transformer.dl"])
def test_a_graph_without_cross_batch_dependencies_runs_in_one_stage(path):
    """Per-example-mean losses reduce over the batch only for the loss and its 1 / count:
    the size-weighted mean of the shards is exact, nothing is split."""
    assert stage_plan(_grad_graph(path)[2]) is None


def test_batch_norm_splits_the_gradient_graph_at_its_batch_sums():
    plan = stage_plan(_grad_graph("specs/cnn.dl")[2])
    # forward: mean and variance of each of the two batch norms, then the loss; backward: the
    # two sums of each batch norm's gradient, together; then the rest
    assert len(plan.graphs) == 8
    assert [len(r) for r in plan.reduced[-3:]] == [2, 2, 0]
    first = plan.graphs[0]
    summed = [first[first.outputs[name].node].op for name in plan.reduced[0]]
    assert sorted(summed) == ["count", "count", "sum"]  # conv1's channel sums and its element counts
    assert plan.reduced[-1] == ()
    assert {k for k, kind in plan.outputs.items() if kind == SUMMED} == {k for k in plan.outputs
                                                                          if k.startswith("grad/")}
    for g in plan.graphs:
        g.verify()
        assert {"x", "y"} <= set(g.input_names())  # the dims stay bound by the data inputs


def _staged_workers(m, spec, world, backend="numpy"):
    return [GradientWorker(_source(m), spec, rank=r, world=world, seed=spec.seed, backend=backend)
            for r in range(world)]


def _run_staged(workers, batch, key, values):
    def call(k, new, sums):  # each stage is sent only the previous stage's sums, as the driver does
        return [{n: v for n, v in w.stage(0, k, batch, key, values, new).items() if n != "n"} for w in workers]

    plan = workers[0].runners[0].plan
    return run_stages(call, len(plan.graphs), plan.outputs)


@pytest.mark.parametrize("path,world,backend", [("specs/cnn.dl", 2, "numpy"), ("specs/cnn.dl", 3, "numpy"),
                                               ("specs/cnn.dl", 2, "onnxruntime"), ("specs/tiny_bert.dl", 2, "numpy")])
def test_synchronised_shards_give_the_global_batch_gradients_and_running_statistics(path, world, backend):
    """cnn.dl's stages on 2 or 3 shards of a 64-row batch, the partial sums added up between
    stages: gradients, loss, accuracy and the batch norms' next running statistics are the
    whole batch's (one process, same rows).  tiny_bert.dl's loss is a masked mean (its 1 / mask
    count is not a shard's 1 / size): two stages, exact too."""
    m, spec, graph = _grad_graph(path)
    values = {**m.params, **m.state}
    workers = _staged_workers(m, spec, world, backend)
    batch, key = BatchRef(epoch=0, index=1), int(rng_key(spec.seed, 0, 0))
    got = _run_staged(workers, batch, key, values)
    rows = np.concatenate([w.rows(batch) for w in workers])
    whole = {k: v[rows] for k, v in workers[0].train.items()}
    want = make_runner(graph, backend)(whole, values, values)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_worker_that_lost_a_steps_kept_values_recomputes_them_from_the_sums():
    """A restarted worker asked for stage k (Ray's retry, with stage k-1's sums only) says it
    lost the step; sent every sum, it replays stages 0..k-1: the same outputs, bit for bit."""
    m, spec, _ = _grad_graph("specs/cnn.dl")
    values = {**m.params, **m.state}
    workers = _staged_workers(m, spec, 2)
    batch, key = BatchRef(epoch=0, index=0), int(rng_key(spec.seed, 0, 0))
    seen, outs = [], []

    def call(k, new, sums):
        seen.append((dict(new), dict(sums)))
        outs.append([w.stage(0, k, batch, key, values, new) for w in workers])
        return [{n: v for n, v in p.items() if n != "n"} for p in outs[-1]]

    plan = workers[0].runners[0].plan
    run_stages(call, len(plan.graphs), plan.outputs)
    last = len(plan.graphs) - 1
    want = outs[last][1]  # worker 1's last stage, its kept values at hand
    fresh = _staged_workers(m, spec, 2)[1]
    new, every = seen[-1]
    assert set(new) < set(every)  # the driver sends a stage only the previous stage's sums ...
    assert fresh.stage(0, last, batch, key, values, new) == {"n": 32, "lost": True}  # ... not enough to replay
    got = fresh.stage(0, last, batch, key, values, every)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_batch_reduction_that_is_not_a_sum_cannot_be_synchronised(tmp_path):
    """Batch norm after a max over the batch: the max of the shards is not a sum of theirs,
    so several workers are a coded error (E0201), not a silently different step."""
    spec_file = tmp_path / "maxbn.dl"
    spec_file.write_text(MAX_THEN_BATCH_NORM)
    m = dlc.load(spec_file, mode="train")
    spec = m.train_spec()
    GradientWorker(_source(m), spec, rank=0, world=1, seed=spec.seed)  # one worker: no split, fine
    with pytest.raises(DlcError) as e:
        GradientWorker(_source(m), spec, rank=0, world=2, seed=spec.seed)
    assert e.value.code == "E0201" and "reduce_max" in e.value.message
    ray = pytest.importorskip("ray")
    running = ray.is_initialized()  # (the slow tests' Ray may be up)
    with pytest.raises(DlcError) as e:  # the trainer says so before it starts or joins Ray
        DistributedTrainer(m, workers=2)
    assert e.value.code == "E0201" and ray.is_initialized() == running


def digits_train(model: str) -> str:
    """The train block the specs below share: the digits, SGD at 0.1, one epoch of 64-row batches."""
    return (f"train {model} {{\n    data      = digits(split = [0.7, 0.1, 0.2], seed = 0)\n"
            "    loss      = loss\n    optimizer = sgd(lr = 0.1)\n    batch     = 64\n    epochs    = 1\n}\n")


MAX_THEN_BATCH_NORM = """
model maxbn() {
    input x: f32[B, 64]
    input y: i64[B]
    param gamma: [64] = ones()
    param beta:  [64] = zeros()
    state mean:  [64] = zeros()
    state var:   [64] = ones()
    param W:     [64, 10] = glorot_uniform()
    h, next_mean, next_var = batch_norm(x - reduce_max(x, axes = 0), gamma, beta, mean, var)
    update mean = next_mean
    update var  = next_var
    output loss = cross_entropy(h @ W, y)
}

""" + digits_train("maxbn")


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


# -- what two shards may and may not be trusted with (a second review's probes) -----------
TINY = """
model tiny() {
    input x: f32[B, 64]
    input y: i64[B]
    param W: [64, 10] = glorot_uniform()
    %s
}

""" + digits_train("tiny")


def _tiny(tmp_path, body):
    spec_file = tmp_path / "tiny.dl"
    spec_file.write_text(TINY % body)
    return dlc.load(spec_file, mode="train")


def _two_workers_against_the_whole_batch(m, world=2):
    """(the driver's combination of ``world`` workers' outputs, the whole batch's in one process)."""
    spec = m.train_spec()
    values = {**m.params, **m.state}
    workers = _staged_workers(m, spec, world)
    batch, key = BatchRef(epoch=0, index=1), int(rng_key(spec.seed, 0, 0))
    if isinstance(workers[0].runners[0], StagedGrad):
        got = _run_staged(workers, batch, key, values)
    else:
        got = _weighted_mean([w.grad(0, batch, key, values) for w in workers])
    rows = np.concatenate([w.rows(batch) for w in workers])
    whole = {k: v[rows] for k, v in workers[0].train.items()}
    graph = build_grad_graph(m, spec, spec.steps[0])[0]
    return got, make_runner(graph, "numpy")(whole, values, values)


@pytest.mark.parametrize("body,op", [
    ("output loss = cross_entropy(softmax(x @ W, axis = 0), y)", "softmax"),  # normalised over the batch
    ("h = x @ W\n    output loss = cross_entropy(h @ transpose(h) @ h, y)", "matmul"),  # in-batch similarity [B, B]
    ("h = x @ W\n    output loss = cross_entropy(h[1:] - h[:B-1], y[1:])", "slice"),  # neighbouring examples
])
def test_an_op_that_mixes_the_examples_of_a_batch_cannot_be_split(tmp_path, body, op):
    """Each worker would mix only its own shard's examples: a coded error naming the op and its
    source line (and only with several workers), not a silently different gradient."""
    m = _tiny(tmp_path, body)
    spec = m.train_spec()
    GradientWorker(_source(m), spec, rank=0, world=1, seed=spec.seed)  # one process: fine
    with pytest.raises(DlcError) as e:
        GradientWorker(_source(m), spec, rank=0, world=2, seed=spec.seed)
    assert e.value.code == "E0201" and f"`{op}` mixes the examples" in e.value.message
    assert e.value.loc is not None and e.value.loc.line == 6 + body.count("\n")


@pytest.mark.parametrize("body", [
    'output loss = cross_entropy(x @ W, y, reduction = "sum")',
    'output loss = cross_entropy(x @ W, y) + 0.01 * cross_entropy(x @ W, y, reduction = "sum")',
])
def test_a_sum_loss_is_summed_over_the_workers_not_averaged(tmp_path, body):
    """A sum over the batch is not a per-example mean: the shards' size-weighted mean would be
    1/N of it.  Such a graph runs as a plan whose partial outputs are summed (a mixed loss's
    counts are global): loss and gradients are the whole batch's."""
    got, want = _two_workers_against_the_whole_batch(_tiny(tmp_path, body))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_metric_that_is_not_a_mean_is_computed_from_the_global_sums(tmp_path):
    """The squared mean label as a metric: the shards' size-weighted mean of their squares is not
    the square of the global mean, so the step is planned (the means' sums crossing the
    workers) and the metric is the whole batch's."""
    body = "output loss = cross_entropy(x @ W, y)\n    output spread = mean(cast(y, f32)) * mean(cast(y, f32))"
    spec = (TINY % body) \
        .replace("loss      = loss", "loss      = loss\n    metrics   = [spread]")
    (tmp_path / "tiny.dl").write_text(spec)
    got, want = _two_workers_against_the_whole_batch(dlc.load(tmp_path / "tiny.dl", mode="train"))
    assert "metric/spread" in want
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


MIXING_CELL = """
layer cell(x: f32[B, I], h: f32[B, H]) {
    param Wx: [I, H] = glorot_uniform()
    param Wh: [H, H] = orthogonal()
    return tanh(softmax(x @ Wx, axis = AXIS) + h @ Wh)
}

model s() {
    input xs: f32[B, T, 2]
    input y:  i64[B]
    param W: [8, 2] = glorot_uniform()
    hs, h_last = scan cell over xs axis 1 init (zeros([B, 8]))
    output loss = cross_entropy(h_last @ W, y)
}

train s {
    data      = adding(n = 300, T = 5, seed = 0)
    inputs    = map(xs = x, y = y_cls)
    loss      = loss
    optimizer = sgd(lr = 0.1)
    batch     = 64
    epochs    = 1
}
"""


def test_a_scan_whose_cell_mixes_the_examples_cannot_be_split(tmp_path):
    """The scan's body is looked into: a cell normalising over the batch axis is E0201 at the
    scan's line; over its features, the scan keeps the examples apart (one stage)."""
    spec_file = tmp_path / "s.dl"
    spec_file.write_text(MIXING_CELL.replace("AXIS", "-1"))
    m = dlc.load(spec_file, mode="train")
    assert stage_plan(build_grad_graph(m, m.train_spec(), m.train_spec().steps[0])[0]) is None
    spec_file.write_text(MIXING_CELL.replace("AXIS", "0"))
    m = dlc.load(spec_file, mode="train")
    with pytest.raises(DlcError) as e:
        GradientWorker(_source(m), m.train_spec(), rank=0, world=2, seed=0)
    assert e.value.code == "E0201" and "`scan` mixes the examples" in e.value.message and e.value.loc.line == 12


def test_every_spec_that_trains_plans_as_before():
    """The whitelist of row-wise ops keeps every spec's plan: batch norm (cnn, resnet) and masked
    means (gcn, tiny_bert) are synchronised, everything else is one stage."""
    staged = {"cnn": 8, "resnet": 26, "gcn": 2, "tiny_bert": 2}
    for path in sorted(glob.glob("specs/*.dl")):
        m = dlc.load(path, mode="train")
        spec = m.train_spec()
        for step in spec.steps:
            plan = stage_plan(build_grad_graph(m, spec, step)[0])
            want = staged.get(os.path.basename(path)[:-3])
            assert (plan and len(plan.graphs)) == want, f"{path} {step.name}"


DEEP = """
layer step(x: f32[B, D]) {
    param a: [D] = ones()
    return x + a * x
}

model deep() {
    input x: f32[B, 64]
    input y: i64[B]
    param gamma: [64] = ones()
    param beta:  [64] = zeros()
    state mean:  [64] = zeros()
    state var:   [64] = ones()
    param W:     [64, 10] = glorot_uniform()
    h, next_mean, next_var = batch_norm(x, gamma, beta, mean, var)
    update mean = next_mean
    update var  = next_var
    output loss = cross_entropy((repeat %d step(h)) @ W, y)
}

""" + digits_train("deep")


def test_batch_sums_are_pushed_through_shared_terms_once(tmp_path):
    """Batch norm's gradient summed through ``x + a·x`` twenty times over: every term is shared
    by two paths, and a rewrite that follows paths builds 2^20 sums.  Memoised it stays the size
    of the graph, and the synchronised step is still the whole batch's; 600 links do not reach
    Python's recursion limit."""
    spec_file = tmp_path / "deep.dl"
    spec_file.write_text(DEEP % 20)
    m = dlc.load(spec_file, mode="train")
    graph = build_grad_graph(m, m.train_spec(), m.train_spec().steps[0])[0]
    plan = stage_plan(graph)
    assert sum(len(g) for g in plan.graphs) < 2 * len(graph)
    got, want = _two_workers_against_the_whole_batch(m)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    spec_file.write_text(DEEP % 600)
    m = dlc.load(spec_file, mode="train")
    assert len(stage_plan(build_grad_graph(m, m.train_spec(), m.train_spec().steps[0])[0]).graphs) == 4


def test_a_worker_restarted_between_stages_hashes_the_values_it_fetched():
    """Debug mode: a restarted worker asked for a later stage gets the parameters through the
    object store (a callable), not in stage 0's call; its hash is theirs, not empty (a false
    E0404 at the end of the epoch)."""
    m, spec, _ = _grad_graph("specs/cnn.dl")
    values = {**m.params, **m.state}
    worker = GradientWorker(_source(m), spec, rank=1, world=2, seed=spec.seed, debug=True)
    plan = worker.runners[0].plan
    batch, key = BatchRef(epoch=0, index=0), int(rng_key(spec.seed, 0, 0))
    sums = {}  # the sums a replay needs: stage 0..k-1 of two workers
    twin = GradientWorker(_source(m), spec, rank=0, world=2, seed=spec.seed)
    for k in range(len(plan.graphs) - 1):
        parts = [w.stage(0, k, batch, key, values if k == 0 else (lambda: values), sums) for w in (twin, worker)]
        sums.update({n: parts[0][n] + parts[1][n] for n in plan.reduced[k]})
    restarted = GradientWorker(_source(m), spec, rank=1, world=2, seed=spec.seed, debug=True)
    restarted.stage(0, len(plan.graphs) - 1, batch, key, lambda: values, sums)
    assert restarted.digest() == params_digest(values) == worker.digest()


class _ClockedRay:
    """A stand-in for ``ray`` whose ``get`` takes one second of a fake clock per call and times
    out when given less than that (the refs are the results themselves)."""

    class exceptions:  # noqa: N801 - the attribute path of ray.exceptions
        class GetTimeoutError(TimeoutError):
            pass

        class RayActorError(Exception):
            pass

        WorkerCrashedError = RayTaskError = RayActorError

    def __init__(self):
        self.now, self.timeouts = 0.0, []

    def get(self, refs, timeout):
        self.timeouts.append(timeout)
        if timeout < 1.0:
            raise self.exceptions.GetTimeoutError()
        self.now += 1.0
        return refs


class _Local:
    """A worker's methods called in place (``w.stage.remote(...)`` → ``w.stage(...)``)."""

    def __init__(self, worker):
        self.stage = type("M", (), {"remote": staticmethod(worker.stage)})


def test_the_timeout_bounds_a_whole_staged_step_not_each_stage(monkeypatch):
    """cnn's 8 stages, each taking 1 s, with a 2.5 s timeout: the step fails with E0404 at the
    third stage (not 8 s later), each call given only the step's remaining time."""
    m, spec, _ = _grad_graph("specs/cnn.dl")
    ray = _ClockedRay()
    monkeypatch.setattr("dlc.runtime.distributed.time", types.SimpleNamespace(monotonic=lambda: ray.now))
    workers = _staged_workers(m, spec, 2)
    plan = workers[0].runners[0].plan
    d = DistributedTrainer.__new__(DistributedTrainer)  # the driver's step alone: no Ray, no actors
    d.ray, d.timeout, d.workers = ray, 2.5, [_Local(w) for w in workers]
    staged = (len(plan.graphs), dict(plan.outputs))
    with pytest.raises(DlcError) as e:
        d._staged_grads(0, staged, BatchRef(0, 0), int(rng_key(spec.seed, 0, 0)), {**m.params, **m.state},
                        deadline=ray.now + d.timeout)
    assert e.value.code == "E0404"
    assert ray.timeouts == [2.5, 1.5, 0.5]


def test_a_staged_step_with_an_empty_shard_leaves_it_out_after_stage_0(monkeypatch, tmp_path):
    """A 2-row batch on 3 workers: the third shard is empty, answers ``n`` = 0 in stage 0 (its
    hash taken) and is not called again; the other two give the whole batch's step."""
    spec_file = tmp_path / "deep.dl"
    spec_file.write_text((DEEP % 1).replace("batch     = 64", "batch     = 2"))
    m = dlc.load(spec_file, mode="train")
    spec = m.train_spec()
    values = {**m.params, **m.state}
    workers = _staged_workers(m, spec, 3)
    calls = []

    def counted(r, w):
        def stage(*args):
            calls.append((r, args[1]))
            return w.stage(*args)
        return type("W", (), {"stage": type("M", (), {"remote": staticmethod(stage)})})

    ray = _ClockedRay()
    monkeypatch.setattr("dlc.runtime.distributed.time", types.SimpleNamespace(monotonic=lambda: ray.now))
    d = DistributedTrainer.__new__(DistributedTrainer)
    d.ray, d.timeout, d.workers = ray, 1e9, [counted(r, w) for r, w in enumerate(workers)]
    plan = workers[0].runners[0].plan
    batch, key = BatchRef(epoch=0, index=0), int(rng_key(spec.seed, 0, 0))
    assert [len(w.rows(batch)) for w in workers] == [1, 1, 0]
    got = d._staged_grads(0, (len(plan.graphs), dict(plan.outputs)), batch, key, values, deadline=1e9)
    assert [k for r, k in calls if r == 2] == [0]
    assert sorted(k for r, k in calls if r == 0) == list(range(len(plan.graphs)))
    rows = np.concatenate([w.rows(batch) for w in workers])
    whole = {k: v[rows] for k, v in workers[0].train.items()}
    want = make_runner(build_grad_graph(m, spec, spec.steps[0])[0], "numpy")(whole, values, values)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


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
        return {**d.params, **d.state}
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["specs/mlp.dl", "specs/lstm.dl", "specs/cnn.dl"])
def test_n_workers_take_the_single_process_step(ray_local, path):
    """Parameters (and cnn's batch-norm running statistics, synchronised) after 4 steps."""
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
@pytest.mark.parametrize("backend", ["onnxruntime"])
def test_synchronised_batch_norm_on_onnxruntime_workers(ray_local, backend):
    """The stage graphs exported to onnxruntime: two workers take the single-process step, with
    the parameters the driver sent (the debug-mode hash, taken in the first stage)."""
    m, want = _single_process("specs/cnn.dl", k=2)
    d = DistributedTrainer(m, workers=2, timeout=300, backend=backend, debug=True)
    try:
        batches = d.train_batches(0)
        for _ in range(2):
            d(next(batches)[0])
        d.check_consistent(d._sent)
        got = {**d.params, **d.state}
    finally:
        d.close()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_a_worker_killed_between_two_stages_is_restarted_and_replays_them(ray_local, monkeypatch):
    """SIGKILL worker 1 after stage 4 of the second step: Ray restarts it and retries its
    stage-5 call, which replays stages 0..4 from the sums; the run ends as one process's."""
    m, want = _single_process("specs/cnn.dl", k=3)
    d = DistributedTrainer(m, workers=2, max_restarts=1, timeout=300)
    victim, calls = d.worker_pids()[1], []

    def run_stages_killing(call, n_stages, kinds):
        def killing(k, new, sums):
            calls.append(k)
            if len(calls) == n_stages + 5:  # the second step's stage 5
                os.kill(victim, signal.SIGKILL)
            return call(k, new, sums)
        return run_stages(killing, n_stages, kinds)

    monkeypatch.setattr("dlc.runtime.distributed.run_stages", run_stages_killing)
    try:
        for i, (b, _) in enumerate(d.train_batches(0)):
            if i == 3:
                break
            d(b)
        assert victim not in d.worker_pids()  # it was restarted
        got = {**d.params, **d.state}
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    finally:
        d.close()


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
        got = {**d.params, **d.state}
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
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

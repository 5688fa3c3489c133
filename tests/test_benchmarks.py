"""The benchmark scripts keep running (slow tier: they time things)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_bench_quick_prints_its_tables(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench

    bench.main(["--quick", "--only", "mlp", "--no-torch", "--profile"])
    out = capsys.readouterr().out
    assert "| mlp |" in out and "Compile time and memory" in out and "Profile: mlp" in out


def test_workload_specs_compile_and_their_batches_fit():
    sys.path.insert(0, str(BENCH))
    try:
        import dlc
        from workloads import WORKLOADS
    finally:
        sys.path.remove(str(BENCH))
    for w in WORKLOADS:
        m = dlc.load(w.spec)
        batch = w.batch(0)
        assert set(batch) == set(m.inputs), w.name
        for k, t in m.inputs.items():
            assert batch[k].ndim == t.rank, (w.name, k)


@pytest.mark.slow
def test_gemm_layouts_prints_its_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gemm_layouts

    gemm_layouts.main(["--only", "mlp", "--rounds", "1", "--burst", "0.001"])
    out = capsys.readouterr().out
    assert "| mlp | x@W1 64x784 @ 784x512 | views a@b" in out and "bias grad" in out


@pytest.mark.slow
def test_ab_prints_the_ratio_of_one_change(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import ab

    ab.main(["mlp", "--drop-pass", "fuse_elementwise", "--rounds", "2", "--burst", "1"])
    out = capsys.readouterr().out
    assert out.startswith("mlp, pass fuse_elementwise: with ") and "with / without" in out
    with pytest.raises(SystemExit):
        ab.main(["mlp", "--drop-pass", "no_such_pass"])

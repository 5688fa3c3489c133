"""Fuzzing in CI: grammar-generated programs, mutated specs and random well-typed
graphs.

- Programs of the grammar (hypothesis ``from_lark``, and a seeded random walk for
  volume) through the whole compiler: only DlcError/DlcErrors may come out, and
  every error's caret line is the line the lexer counted.
- Random well-typed graphs (tests/fuzz_graphs.py): NumPy against onnxruntime
  (dlc's optimizing pipeline and onnxruntime's optimisations each on and off), and
  symbolic gradients against float64 central differences.

The fast tier runs a few hundred cases; the slow tier (``pytest -m slow``) runs
5,000 programs and a few hundred graphs; ``DLC_FUZZ_LONG=10`` multiplies every
count (a long local run).  Each failure a run finds is kept, shrunk, in
REGRESSIONS below.
"""
from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import dlc
from dlc.compiler.onnx_export import export_graph
from dlc.compiler.passes.backprop import gradient_graph
from dlc.compiler.passes.pipeline import optimize
from dlc.grammar.errors import DlcError, DlcErrors
from dlc.runtime.interpreter import Plan
from dlc.runtime.ort import OrtSession

from fuzz_graphs import random_graph
from fuzz_programs import programs, random_program

LONG = int(os.environ.get("DLC_FUZZ_LONG", "1") or 1)

# Shrunk failures found by fuzzing, kept so they stay fixed.
REGRESSIONS = [
    "model m() {\x0c# c\n input x: f32[4]\n output y = foo(x) }",           # caret on the lexer's line
    "model m() {\u2028 input x: f32[4] }",                                      # U+2028 is no line break
    "model m() { input x: f32[4]\x0b output y = x }",
    "model m() { input x: f32[4]\n output y = -(x > 0.0) }",                   # unary minus on bool
    "model m() { input x: f32[4]\n input c: i64[]\n output l = nll(sum(x), c) }",  # nll on a scalar
    "model m() { input x: f32[" + "(" * 300 + "4" + ")" * 300 + "] }",          # nesting limit
    "model m() { input x: f32[B, 3]\n output y = squeeze(x) }",
]


def _check_render(e: DlcError, text: str) -> None:
    rendered = e.render()
    if e.loc is None or e.loc.source is None or e.loc.source.text != text:
        return
    lines = text.split("\n")
    if 0 < e.loc.line <= len(lines):
        want = lines[e.loc.line - 1].rstrip("\r")
        shown = re.search(rf"^{e.loc.line} \| (.*)$", rendered, re.M)
        assert shown is not None, rendered
        # the renderer shows the lexer's line (invisible breaks as spaces)
        assert len(shown.group(1)) == len(want.rstrip()) or shown.group(1).rstrip() == \
            "".join(" " if c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\r" else c for c in want).rstrip(), \
            (rendered, want)


def compile_everything(text: str) -> None:
    """Compile every model of ``text`` in both modes and check its train block; errors must be coded."""
    models = re.findall(r"^\s*model\s+([A-Za-z_]\w*)", text, re.M) or [None]
    for name in models[:2]:
        for mode in ("train", "eval"):
            try:
                m = dlc.compile(text, mode=mode, model=name)
                if mode == "train":
                    m.check_train()
            except DlcErrors as es:
                for e in es.errors:
                    _check_render(e, text)
            except DlcError as e:
                _check_render(e, text)
                if e.code in ("E0001", "E0003"):
                    return  # a syntax error is the same in both modes


@pytest.mark.parametrize("text", REGRESSIONS)
def test_regressions_found_by_fuzzing(text):
    compile_everything(text)


def _settings(n):
    return settings(max_examples=n * LONG, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck))


@_settings(40)
@given(programs())
def test_grammar_programs(text):
    compile_everything(text)


@pytest.mark.slow
@_settings(600)
@given(programs())
def test_grammar_programs_many(text):
    compile_everything(text)


def _walk(seed: int, count: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        text = random_program(rng)
        try:
            compile_everything(text)
        except AssertionError:
            raise
        except Exception as e:  # pragma: no cover - the message is the regression test to add
            raise AssertionError(f"program {i} of seed {seed} raised {type(e).__name__}: {e}\n{text!r}") from e


def test_random_walk_programs():
    _walk(1, 300 * LONG)


@pytest.mark.slow
def test_random_walk_programs_many():
    _walk(2, 5000 * LONG)


# -- random well-typed graphs -----------------------------------------------------------
def _parity_and_gradients(seed: int) -> None:
    rng = random.Random(seed)
    g, params = random_graph(rng, n_ops=rng.randint(3, 10))
    g.verify()
    want = Plan(g).run({}, params)["loss"]
    assert np.isfinite(want), seed
    for level in (1, 2):  # dlc's own optimizing pipeline, verified after every pass
        got = Plan(optimize(g, level, check=True)).run({}, params)["loss"]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"seed {seed}, dlc -O{level}")
    for level, proto in ((0, export_graph(g, params=params, name="fuzz")),
                         (1, export_graph(optimize(g, 1, "onnx"), params=params, name="fuzz"))):
        for ort_opt in (True, False):
            got = OrtSession(proto, optimize=ort_opt).run({})["loss"]
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9,
                                       err_msg=f"seed {seed}, dlc -O{level}, onnxruntime optimize={ort_opt}")
    gg, grads = gradient_graph(g, "loss", "train")
    gg.set_outputs(dict(grads))
    gg.verify()
    sym = Plan(gg).run({}, params)
    loss = Plan(g)
    eps = 1e-6
    base_loss = float(want)
    for name, base in params.items():
        for _ in range(2):
            idx = tuple(rng.randrange(d) for d in base.shape)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            up = float(loss.run({}, {**params, name: hi})["loss"])
            down = float(loss.run({}, {**params, name: lo})["loss"])
            num = (up - down) / (2 * eps)
            a = float(np.asarray(sym[name])[idx])
            scale = max(1.0, abs(a), abs(num))
            if abs((up - base_loss) - (base_loss - down)) / eps > 1e-3 * scale:
                continue  # the one-sided slopes disagree: a kink (relu, abs, max, where) within eps
            assert abs(a - num) <= 1e-4 * scale, (seed, name, idx, a, num)


def test_random_graphs_numpy_onnxruntime_and_gradients():
    for seed in range(25 * LONG):
        _parity_and_gradients(seed)


@pytest.mark.slow
def test_random_graphs_many():
    for seed in range(1000, 1000 + 300 * LONG):
        _parity_and_gradients(seed)

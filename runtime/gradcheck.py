"""`dlc gradcheck`: symbolic gradients against float64 central differences.

The training-mode graph is differentiated symbolically, then run in float64
(the interpreter's ``compute_dtype``) with a fixed random key, so dropout
masks are the same in every evaluation.  For each parameter up to
``samples`` elements are perturbed by ±eps; the reported error is
``max |symbolic - numeric| / max(|symbolic|, |numeric|, floor)``.

A loss that contains ``grad(...)`` (gradient nodes in the forward graph) is
checked the same way, which makes it a second-order check: the symbolic
side differentiates the first pass's nodes again, the numeric side
perturbs the parameters under the whole first-order computation.  The
first line printed says so.
"""
from __future__ import annotations

import numpy as np

from dlc.compiler.graph import RNG_INPUT
from dlc.compiler.passes.backprop import gradient_graph
from dlc.grammar.errors import DlcError

from .feeds import random_feeds
from .interpreter import Plan


def gradcheck(model, *, loss: str | None = None, seed: int = 0, samples: int = 12, eps: float = 1e-6,
              floor: float = 1e-4, dims: dict | None = None, echo=print) -> dict[str, float]:
    """Max relative error per parameter; prints one line per parameter."""
    loss_name = loss or model.loss_name()
    if loss_name not in model.graph.outputs:
        raise DlcError("E0301", f"the model has no output `{loss_name}` to differentiate",
                       hint=f"outputs: {', '.join(model.graph.outputs)}")
    if uses_grad(model.graph, loss_name):
        echo(f"second order: `{loss_name}` contains grad(...), so its gradients are second derivatives")
    g, grads = gradient_graph(model.graph, loss_name, "train")
    loss_v = g.outputs[loss_name]
    names = sorted(g.params)
    g.set_outputs({"loss": loss_v, **{f"grad:{n}": grads[n] for n in names}})
    binding = {d: 3 for d in model.symbolic_dims()}
    binding.update(dims or {})
    feeds = random_feeds(g, binding, seed)  # ids and labels span their tables and classes
    feeds[RNG_INPUT] = np.int64(seed)
    params = {k: np.asarray(v, np.float64) for k, v in model.params.items() if k in g.params}
    state = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v
             for k, v in getattr(model, "state", {}).items()}
    full = Plan(g, compute_dtype=np.float64).run(feeds, params, state)
    loss_plan = Plan(g, ["loss"], compute_dtype=np.float64)
    rng = np.random.default_rng(seed)
    worst = {}
    width = max((len(n) for n in names), default=4)
    for name in names:
        base = params[name]
        sym = full[f"grad:{name}"]
        picks = range(base.size) if base.size <= samples else rng.choice(base.size, samples, replace=False)
        err = 0.0
        for i in picks:
            idx = np.unravel_index(int(i), base.shape)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            num = (loss_plan.run(feeds, {**params, name: hi}, state)["loss"]
                   - loss_plan.run(feeds, {**params, name: lo}, state)["loss"]) / (2 * eps)
            a = float(sym[idx])
            err = max(err, abs(a - num) / max(abs(a), abs(num), floor))
        worst[name] = err
        echo(f"{name.ljust(width)}  {str(list(base.shape)):>14}  max rel error {err:.2e}")
    return worst



def uses_grad(graph, output: str) -> bool:
    """Does ``output`` depend on gradient nodes built by ``grad(...)`` in the model?"""
    up = graph.ancestors([graph.outputs[output].node])
    return any(graph[n].role == "backward" for n in up)

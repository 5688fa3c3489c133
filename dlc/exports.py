"""The four ONNX exports of a model: ``inference``, ``train``, ``grad``, ``update``.

- **inference** — the eval-mode graph with the outputs a caller wants at
  serving time: every output except the train block's losses and metrics
  (or exactly ``outputs``), and only the inputs those read; parameters and
  the spec's state are initializers, and so is a default ``__rng`` of 0.
- **train** — one step group's fused training step, self-contained: the
  parameters, the spec's state, the optimizer slots, the update counter and
  the random key ``__rng`` are inputs *with* initializers (a feed overrides
  them), so it runs fed with a batch alone.  ``new/<name>`` feeds input
  ``<name>`` on the next step (``new/__rng`` advances the key as ``dlc
  train`` does); the metadata ``dlc.feedback`` lists those pairs.
- **grad** — the same forward and backward pass stopped at the gradients:
  inputs parameters, state and a batch; outputs ``train/loss``, the metrics,
  ``grad/<param>`` and ``new/<state>`` for the spec's running statistics.
- **update** — the optimizer alone: inputs the parameters, ``grad/<param>``,
  the slots and the counter; outputs ``train/lr`` and ``new/<name>``.
  ``update(grad(batch))`` is node for node the fused step
  (compiler/training/step.py builds all three with the same functions).

Values come from what the model holds: a loaded checkpoint (the training
exports continue its last epoch, as ``--resume`` does; inference uses the
best epoch when one was kept), else weights initialised with the train
block's seed, as ``dlc train`` starts.  ``dlc.weights`` in the metadata says
which.
"""
from __future__ import annotations

import json

import numpy as np

from dlc.compiler.graph import RNG_INPUT, Value
from dlc.compiler.passes.pipeline import optimize
from dlc.grammar import ast as A
from dlc.grammar.errors import DlcError, suggest

KINDS = ("inference", "train", "grad", "update")
UNTRAINED = "untrained"


def export(model, kind: str = "inference", *, group: str | None = None, outputs=None, check: bool = True):
    """The ONNX ModelProto of ``kind`` (see the module docstring)."""
    from dlc.compiler.onnx_export import verify

    if kind not in KINDS:
        raise DlcError("E0110", f"unknown export kind `{kind}`", hint=suggest(kind, KINDS) or "kinds: " +
                       ", ".join(KINDS))
    if outputs and kind != "inference":
        raise DlcError("E0110", "choosing outputs applies to the inference export",
                       hint="the training, gradient and update exports have fixed outputs")
    if group is not None and kind == "inference":
        raise DlcError("E0110", "a step group applies to the train, grad and update exports")
    proto, graph = {"inference": _inference, "train": _train, "grad": _grad, "update": _update}[kind](
        model, group=group, outputs=outputs)
    if check:
        verify(proto, graph)
    return proto


def serving_outputs(model) -> list[str]:
    """The inference export's default outputs: every output the train block does not
    name as a loss or a metric (all of them when nothing else is left)."""
    outputs = list(model.graph.outputs)
    spec = model.train_spec(required=False)
    if spec is None:
        return outputs
    named = {e.id for e in [s.loss for s in spec.steps] + [e for _, e in spec.metrics] if isinstance(e, A.Name)}
    return [k for k in outputs if k not in named] or outputs


# -- the four kinds --------------------------------------------------------
def _inference(model, *, group, outputs):
    from dlc.compiler.onnx_export import export_graph
    from dlc.model import load_eval_graph

    graph = model.graph if model.mode == "eval" else load_eval_graph(model)
    outputs = [outputs] if isinstance(outputs, str) else outputs  # one name, not its letters
    wanted = [model._output(o) for o in outputs] if outputs else serving_outputs(model)
    g = graph.copy()
    g.set_outputs({k: graph.outputs[k] for k in wanted})
    g = optimize(g, model.opt_level, "onnx")
    # a sampling model (VAE, GAN) serves with key 0 unless the caller feeds `__rng`
    proto = export_graph(g, params=model.params, state=model.state, name=model.name, doc=model.doc(),
                         props={"dlc.weights": model.weights}, defaults={RNG_INPUT: np.int64(0)})
    return proto, g


def _train(model, *, group, outputs):
    from dlc.compiler.builder import Builder
    from dlc.compiler.onnx_export import export_graph
    from dlc.runtime.trainer import RNG_MODULUS, RNG_STRIDE, build_steps, steps_per_epoch_for

    spec = model.train_spec()
    spe = steps_per_epoch_for(model, spec)
    steps = build_steps(model, spec, spe)
    gi = _group_index(spec, group)
    step = steps[gi]
    params, state, global_step, seed = training_values(model, spec, steps)
    graph = step.graph.copy()
    feedback = {f"new/{k}": k for k in [*step.params, *step.state_init, *step.model_state]}
    defaults = {**params, **state}
    if RNG_INPUT in graph.input_names():  # the key advances as the loop's rng_key(seed, step, group)
        b = Builder(graph, mode="train", role="optimizer", scope="train/rng")
        rng = Value(graph.input_node(RNG_INPUT))
        graph.set_output(f"new/{RNG_INPUT}", b.mod(b.add(rng, RNG_STRIDE * step.every), RNG_MODULUS))
        feedback[f"new/{RNG_INPUT}"] = RNG_INPUT
        defaults[RNG_INPUT] = rng_start(seed, global_step, gi, step.every)
    graph = optimize(graph, model.opt_level, "onnx")
    batch_inputs = [k for k in graph.input_names() if k != RNG_INPUT]
    props = {"dlc.weights": model.weights, "dlc.group": step.group, "dlc.every": str(step.every),
             "dlc.batch": str(spec.batch), "dlc.steps_per_epoch": str(spe), "dlc.step": str(global_step),
             "dlc.feedback": json.dumps(feedback), "dlc.batch_inputs": json.dumps(batch_inputs)}
    proto = export_graph(graph, params=None, name=model.name, doc=model.doc(), train=True, defaults=defaults,
                         props=props)
    return proto, graph


def grad_graph(model, group: str | None = None):
    """(the gradient graph of step group ``group``, the parameter names it differentiates):
    the dlc Graph the grad export is made of (run it with runtime/interpreter.py's Plan)."""
    from dlc.runtime.trainer import build_grad_graph

    spec = model.train_spec()
    return build_grad_graph(model, spec, spec.steps[_group_index(spec, group)])


def update_graph(model, group: str | None = None, steps_per_epoch: int | None = None):
    """The optimizer update of step group ``group`` as a StepGraph (inputs ``grad/<param>``):
    what the update export is made of.  ``steps_per_epoch`` (default: from the data)
    scales the schedule."""
    from dlc.runtime.trainer import build_update_graph, steps_per_epoch_for

    spec = model.train_spec()
    s = spec.steps[_group_index(spec, group)]
    spe = steps_per_epoch_for(model, spec) if steps_per_epoch is None else steps_per_epoch
    return build_update_graph(model, spec, s, spe)


def _grad(model, *, group, outputs):
    from dlc.compiler.onnx_export import export_graph

    spec = model.train_spec()
    gi = _group_index(spec, group)
    graph, names = grad_graph(model, group)
    graph = optimize(graph, model.opt_level, "onnx")
    params, state, global_step, seed = training_values(model, spec, ())
    defaults = {**params, **state}
    if RNG_INPUT in graph.input_names():
        defaults[RNG_INPUT] = rng_start(seed, global_step, gi, spec.steps[gi].every)
    props = {"dlc.weights": model.weights, "dlc.group": spec.steps[gi].name,
             "dlc.gradients": json.dumps({f"grad/{n}": n for n in names})}
    proto = export_graph(graph, params=None, name=model.name, doc=model.doc(), train=True, defaults=defaults,
                         props=props, mode="grad")
    return proto, graph


def _update(model, *, group, outputs):
    from dlc.compiler.onnx_export import export_graph

    spec = model.train_spec()
    s = spec.steps[_group_index(spec, group)]
    step = update_graph(model, group)
    params, state, global_step, _ = training_values(model, spec, (step,))
    feedback = {f"new/{k}": k for k in [*step.params, *step.state_init]}
    props = {"dlc.weights": model.weights, "dlc.group": s.name, "dlc.step": str(global_step),
             "dlc.feedback": json.dumps(feedback)}
    defaults = {**params, **{k: state[k] for k in step.state_init}}
    graph = optimize(step.graph, model.opt_level, "onnx")
    proto = export_graph(graph, params=None, name=model.name, doc=model.doc(), train=True,
                         defaults=defaults, props=props, mode="update")
    return proto, graph


# -- values ------------------------------------------------------------------
def training_values(model, spec, steps) -> tuple[dict, dict, int, int]:
    """(parameters, state incl. the optimizer slots of ``steps``, global step, seed) a
    training export starts from: the loaded checkpoint's last epoch; else the model's
    current weights when it has any; else the initial ones of the train block's seed."""
    from dlc.compiler.training.step import initial_state
    from dlc.runtime.params import init_params, init_state
    from dlc.runtime.train import BEST

    seed = spec.seed
    ckpt = model.checkpoint
    if ckpt is not None:
        params = dict(ckpt.params)
        state = {k: v for k, v in ckpt.state.items() if not k.startswith(BEST)}
        global_step = int(ckpt.meta.get("step", 0))
        seed = int(ckpt.meta.get("seed", seed))
    elif model.weights == UNTRAINED:
        params, state, global_step = init_params(model.graph, seed), init_state(model.graph, seed), 0
    else:
        params, state, global_step = dict(model.params), dict(model.state), 0
    for s in steps:
        for k, v in initial_state(s).items():
            state.setdefault(k, v)
    return params, state, global_step, seed


def rng_start(seed: int, global_step: int, group: int, every: int) -> np.int64:
    """The key of the group's next run at or after ``global_step`` (groups run every ``every`` steps)."""
    from dlc.runtime.trainer import rng_key

    return rng_key(seed, -(-global_step // every) * every, group)


def _group_index(spec, group: str | None) -> int:
    names = [s.name for s in spec.steps]
    if group is None:
        return 0
    if group not in names:
        raise DlcError("E0201", f"the train block has no step group `{group}`",
                       hint=suggest(group, names) or "groups: " + ", ".join(names))
    return names.index(group)

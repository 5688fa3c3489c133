"""The training-step graph: forward, backward and optimizer update in one graph.

For one step group of a train block, :func:`build_step` takes the model
lowered in train mode (with the group's loss and the block's metrics as
extra outputs) and adds: regularisation terms, the symbolic gradients of the
selected parameters, clipping, the learning rate from the schedule, and the
optimizer update.  Its outputs are ``train/loss``, ``train/lr``,
``metric/<name>``, ``new/<param>`` and ``new/<state>`` (a ``/`` cannot occur
in a `.dl` name, so they never collide with the model's inputs); its state
inputs are the optimizer slots (``<group>/<optimizer>.<slot>/<param>``, e.g.
``main/adam.m/h.W``) and the update counter ``step/<group>``.

The same step comes apart in two (the gradient and update exports):
:func:`build_grad` stops at ``grad/<param>``, :func:`build_update` starts from
those gradients as inputs; both are made by the functions the fused step uses.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from dlc.grammar.errors import DlcError

from ..builder import Builder
from ..graph import Graph, Value
from ..passes.backprop import backprop
from ..types import TensorType
from . import optim
from .constraints import apply_constraint
from .spec import StepSpec, TrainSpec


@dataclass
class StepGraph:
    graph: Graph
    group: str
    params: list[str]  # parameters this step updates
    state_init: dict[str, tuple[TensorType, float]]  # optimizer state name → (type, initial fill value)
    every: int = 1
    model_state: list[str] = field(default_factory=list)  # the spec's state this step updates
    repeat: int = 1  # updates per batch it runs on
    sees: str = "updated"  # "start": reads other groups' parameters as they were when the batch began


def select_params(patterns, names: list[str], loc=None, what="step") -> list[str]:
    """The ``names`` matching any glob pattern; none is an error (a typo would train nothing)."""
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise DlcError("E0201", f"the parameter patterns of {what} ({', '.join(patterns)}) match no parameter",
                       loc, hint="parameters: " + ", ".join(names[:20]))
    return chosen


def build_step(graph: Graph, spec: TrainSpec, step: StepSpec, steps_per_epoch: int) -> StepGraph:
    """Extend ``graph`` (train mode, with output ``loss/<group>``) into a training step.

    The step is :func:`build_grad`'s gradients fed to :func:`add_update`'s
    optimizer update inside one graph, node for node what the separate
    gradient and update exports compute, so their composition equals it exactly."""
    b, loss, names, grads = _gradients(graph, step)
    _constraints(spec.constraints, step, list(graph.params), names)  # block patterns checked on the whole model
    return add_update(graph, b, spec, step, names, grads, loss, steps_per_epoch)


def build_grad(graph: Graph, step: StepSpec) -> tuple[Graph, list[str]]:
    """Turn ``graph`` (train mode, with output ``loss/<group>``) into the gradient step of one group:
    outputs ``train/loss``, ``metric/<name>``, ``grad/<param>`` for the group's parameters and
    ``new/<state>`` for the spec's own state (running statistics); returns (graph, parameter names)."""
    _, loss, names, grads = _gradients(graph, step)
    model_state = [k for k, (_, v) in graph.state.items() if v is not None]
    outputs = {"train/loss": loss, **{k: v for k, v in graph.outputs.items() if k.startswith("metric/")},
               **{f"grad/{n}": grads[n] for n in names},
               **{f"new/{k}": graph.state[k][1] for k in model_state}}
    graph.set_outputs(outputs)
    graph.prune({v.node for v in outputs.values()} | {n for n, _ in graph.state.values()})
    return graph, names


def build_update(param_nodes: Graph, spec: TrainSpec, step: StepSpec, names: list[str],
                 steps_per_epoch: int) -> StepGraph:
    """The optimizer update of one group alone: a graph whose inputs are the parameters
    ``names`` (``param`` nodes copied from ``param_nodes``), their gradients (inputs
    ``grad/<param>``), the optimizer slots and the update counter; outputs ``train/lr`` and
    ``new/<name>`` as in the fused step (regularisation, clipping and schedule included)."""
    graph = Graph(f"{param_nodes.name}.update")
    b = Builder(graph, mode="train", role="optimizer", scope="train")
    grads = {}
    for n in names:
        src = param_nodes[param_nodes.params[n]]
        node = graph.add_node("param", (), dict(src.attrs), src.types, loc=src.loc, scope=src.scope)
        graph.add_param(n, node)
    for n in names:
        node = graph.add_node("input", (), {"name": f"grad/{n}"}, graph[graph.params[n]].types, scope="train")
        graph.add_input(node)
        grads[n] = Value(node)
    return add_update(graph, b, spec, step, names, grads, None, steps_per_epoch)


def _gradients(graph: Graph, step: StepSpec):
    """(builder, loss, the group's parameter names, d loss / d param) for one step group."""
    b = Builder(graph, mode="train", role="optimizer", scope="train")
    loss = graph.remove_output(f"loss/{step.name}")
    names = select_params(step.params, list(graph.params), step.loc, f"step `{step.name}`")
    return b, loss, names, backprop(graph, loss, names, builder=b)


def add_update(graph: Graph, b: Builder, spec: TrainSpec, step: StepSpec, names: list[str], grads: dict,
               loss: Value | None, steps_per_epoch: int) -> StepGraph:
    """Add regularisation, clipping, the schedule and the optimizer update of ``names`` given their
    loss gradients ``grads``; set the step's outputs (``train/loss`` only when ``loss`` is given)."""
    everything = list(graph.params)
    param_values = {n: Value(graph.params[n]) for n in names}

    def chosen(rule, what: str) -> set[str]:
        """The group's parameters a regulariser applies to (its pattern must match some parameter)."""
        return set(select_params((rule.kwargs["params"],), everything, rule.loc, what)) & set(names)

    decayed = chosen(spec.weight_decay, "weight decay") if spec.weight_decay is not None else set()
    constraints = _constraints(spec.constraints, step, None, names)
    dtype = graph.type_of(param_values[names[0]]).dtype if loss is None else graph.type_of(loss).dtype
    penalty, penalised = None, []
    with b.at(scope="train/regularize"):
        for reg in spec.regularize:
            for n in [n for n in names if n in chosen(reg, "regulariser")]:
                p = param_values[n]
                # the registry's penalty ops: one formula for `l1`/`l2` in a train block and in a model
                term = b.apply(reg.name, p, scale=reg.kwargs["strength"])
                penalty = term if penalty is None else b.add(penalty, term)
                if n not in penalised:
                    penalised.append(n)
    if penalty is not None:  # the penalty's gradient is added to the loss's (it reads parameters only)
        extra = backprop(graph, penalty, penalised, builder=b)
        grads = {**grads, **{n: b.add(grads[n], extra[n]) for n in penalised}}
    state_init: dict[str, tuple[TensorType, float]] = {}

    def state(name: str, t: TensorType, init: float) -> Value:
        n = graph.add_node("state", (), {"name": name}, (t,), scope="train")
        state_init[name] = (t, init)
        graph.set_state(name, n)
        return Value(n)

    counter_name = f"step/{step.name}"
    counter = state(counter_name, TensorType("i64", ()), 0)
    with b.at(scope="train/schedule"):
        done = b.cast(counter, dtype=dtype)
        lr = optim.schedule(b, step.schedule, step.optimizer.kwargs["lr"], done, steps_per_epoch)
    with b.at(scope="train/clip"):
        grads = _clip(b, step.clip, grads, names)
    new: dict[str, Value] = {counter_name: b.add(counter, 1)}
    t = b.add(done, 1.0)
    opt = step.optimizer
    for n in names:
        p, g = param_values[n], grads[n]
        with b.at(scope=f"train/{opt.name}/{n}"):
            slot = {s: f"{step.name}/{opt.name}.{s}/{n}" for s in optim.slots(opt.name, opt.kwargs)}
            slot_values = {s: state(slot[s], graph.type_of(p), init)
                           for s, init in optim.slots(opt.name, opt.kwargs).items()}
            new_p, new_slots = optim.update(b, opt.name, opt.kwargs, p, g, slot_values, lr, t)
            if n in decayed:
                new_p = b.sub(new_p, b.mul(b.mul(lr, spec.weight_decay.kwargs["strength"]), p))
        for c in constraints.get(n, ()):
            with b.at(scope=f"train/constrain/{n}", loc=c.loc):
                new_p = apply_constraint(b, c, new_p, n)
        new[n] = new_p
        for s, v in new_slots.items():
            new[slot[s]] = v
    model_state = [k for k, (_, v) in graph.state.items() if v is not None and k not in new]  # the spec's `update`s
    for key in new.keys() & graph.state.keys():  # the optimizer's slots and counter
        graph.set_state(key, graph.state[key][0], new[key])
    outputs = {**({"train/loss": loss} if loss is not None else {}), "train/lr": lr,
               **{k: v for k, v in graph.outputs.items() if k.startswith("metric/")}}
    outputs.update({f"new/{k}": v for k, v in new.items()})
    outputs.update({f"new/{k}": graph.state[k][1] for k in model_state})
    graph.set_outputs(outputs)
    # rules also build cotangents for inputs nobody asked about (d loss / d x): drop them
    graph.prune({v.node for v in outputs.values()} | {n for n, _ in graph.state.values()})
    return StepGraph(graph, step.name, names, state_init, step.every, model_state, step.repeat, step.sees)


def _constraints(block: list, step: StepSpec, everything: list[str] | None, names: list[str]) -> dict:
    """Parameter name → the constraints applied to it after each update of this group, in
    order: the block's (``block``), then the group's own.  A group constraint's pattern must
    match a parameter the group trains; a block constraint's must match some parameter of
    the model, checked when ``everything`` (the model's parameter names) is given."""
    out: dict[str, list] = {}
    for c in block:
        pattern = (c.kwargs["params"],)
        if everything is not None:
            select_params(pattern, everything, c.loc, f"constraint `{c.name}`")
        for n in names:
            if fnmatch.fnmatchcase(n, pattern[0]):
                out.setdefault(n, []).append(c)
    for c in step.constraints:
        for n in select_params((c.kwargs["params"],), names, c.loc, f"constraint `{c.name}` of step `{step.name}`"):
            out.setdefault(n, []).append(c)
    return out


def _clip(b: Builder, clip, grads: dict, names: list[str]) -> dict:
    if clip is None:
        return grads
    limit = clip.kwargs["max"]
    if clip.name == "value":
        return {n: b.clip(grads[n], lo=-limit, hi=limit) for n in names}
    squares = [b.sum(b.mul(grads[n], grads[n])) for n in names]
    total = squares[0]
    for s in squares[1:]:
        total = b.add(total, s)
    norm = b.sqrt(total)
    scale = b.div(limit, b.maximum(norm, limit))  # 1 when within the limit
    return {n: b.mul(grads[n], scale) for n in names}


def initial_state(step: StepGraph) -> dict[str, np.ndarray]:
    from ..dims import is_static
    from ..types import np_dtype

    out = {}
    for name, (t, value) in step.state_init.items():
        assert is_static(t.shape), name
        out[name] = np.full(t.shape, value, dtype=np_dtype(t.dtype))
    return out

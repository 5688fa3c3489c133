"""The library API: ``dlc.load(path)`` / ``dlc.compile(source)`` → :class:`Model`.

A Model is one model of a spec, compiled in one mode (``eval`` by default,
``train`` for dropout and friends), with its parameters materialised from
their initialisers (seeded: the same seed gives the same numbers).
Everything else — running, gradients, training, ONNX — goes through it.
"""
from __future__ import annotations

import hashlib
import zlib
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np

from dlc.compiler.graph import RNG_INPUT, Graph
from dlc.compiler.lower import Loaded, compile_model, load_module, pick_model
from dlc.compiler.ops.init import initialize
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError

BACKENDS = ("numpy", "onnxruntime")


def load(path: str | Path, *, mode: str = "eval", model: str | None = None, seed: int = 0, **hyper) -> "Model":
    """Load the spec at ``path``; ``model`` picks one of several (default: the last)."""
    return Model(load_module(str(path)), model, mode=mode, seed=seed, hyper=hyper)


def compile(source: str, *, path: str = "<string>", mode: str = "eval", model: str | None = None, seed: int = 0,
            **hyper) -> "Model":
    """Compile spec text (``use`` resolves relative to the current directory)."""
    return Model(load_module(path if path != "<string>" else None, text=source), model, mode=mode, seed=seed,
                 hyper=hyper)


class Model:
    def __init__(self, loaded: Loaded, model: str | None, *, mode: str = "eval", seed: int = 0,
                 hyper: dict | None = None):
        if mode not in ("eval", "train"):
            raise DlcError("E0110", f"mode must be `eval` or `train`, got {mode!r}")
        self.loaded = loaded
        self.defn = pick_model(loaded, model)
        self.name = self.defn.name
        self.mode = mode
        self.hyper = dict(hyper or {})
        self.seed = seed
        self.lowered = compile_model(loaded, self.defn, mode, self.hyper)
        self.graph: Graph = self.lowered.graph
        self._params: dict[str, np.ndarray] | None = None  # drawn on first use (`dlc check` never needs them)
        self._state: dict[str, np.ndarray] | None = None
        self._plans: dict = {}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The spec's ``state`` tensors (running statistics) by name, initialised like parameters."""
        if self._state is None:
            self._state = init_state(self.graph, self.seed)
        return self._state

    @state.setter
    def state(self, value: dict[str, np.ndarray]) -> None:
        self._state = dict(value)
        self._forget_sessions()

    @property
    def params(self) -> dict[str, np.ndarray]:
        """name → array, initialised from the spec's initialisers with this model's seed.
        Assign a new dict to change them (the onnxruntime session is rebuilt then)."""
        if self._params is None:
            self._params = init_params(self.graph, self.seed)
        return self._params

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self._params = dict(value)
        self._forget_sessions()

    def _forget_sessions(self) -> None:
        """Drop the onnxruntime session: it holds parameters and state as initializers."""
        self._plans.pop(("ort",), None)

    # -- description -------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, TensorType]:
        return {k: v for k, v in self.lowered.inputs.items() if not k.startswith("__")}

    @property
    def outputs(self) -> dict[str, TensorType]:
        return dict(self.lowered.outputs)

    @cached_property
    def spec_hash(self) -> str:
        h = hashlib.sha256()
        for text in self.loaded.sources:
            h.update(text.encode())
        h.update(repr((self.name, sorted(self.hyper.items()))).encode())
        return h.hexdigest()[:16]

    def param_count(self) -> int:
        from dlc.compiler.dims import size_of

        return int(sum(size_of(self.graph[n].types[0].shape) for n in self.graph.params.values()))

    def symbolic_dims(self) -> list[str]:
        names = set()
        for t in self.lowered.inputs.values():
            for d in t.shape:
                if not isinstance(d, int):
                    names |= d.names()
        return sorted(names)

    def dims_from(self, name: str, arr: np.ndarray) -> dict[str, int]:
        """Symbolic dims bound by feeding ``arr`` to input ``name``."""
        from dlc.compiler.dims import solve

        env: dict = {}
        t = self.lowered.inputs[name]
        if len(t.shape) == np.ndim(arr):
            for d, a in zip(t.shape, np.shape(arr)):
                solve(d, a, env)
        return {k: v for k, v in env.items() if isinstance(v, int)}

    def loss_name(self) -> str:
        """The output trained by the train block's (first) step group, or the one named ``loss``."""
        spec = self.train_spec(required=False)
        if spec is not None:
            from dlc.grammar import ast as A

            e = spec.steps[0].loss
            if isinstance(e, A.Name) and e.id in self.graph.outputs:
                return e.id
        if "loss" in self.graph.outputs:
            return "loss"
        scalars = [k for k, t in self.outputs.items() if t.rank == 0 and t.is_float]
        if len(scalars) == 1:
            return scalars[0]
        raise DlcError("E0301", f"model `{self.name}` has no single loss output",
                       hint="name the scalar output `loss`, or choose one (`--loss NAME`, `loss=`)")

    def _output(self, name: str, code: str = "E0110") -> str:
        if name not in self.graph.outputs:
            from dlc.grammar.errors import suggest

            raise DlcError(code, f"model `{self.name}` has no output `{name}`",
                           hint=suggest(name, self.graph.outputs) or "outputs: " + ", ".join(self.graph.outputs))
        return name

    # -- running -----------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], *, outputs=None, seed: int = 0, backend: str = "numpy") -> dict:
        """Run the model forward (in its mode); returns ``{output: array}``."""
        feeds = dict(feeds)
        feeds.setdefault(RNG_INPUT, np.int64(seed))
        wanted = [self._output(o) for o in outputs] if outputs else list(self.graph.outputs)
        if backend == "numpy":
            key = tuple(wanted)
            if key not in self._plans:
                from dlc.runtime.interpreter import Plan

                self._plans[key] = Plan(self.graph, wanted)
            return self._plans[key].run(feeds, self.params, self.state)
        if backend == "onnxruntime":
            if ("peak",) not in self._plans:  # the interpreter's schedule stands in for onnxruntime's peak
                from dlc.runtime.interpreter import Plan

                self._plans[("peak",)] = Plan(self.graph, wanted)
            self._plans[("peak",)].check_memory(feeds)
            if ("ort",) not in self._plans:  # the graph of this model's mode, parameters as initializers
                from dlc.compiler.onnx_export import export_graph
                from dlc.runtime.ort import OrtSession

                proto = export_graph(self.graph, params=self.params, state=self.state, name=self.name)
                self._plans[("ort",)] = OrtSession(proto)
            return self._plans[("ort",)].run(feeds, wanted)
        raise DlcError("E0110", f"unknown backend `{backend}`", hint="backends: " + ", ".join(BACKENDS))

    def gradients(self, feeds: Mapping[str, np.ndarray], *, loss: str | None = None, seed: int = 0) -> dict:
        """``{param: d loss / d param}`` for one batch, by the symbolic backward graph."""
        from dlc.compiler.passes.backprop import gradient_graph
        from dlc.runtime.interpreter import Plan

        loss = self._output(loss, "E0301") if loss else self.loss_name()
        key = ("grad", loss)
        if key not in self._plans:
            g, grads = gradient_graph(self.graph, loss, self.mode)
            g.set_outputs(dict(grads))
            self._plans[key] = Plan(g)
        feeds = {**feeds, RNG_INPUT: np.int64(seed)}
        return self._plans[key].run(feeds, self.params, self.state)

    # -- training ------------------------------------------------------------------
    def train_spec(self, required: bool = True):
        from dlc.compiler.training.spec import parse_train

        t = self.loaded.trains.get(self.name)
        if t is None:
            if required:
                raise DlcError("E0201", f"no `train {self.name} {{ ... }}` block in {self.loaded.path}",
                               self.defn.loc)
            return None
        return parse_train(t)

    def check_train(self) -> None:
        """Validate the train block (if any) by building its step graphs."""
        if self.name in self.loaded.trains:
            from dlc.runtime.train import build_steps, check_data

            spec = self.train_spec()
            check_data(self, spec)
            build_steps(self, spec, steps_per_epoch=1)

    def train_graph(self, optimizer: bool = True) -> Graph:
        """The forward+backward graph (``optimizer``: plus the update) of the first step group."""
        if optimizer:
            from dlc.runtime.train import build_steps

            return build_steps(self, self.train_spec(), steps_per_epoch=1)[0].graph
        from dlc.compiler.passes.backprop import gradient_graph

        g, grads = gradient_graph(self.graph, self.loss_name(), self.mode)
        g.set_outputs({**g.outputs, **{f"grad/{k}": v for k, v in grads.items()}})
        g.prune({v.node for v in g.outputs.values()})
        return g

    def train(self, **options):
        """Train as the train block says (options override it); returns the History."""
        from dlc.runtime.train import train

        return train(self, **options)

    def load_checkpoint(self, path: str | Path, *, best: bool = True) -> dict:
        """Load parameters and the spec's state (running statistics) from a
        checkpoint directory or file; returns its manifest.  ``best``: when the
        run kept its best epoch (early stopping's ``restore_best``), load that
        one — the model the run reported — rather than the last epoch's."""
        from dlc.runtime.checkpoint import load as load_ckpt
        from dlc.runtime.train import BEST

        expect = {k: (v.shape, v.dtype) for k, v in self.params.items()}
        ckpt = load_ckpt(Path(path), expect_spec_hash=self.spec_hash, expect_params=expect)
        kept = {k[len(BEST):]: v for k, v in ckpt.state.items() if k.startswith(BEST)} if best else {}
        source = {**ckpt.params, **ckpt.state, **kept}
        missing = [k for k in self.state if k not in source]
        if missing:
            raise DlcError("E0403", f"checkpoint {ckpt.path} lacks the state {', '.join(missing)}")
        self.params = {k: np.array(source[k]) for k in ckpt.params}
        self.state = {k: np.array(source[k]) for k in self.state}
        return ckpt.meta

    # -- export ----------------------------------------------------------------------
    def to_onnx(self, train: bool = False, check: bool = True, group: str | None = None):
        """The ONNX ModelProto of the inference graph, or of the training step of
        one step group (``group``, default the first); ``check`` runs the full
        onnx checker and strict shape inference."""
        from dlc.compiler.onnx_export import export_graph, verify

        if train:
            from dlc.runtime.train import build_steps, steps_per_epoch_for

            spec = self.train_spec()
            steps = {s.group: s for s in build_steps(self, spec, steps_per_epoch=steps_per_epoch_for(self, spec))}
            if group is not None and group not in steps:
                raise DlcError("E0201", f"the train block has no step group `{group}`",
                               hint="groups: " + ", ".join(steps))
            graph = steps[group or next(iter(steps))].graph
            proto = export_graph(graph, params=None, name=self.name, doc=_doc(self), train=True)
        else:
            graph = self.graph if self.mode == "eval" else load_eval_graph(self)
            proto = export_graph(graph, params=self.params, state=self.state, name=self.name, doc=_doc(self))
        if check:
            verify(proto, graph)
        return proto


def check(path: str | Path) -> str:
    """Compile every model of the spec at ``path`` in both modes and build its
    training steps; returns a one-line summary or raises the first error."""
    loaded = load_module(str(path))
    parts = []
    for name in loaded.models:
        m = Model(loaded, name, mode="train")
        compile_model(loaded, m.defn, "eval", {})
        m.check_train()
        parts.append(f"{name} ({m.param_count():,} weights{', trains' if name in loaded.trains else ''})")
    for t in loaded.trains.values():
        if t.model not in loaded.models:
            from dlc.grammar.errors import suggest

            raise DlcError("E0201", f"train block for unknown model `{t.model}`", t.loc,
                           hint=suggest(t.model, loaded.models))
    layers = len(loaded.env.layers)
    return ", ".join(parts) if parts else f"no models, {layers} layer{'s' if layers != 1 else ''}"


def load_eval_graph(model: Model) -> Graph:
    return compile_model(model.loaded, model.defn, "eval", model.hyper).graph


def init_params(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Every parameter drawn from its initialiser with a generator seeded by
    (seed, name), so adding a parameter never changes the others."""
    return _initialise(graph, graph.params, seed)


def init_state(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """The spec's ``state`` tensors, from their initialisers (optimizer slots are not in a model graph)."""
    return _initialise(graph, {k: n for k, (n, _) in graph.state.items()}, seed)


def _initialise(graph: Graph, nodes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Each array drawn after the memory budget allowed it (in its own dtype, with the
    initialiser's scratch space, on top of everything drawn before)."""
    from dlc.compiler import budget
    from dlc.compiler.ops.init import scratch_bytes

    out, total = {}, 0
    for name, n in nodes.items():
        init_name, kwargs = graph[n].attrs["init"]
        t = graph[n].types[0]
        size = budget.nbytes_of(t.shape, t.dtype)
        scratch = scratch_bytes(init_name, tuple(t.shape))
        budget.check(f"parameter `{name}` ({t}: {budget.fmt_bytes(size)}, and {budget.fmt_bytes(scratch)} while "
                     f"`{init_name}` draws it)", size + scratch, graph[n].loc)
        total += size
        budget.check(f"the parameters up to `{name}` together", total, graph[n].loc)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        try:
            out[name] = initialize(init_name, kwargs, tuple(t.shape), t.dtype, rng)
        except ValueError as e:
            raise DlcError("E0110", f"cannot initialise `{name}`: {e}", graph[n].loc) from None
    return out


def _doc(model: Model) -> str:
    text = model.loaded.sources[0]
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines)

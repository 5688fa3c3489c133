"""The library API: ``dlc.load(path)`` / ``dlc.compile(source)`` → :class:`Model`.

A Model is one model of a spec, compiled in one mode (``eval`` by default,
``train`` for dropout and friends), with its parameters materialised from
their initialisers (seeded: the same seed gives the same numbers).
Everything else — running, gradients, training, ONNX — goes through it.
Every graph it runs or exports first passes the optimizing pipeline at
``model.opt_level`` (compiler/passes/pipeline.py; 0 runs graphs as built).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np

from dlc.compiler.graph import RNG_INPUT, Graph
from dlc.compiler.lower import Loaded, compile_model, load_module, pick_model
from dlc.compiler.passes.pipeline import DEFAULT_LEVEL, optimize
from dlc.compiler.types import TensorType
from dlc.grammar.errors import DlcError
from dlc.runtime.params import nonnegative_int, init_params, init_state

from dlc.runtime.runner import BACKENDS

# keys of Model._plans beside the NumPy plans' (tuples of output names): (PEAK or ORT, outputs)
PEAK, ORT = object(), object()


def load(path: str | Path, *, mode: str = "eval", model: str | None = None, seed: int = 0,
         checkpoint: str | Path | None = None, **hyper) -> "Model":
    """Load the spec at ``path``; ``model`` picks one of several (default: the last);
    ``checkpoint`` (a checkpoint folder or manifest, or a ``.safetensors`` file of
    ``dlc export-weights``) supplies trained parameters and state."""
    m = Model(load_module(str(path)), model, mode=mode, seed=seed, hyper=hyper)
    if checkpoint is not None:
        m.load_checkpoint(checkpoint)
    return m


def compile(source: str, *, path: str = "<string>", mode: str = "eval", model: str | None = None, seed: int = 0,
            checkpoint: str | Path | None = None, **hyper) -> "Model":
    """Compile spec text (``use`` resolves relative to the current directory); ``checkpoint`` as for :func:`load`."""
    if not isinstance(source, str):
        raise DlcError("E0110", f"dlc.compile takes the spec's text (a str), got {type(source).__name__}",
                       hint="for a file, use dlc.load(path)")
    m = Model(load_module(path if path != "<string>" else None, text=source), model, mode=mode, seed=seed,
              hyper=hyper)
    if checkpoint is not None:
        m.load_checkpoint(checkpoint)
    return m


def _as_array(name: str, value):
    """A feed given as (nested) lists as an array; ragged lists are E0401, not NumPy's ValueError."""
    if not isinstance(value, (list, tuple)):
        return value
    try:
        return np.asarray(value)
    except ValueError:
        raise DlcError("E0401", f"input `{name}` is a ragged nested list: its rows differ in length",
                       hint="feed an array, or lists whose rows all have one length") from None


class Model:
    _opt_level: int = DEFAULT_LEVEL

    @property
    def opt_level(self) -> int:
        """The optimizing pipeline's level for everything this model runs, trains or exports
        (0: graphs as built; 1: cleanup passes; 2: also fusion on the NumPy backend)."""
        return self._opt_level

    @opt_level.setter
    def opt_level(self, level: int) -> None:
        from dlc.compiler.passes.pipeline import LEVELS

        if type(level) is not int or level not in LEVELS:  # (2.0 == 2 and True == 1: not levels)
            raise DlcError("E0110", f"opt_level must be one of {', '.join(map(str, LEVELS))}, got {level!r}")
        self._opt_level = level
        self._plans.clear()  # plans and sessions were built at the old level

    def __init__(self, loaded: Loaded, model: str | None, *, mode: str = "eval", seed: int = 0,
                 hyper: dict | None = None):
        if mode not in ("eval", "train"):
            raise DlcError("E0110", f"mode must be `eval` or `train`, got {mode!r}")
        self.loaded = loaded
        self.defn = pick_model(loaded, model)
        self.name = self.defn.name
        self.mode = mode
        self.hyper = dict(hyper or {})
        self.seed = nonnegative_int(seed)
        self.lowered = compile_model(loaded, self.defn, mode, self.hyper)
        self.graph: Graph = self.lowered.graph
        self._params: dict[str, np.ndarray] | None = None  # drawn on first use (`dlc check` never needs them)
        self._state: dict[str, np.ndarray] | None = None
        self._plans: dict = {}
        self.checkpoint = None  # the loaded runtime.checkpoint.Checkpoint (optimizer slots included), if any
        self.weights = "untrained"  # where the parameters come from, as exports record it

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
        self.weights = "assigned"
        self.checkpoint = None
        self._forget_sessions()

    def _forget_sessions(self) -> None:
        """Drop the onnxruntime session: it holds parameters and state as initializers."""
        for key in [k for k in self._plans if k[0] is ORT]:
            del self._plans[key]

    # -- description -------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, TensorType]:
        return {k: v for k, v in self.lowered.inputs.items() if not k.startswith("__")}

    @property
    def outputs(self) -> dict[str, TensorType]:
        return dict(self.lowered.outputs)

    @cached_property
    def spec_hash(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for text in self.loaded.sources:
            h.update(text.encode())
        h.update(repr((self.name, sorted(self.hyper.items()))).encode())
        return h.hexdigest()[:16]

    def summary(self):
        """The per-layer :class:`~dlc.compiler.summary.Summary` of the inference graph."""
        from dlc.compiler.summary import summarize

        graph = self.graph if self.mode == "eval" else load_eval_graph(self)
        return summarize(graph, self.defn, self.loaded.env.layers)

    def _repr_svg_(self) -> str | None:
        """A notebook draws the graph (None, so the HTML table shows instead, without Graphviz)."""
        from dlc.compiler.dot import render, to_dot
        from dlc.grammar.errors import DlcError as _Missing

        try:
            return render(to_dot(self.graph), "svg").decode("utf-8")
        except _Missing:
            return None

    def _repr_html_(self) -> str:
        """A notebook shows the summary table."""
        from dlc.compiler.summary import summary_html

        return summary_html(self.summary())

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
        """Run the model forward (in its mode); returns ``{output: array}`` of ``outputs`` (a name
        or a list of names; default: every output)."""
        if isinstance(outputs, str):  # one name, not its letters
            outputs = [outputs]
        feeds = {k: _as_array(k, v) for k, v in dict(feeds).items()}
        feeds.setdefault(RNG_INPUT, np.int64(seed))
        wanted = [self._output(o) for o in outputs] if outputs else list(self.graph.outputs)
        if backend == "numpy":
            key = tuple(wanted)
            if key not in self._plans:
                from dlc.runtime.interpreter import Plan

                self._plans[key] = Plan(optimize(self.graph, self.opt_level, "numpy"), wanted)
            return self._plans[key].run(feeds, self.params, self.state)
        if backend == "onnxruntime":
            key = tuple(wanted)
            if (PEAK, key) not in self._plans:  # the interpreter's schedule stands in for onnxruntime's peak
                from dlc.runtime.interpreter import Plan

                self._plans[(PEAK, key)] = Plan(self.graph, wanted)
            self._plans[(PEAK, key)].check_memory(feeds)
            if (ORT, key) not in self._plans:  # the wanted outputs of this model's mode, parameters as initializers
                from dlc.compiler.onnx_export import export_graph
                from dlc.runtime.ort import OrtSession

                graph = self.graph.copy()  # only what `wanted` reads: no feeds for the other outputs' inputs
                graph.set_outputs({k: self.graph.outputs[k] for k in wanted})
                graph = optimize(graph, self.opt_level, "onnx")
                proto = export_graph(graph, params=self.params, state=self.state, name=self.name)
                self._plans[(ORT, key)] = OrtSession(proto)
            return self._plans[(ORT, key)].run(feeds, wanted)
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
            self._plans[key] = Plan(optimize(g, self.opt_level, "numpy"))
        feeds = {**feeds, RNG_INPUT: np.int64(seed)}
        return self._plans[key].run(feeds, self.params, self.state)

    # -- training ------------------------------------------------------------------
    def train_spec(self, required: bool = True):
        from dlc.compiler.training.spec import Values, parse_train

        t = self.loaded.trains.get(self.name)
        if t is None:
            if required:
                raise DlcError("E0201", f"no `train {self.name} {{ ... }}` block in {self.loaded.path}",
                               self.defn.loc)
            return None
        return parse_train(t, Values(self.loaded.env, self.lowered.hyper))

    def check_train(self) -> None:
        """Validate the train block (if any) by building its step graphs."""
        if self.name in self.loaded.trains:
            from dlc.runtime.train_data import check_data
            from dlc.runtime.trainer import build_steps

            spec = self.train_spec()
            check_data(self, spec)
            build_steps(self, spec, steps_per_epoch=1)

    def train_graph(self, optimizer: bool = True) -> Graph:
        """The forward+backward graph (``optimizer``: plus the update) of the first step group."""
        if optimizer:
            from dlc.runtime.trainer import build_steps

            return build_steps(self, self.train_spec(), steps_per_epoch=1)[0].graph
        from dlc.compiler.passes.backprop import gradient_graph

        g, grads = gradient_graph(self.graph, self.loss_name(), self.mode)
        g.set_outputs({**g.outputs, **{f"grad/{k}": v for k, v in grads.items()}})
        g.prune({v.node for v in g.outputs.values()})
        return g

    def trainer(self, *, backend: str = "numpy", device: str = "cpu", seed: int | None = None,
                fresh: bool = True, threads: int | None = None, steps_per_epoch: int | None = None):
        """The train block's single-step API: ``step = model.trainer(); metrics = step(batch)``.

        Each call runs one batch through the step groups due and updates the trainer's
        parameters and state in the backend (``step.params`` / ``step.state`` read them;
        ``model.params = step.params`` keeps them).  ``fresh=False`` starts from this
        model's parameters; ``steps_per_epoch`` (for schedules) defaults to the data set's."""
        from dlc.runtime.trainer import make_trainer

        return make_trainer(self, backend=backend, device=device, seed=seed, fresh=fresh, threads=threads,
                            steps_per_epoch=steps_per_epoch)

    def predict(self, feeds: Mapping[str, np.ndarray], *, outputs=None, backend: str = "numpy") -> dict:
        """The eval-mode outputs for ``feeds``: ``outputs``, by default the serving outputs
        (every output the train block does not name as a loss or metric; dlc/exports.py).
        A train-mode model predicts with its eval graph and its current parameters."""
        if outputs is None:
            from dlc.exports import serving_outputs

            outputs = serving_outputs(self)
        if self.mode == "eval":
            return self.run(feeds, outputs=outputs, backend=backend)
        key = ("eval-model",)
        if key not in self._plans:
            self._plans[key] = [Model(self.loaded, self.name, mode="eval", seed=self.seed, hyper=self.hyper), None]
        entry = self._plans[key]
        m, source = entry  # source: the dicts m's values came from (onnxruntime's session is rebuilt on change)
        if source is None or source[0] is not self.params or source[1] is not self.state or backend == "numpy":
            m.params, m.state = self.params, self.state
            entry[1] = (self.params, self.state)
        return m.run(feeds, outputs=outputs, backend=backend)

    def train(self, **options):
        """Train as the train block says (options override it); returns the History."""
        from dlc.runtime.train import train

        history = train(self, **options)
        self.weights = "trained in this session"
        return history

    def load_checkpoint(self, path: str | Path, *, best: bool = True) -> dict:
        """Load parameters and the spec's state (running statistics) from a
        checkpoint directory or file, or from a ``.safetensors`` file written by
        ``dlc export-weights``; returns its manifest (metadata).  ``best``: when
        the run kept its best epoch (early stopping's ``restore_best``), load
        that one — the model the run reported — rather than the last epoch's."""
        from dlc.runtime.weights import load_for_model

        ckpt, params, state = load_for_model(Path(path), self, best=best)
        self.params = params
        self.state = state
        self.checkpoint = ckpt  # after the setters, which forget any earlier one
        self.weights = f"checkpoint {ckpt.path}" + (f" (epoch {ckpt.meta['epoch']})" if "epoch" in ckpt.meta else "")
        return ckpt.meta

    # -- export ----------------------------------------------------------------------
    def to_onnx(self, kind: str = "inference", *, group: str | None = None, outputs=None, check: bool = True):
        """The ONNX ModelProto of one export ``kind`` (dlc/exports.py): ``inference``
        (``outputs``: which, default the serving outputs), ``train`` (the fused,
        self-contained step of step group ``group``, default the first),
        ``grad`` (loss, metrics, gradients) or ``update`` (the optimizer step);
        ``check`` runs the full onnx checker and strict shape inference."""
        from dlc.exports import export

        return export(self, kind, group=group, outputs=outputs, check=check)

    def doc(self) -> str:
        """The spec's header comment (the exports' doc_string)."""
        text = self.loaded.sources[0]
        lines = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("# ").rstrip())
        return "\n".join(lines)


def load_eval_graph(model: Model) -> Graph:
    return compile_model(model.loaded, model.defn, "eval", model.hyper).graph

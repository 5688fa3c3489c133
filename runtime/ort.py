"""Running exported models in onnxruntime.

:class:`OrtSession` wraps ``onnxruntime.InferenceSession`` with dlc's
conventions: feeds and results are dicts keyed by name, feeds the model
does not read are ignored (as by the interpreter, so one loop drives both
backends), feeds are converted to the dtypes the model declares (so Python
ints and float64 arrays work),
and onnxruntime failures become DlcError E0401 naming the input or the
model, never a raw onnxruntime traceback.  onnxruntime is imported lazily.

:class:`ResidentValues` and :class:`BoundRun` are the training hot path:
parameters and optimizer state live in onnxruntime memory (OrtValues on the
session's device) between steps, each step's ``new/<name>`` outputs are
written into a second buffer of the same value, and a commit swaps the two
buffers; IO bindings are built once and rebound only when a buffer they name
has changed.  The same code serves any execution provider: ``device="cpu"``
or ``"cuda"`` (the CUDA execution provider of onnxruntime-gpu).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from dlc.compiler.onnx_emit import check_runtime
from dlc.compiler.optional import import_optional
from dlc.grammar.errors import DlcError

from .plan_values import as_declared

# onnxruntime's type strings for the element types dlc exports
_NP = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64,
       "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}

# device name -> onnxruntime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def providers_for(device: str) -> list:
    """The execution providers for ``device`` (``cpu``, ``cuda`` or ``cuda:N``), CPU last as the
    fallback for nodes a device provider lacks; E0401 when the provider is not installed."""
    ort = import_optional("onnxruntime", "the onnxruntime backend")
    kind, _, index = device.partition(":")
    if kind not in PROVIDERS or index and not index.isdigit() or kind == "cpu" and index not in ("", "0"):
        raise DlcError("E0110", f"unknown device `{device}`", hint="devices: " + ", ".join(PROVIDERS))
    wanted = PROVIDERS[kind]
    available = ort.get_available_providers()
    if wanted not in available:
        raise DlcError("E0401", f"device `{device}` needs onnxruntime's {wanted}, which this onnxruntime "
                                f"({ort.__version__}) does not have (it has {', '.join(available)})",
                       hint="pip install onnxruntime-gpu (in place of onnxruntime) on a machine with CUDA"
                       if kind == "cuda" else None)
    return [wanted] if kind == "cpu" else [(wanted, {"device_id": int(index or 0)}), PROVIDERS["cpu"]]


def _device(device: str) -> tuple[str, int]:
    kind, _, index = device.partition(":")
    return kind, int(index or 0)


class OrtSession:
    """An onnxruntime session for one model (a ModelProto or its bytes).

    ``optimize`` selects ORT_ENABLE_ALL (default) or ORT_DISABLE_ALL graph
    optimisations; the tests run both, since the optimiser's fusions are a
    separate source of numerical differences and bugs.  ``device`` picks the
    execution provider (:func:`providers_for`); ``threads`` the intra-op
    threads (default: :func:`~dlc.runtime.threads.training_threads`)."""

    def __init__(self, model, optimize: bool = True, *, device: str = "cpu", threads: int | None = None):
        ort = import_optional("onnxruntime", "the onnxruntime backend")
        check_runtime(ort.__version__)
        providers = providers_for(device)
        self.device = device
        data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString(deterministic=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.log_severity_level = 3  # errors only: unused-initializer warnings are noise here
        # no busy-waiting between runs: the training loop does NumPy work between steps on the same cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        from .threads import training_threads

        opts.intra_op_num_threads = training_threads() if threads is None else threads  # as the training loop's
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(bytes(data), sess_options=opts, providers=providers)
        except Exception as exc:
            raise DlcError("E0401", f"onnxruntime cannot load the model: {_short(exc)}") from exc
        self.empty_aborts = _has_recurrent_op(model)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        # inputs with an initializer (a training export's parameters and state): fed when given
        self.defaulted = {i.name: i for i in self.session.get_overridable_initializers()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_meta = {o.name: o for o in self.session.get_outputs()}

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run once; returns {output name: array} (all outputs unless ``outputs``)."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise DlcError("E0401", f"missing input{'s' if len(missing) > 1 else ''} "
                                    f"{', '.join(f'`{n}`' for n in missing)} for the ONNX model")
        converted = self.convert(feeds, [*self.inputs, *(k for k in self.defaulted if k in feeds)])
        names = self.output_names if outputs is None else list(outputs)
        try:
            results = self.session.run(names, converted)
        except Exception as exc:
            raise DlcError("E0401", f"onnxruntime failed: {_short(exc)}", hint=_feed_summary(converted)) from exc
        return dict(zip(names, results))

    def convert(self, feeds: Mapping[str, np.ndarray], names: Iterable[str]) -> dict[str, np.ndarray]:
        """``feeds[name]`` for each of ``names`` as the dtype the model declares, shapes checked."""
        converted: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[int, str]] = {}  # dim name → (size, the input that set it)
        for name in names:  # extra feeds are ignored, as by the interpreter
            meta = self.inputs[name] if name in self.inputs else self.defaulted[name]
            want = _NP.get(meta.type)
            # as the interpreter takes feeds: a cast that would change values (2.5 → 2) is E0401
            arr = np.asarray(feeds[name]) if want is None else as_declared(feeds[name], np.dtype(want), name)
            _check_shape(name, arr, meta.shape, bound)
            if self.empty_aborts and arr.size == 0:
                raise DlcError("E0401", f"input `{name}` is empty ({list(arr.shape)}): onnxruntime's LSTM and GRU "
                                        "kernels abort the whole process on an empty batch",
                               hint="run an empty batch on the numpy backend, or skip it")
            converted[name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # (keeps 0-d arrays 0-d)
        return converted


def _has_recurrent_op(model) -> bool:
    """Does the model (a ModelProto or its bytes) hold an ``LSTM`` or ``GRU`` node, in any
    subgraph?  onnxruntime's kernels for them end the process (``std::terminate``) when
    the batch is empty, where every other op returns empty results."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_model_from_string(bytes(model))

    def walk(graph) -> bool:
        return any(n.op_type in ("LSTM", "GRU") or any(a.type == onnx.AttributeProto.GRAPH and walk(a.g)
                                                        for a in n.attribute) for n in graph.node)

    return walk(proto.graph)


class ResidentValues:
    """Named tensors kept in onnxruntime memory on one device, two buffers each.

    ``current[name]`` is what the next run reads; a run writes the value's
    next version into ``spare[name]`` and :meth:`commit` swaps the two, so
    nothing is allocated or copied between steps.  On the CPU the buffers
    are NumPy arrays owned here (never a caller's array: writes would show
    through), wrapped by OrtValues that share their memory."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.device_type, self.device_id = _device(device)
        self.current: dict = {}
        self.spare: dict = {}

    def __contains__(self, name: str) -> bool:
        return name in self.current

    def __iter__(self):
        return iter(self.current)

    def set(self, values: Mapping[str, np.ndarray]) -> None:
        """Upload (copies of) ``values`` (bindings notice the new buffers and rebind)."""
        from onnxruntime import OrtValue

        for name, value in values.items():
            arr = np.array(value, copy=True, order="C")
            self.current[name] = OrtValue.ortvalue_from_numpy(arr, self.device_type, self.device_id)
            self.spare[name] = OrtValue.ortvalue_from_numpy(np.empty_like(arr), self.device_type, self.device_id)

    def get(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Host copies of the current values."""
        return {n: np.array(self.current[n].numpy(), copy=True) for n in (self.current if names is None else names)}

    def commit(self, names: Iterable[str]) -> None:
        cur, spare = self.current, self.spare
        for n in names:
            cur[n], spare[n] = spare[n], cur[n]


class BoundRun:
    """One session run with IO binding against :class:`ResidentValues`.

    Inputs the store holds are bound to its OrtValues; the other inputs come
    from ``feeds`` (host arrays, copied to the device by onnxruntime when it
    is not the CPU).  An output named in ``writes`` (output name → resident
    name, e.g. ``new/h.W`` → ``h.W``) goes into that value's spare buffer;
    the others are returned as NumPy arrays (into preallocated host buffers
    when their shape is static).  Two bindings alternate, so in a loop of
    one step group every buffer a binding names is already bound."""

    def __init__(self, session: OrtSession, store: ResidentValues, writes: Mapping[str, str] | None = None,
                 outputs: list[str] | None = None):
        self.session = session
        self.store = store
        names = session.output_names if outputs is None else list(outputs)
        self.writes = {o: r for o, r in (writes or {}).items() if r in store and o in names}
        self.resident_in = [n for n in (*session.inputs, *session.defaulted) if n in store]
        self.feed_names = [n for n in session.inputs if n not in store]
        self.host_out = [n for n in names if n not in self.writes]
        self._host = {}  # output name -> (preallocated array, its OrtValue) for static shapes
        from onnxruntime import OrtValue

        for n in self.host_out:
            meta = session.output_meta[n]
            want = _NP.get(meta.type)
            if want is not None and meta.shape is not None and all(isinstance(d, int) for d in meta.shape):
                arr = np.empty(meta.shape, want)
                self._host[n] = (arr, OrtValue.ortvalue_from_numpy(arr))  # host memory: ORT copies back
        self._dynamic = [n for n in self.host_out if n not in self._host]
        self._bindings = [self._new_binding(), self._new_binding()]
        self._parity = 0

    def _new_binding(self):
        b = self.session.session.io_binding()
        for n, (_, ov) in self._host.items():
            b.bind_ortvalue_output(n, ov)
        for n in self._dynamic:
            b.bind_output(n, "cpu")
        return [b, {}, {}]  # binding, input name -> bound OrtValue, output name -> bound OrtValue

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns the host outputs (the written ones wait in spare buffers for :meth:`commit`)."""
        binding, bound_in, bound_out = self._bindings[self._parity]
        self._parity ^= 1
        cur, spare = self.store.current, self.store.spare
        for n in self.resident_in:
            v = cur[n]
            if bound_in.get(n) is not v:
                binding.bind_ortvalue_input(n, v)
                bound_in[n] = v
        for out, res in self.writes.items():
            v = spare[res]
            if bound_out.get(out) is not v:
                binding.bind_ortvalue_output(out, v)
                bound_out[out] = v
        missing = [n for n in self.feed_names if n not in feeds]
        if missing:
            raise DlcError("E0401", f"missing input{'s' if len(missing) > 1 else ''} "
                                    f"{', '.join(f'`{n}`' for n in missing)} for the ONNX model")
        converted = self.session.convert(feeds, self.feed_names)
        for n, arr in converted.items():
            binding.bind_cpu_input(n, arr)
        try:
            self.session.session.run_with_iobinding(binding)
        except Exception as exc:
            raise DlcError("E0401", f"onnxruntime failed: {_short(exc)}", hint=_feed_summary(converted)) from exc
        out = {n: arr.copy() for n, (arr, _) in self._host.items()}
        if self._dynamic:
            for n, v in zip(self._dynamic, binding.get_outputs()[len(self._host):len(self._host) + len(self._dynamic)]):
                out[n] = np.array(v.numpy(), copy=True)  # not a view of memory onnxruntime may reuse
        return out

    def commit(self, names: Iterable[str]) -> None:
        """The resident values ``names`` take the versions the last run wrote."""
        self.store.commit(names)


class Unrolled:
    """Sessions of one exported model specialised to the sizes it is fed, with its scans unrolled.

    When ``proto`` has a ``Scan`` whose trip count only the feeds fix (``T`` of
    a batch), a call reads the named dims of its feeds and runs a session of
    :func:`~dlc.compiler.onnx_unroll.unroll_scans` applied to the model with
    those dims fixed (made at the first call with those sizes, kept for later
    calls); sizes for which nothing unrolls, and any sizes beyond the first
    :data:`MAX_SHAPES`, use the generic session.  ``make(session)`` builds the
    runner of a session (an :class:`OrtSession` run or a :class:`BoundRun`); a
    call returns what that runner returns."""

    MAX_SHAPES = 4  # a training run sees one or two batch shapes (the last batch may be short)

    def __init__(self, proto, make, *, device: str = "cpu", threads: int | None = None):
        from dlc.compiler.onnx_unroll import scan_count

        self.proto, self.make, self.device, self.threads = proto, make, device, threads
        self.session = OrtSession(proto, device=device, threads=threads)  # the generic one (any sizes)
        self.generic = make(self.session)
        self.dim_inputs = _dim_inputs(proto) if scan_count(proto) else {}
        self.runs: dict[tuple, object] = {}

    def runner_for(self, feeds: Mapping[str, np.ndarray]):
        """The runner for the sizes ``feeds`` give the model's named dims."""
        if not self.dim_inputs:
            return self.generic
        dims = {}
        for name, axes in self.dim_inputs.items():
            if name in feeds:
                shape = np.shape(feeds[name])
                for axis, d in axes:
                    if axis < len(shape):
                        dims.setdefault(d, int(shape[axis]))
        key = tuple(sorted(dims.items()))
        run = self.runs.get(key)
        if run is not None:
            return run
        if len(self.runs) >= self.MAX_SHAPES:  # past the cap: the generic session, nothing remembered
            return self.generic
        from dlc.compiler.onnx_unroll import specialize, unroll_scans

        fixed = specialize(self.proto, dims)
        unrolled = unroll_scans(fixed)
        run = self.generic if unrolled is fixed else self.make(
            OrtSession(unrolled, device=self.device, threads=self.threads))
        self.runs[key] = run  # these sizes are not specialised again
        return run

    def __call__(self, feeds: Mapping[str, np.ndarray], *args, **kwargs):
        return self.runner_for(feeds)(feeds, *args, **kwargs)

    def commit(self, names: Iterable[str]) -> None:
        self.generic.commit(names)  # every runner shares one store


def _dim_inputs(proto) -> dict[str, list[tuple[int, str]]]:
    """Graph input → its (axis, dim name) pairs."""
    out = {}
    for vi in proto.graph.input:
        axes = [(i, d.dim_param) for i, d in enumerate(vi.type.tensor_type.shape.dim) if d.HasField("dim_param")]
        if axes:
            out[vi.name] = axes
    return out


def _check_shape(name: str, arr: np.ndarray, shape, bound: dict) -> None:
    """Fail early, naming the inputs, on a rank, fixed-dim or dim-name mismatch."""
    if shape is None:
        return
    shown = "[" + ", ".join(str(d) for d in shape) + "]"
    if arr.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, arr.shape)):
        raise DlcError("E0401", f"input `{name}` has shape {list(arr.shape)}, the model expects {shown}")
    for d, size in zip(shape, arr.shape):
        if isinstance(d, str) and d.isidentifier():
            seen = bound.setdefault(d, (size, name))
            if seen[0] != size:
                raise DlcError("E0401", f"input `{name}` has {d} = {size}, but input `{seen[1]}` has "
                                        f"{d} = {seen[0]}")


def _feed_summary(feeds: dict[str, np.ndarray]) -> str:
    return "inputs were " + ", ".join(f"`{k}`: {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text if len(text) <= 600 else text[:600] + " …"

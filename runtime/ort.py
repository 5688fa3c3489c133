"""Running exported models in onnxruntime (CPU).

:class:`OrtSession` wraps ``onnxruntime.InferenceSession`` with dlc's
conventions: feeds and results are dicts keyed by name, feeds the model
does not read are ignored (as by the interpreter, so one loop drives both
backends), feeds are converted to the dtypes the model declares (so Python
ints and float64 arrays work),
and onnxruntime failures become DlcError E0401 naming the input or the
model, never a raw onnxruntime traceback.  onnxruntime is imported lazily.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dlc.compiler.onnx_emit import check_runtime
from dlc.compiler.optional import import_optional
from dlc.grammar.errors import DlcError

# onnxruntime's type strings for the element types dlc exports
_NP = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64,
       "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


class OrtSession:
    """An onnxruntime session for one model (a ModelProto or its bytes).

    ``optimize`` selects ORT_ENABLE_ALL (default) or ORT_DISABLE_ALL graph
    optimisations; the tests run both, since the optimiser's fusions are a
    separate source of numerical differences and bugs."""

    def __init__(self, model, optimize: bool = True):
        ort = import_optional("onnxruntime", "the onnxruntime backend")
        check_runtime(ort.__version__)
        data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString(deterministic=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.log_severity_level = 3  # errors only: unused-initializer warnings are noise here
        # no busy-waiting between runs: the training loop does NumPy work between steps on the same cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(bytes(data), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DlcError("E0401", f"onnxruntime cannot load the model: {_short(exc)}") from exc
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        # inputs with an initializer (a training export's parameters and state): fed when given
        self.defaulted = {i.name: i for i in self.session.get_overridable_initializers()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run once; returns {output name: array} (all outputs unless ``outputs``)."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise DlcError("E0401", f"missing input{'s' if len(missing) > 1 else ''} "
                                    f"{', '.join(f'`{n}`' for n in missing)} for the ONNX model")
        converted: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[int, str]] = {}  # dim name → (size, the input that set it)
        given = [*self.inputs.items(), *((k, v) for k, v in self.defaulted.items() if k in feeds)]
        for name, meta in given:  # extra feeds are ignored, as by the interpreter
            arr = np.asarray(feeds[name])
            want = _NP.get(meta.type)
            if want is not None and arr.dtype != want:
                arr = arr.astype(want)
            _check_shape(name, arr, meta.shape, bound)
            converted[name] = arr
        names = self.output_names if outputs is None else list(outputs)
        try:
            results = self.session.run(names, converted)
        except Exception as exc:
            raise DlcError("E0401", f"onnxruntime failed: {_short(exc)}", hint=_feed_summary(converted)) from exc
        return dict(zip(names, results))


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

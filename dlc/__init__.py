"""dlc: a graph-first declarative deep-learning model compiler.

    import dlc
    m = dlc.load("specs/mlp.dl")          # parse, lower, infer shapes, initialise
    out = m.run({"x": x})                 # NumPy interpreter (or backend="onnxruntime")
    history = dlc.load("specs/mlp.dl", mode="train").train(epochs=5)
"""
import os as _os

# In a source checkout, `grammar/`, `compiler/` and `runtime/` sit beside this
# folder and setuptools maps them to `dlc.grammar`, ... (pyproject's package-dir).
# Python run from the checkout's root finds this folder before an installed
# (non-editable) dlc, so make the subpackages resolvable from here as well.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "grammar", "dl.lark")) and _checkout not in __path__:
    __path__.append(_checkout)

from dlc.grammar.errors import DlcError, DlcErrors  # noqa: E402

__all__ = ["DlcError", "DlcErrors", "Model", "compile", "load"]


def __getattr__(name: str):
    """``Model``, ``compile`` and ``load`` import the compiler on first use, so that
    ``import dlc`` (and every ``dlc`` command) starts without it."""
    if name in ("Model", "compile", "load"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'dlc' has no attribute {name!r}")

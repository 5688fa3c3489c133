"""dlc: a graph-first declarative deep-learning model compiler.

    import dlc
    m = dlc.load("specs/mlp.dl")          # parse, lower, infer shapes, initialise
    out = m.run({"x": x})                 # NumPy interpreter (or backend="onnxruntime")
    history = dlc.load("specs/mlp.dl", mode="train").train(epochs=5)
"""
from dlc.grammar.errors import DlcError, DlcErrors

from .model import Model, compile, load

__all__ = ["DlcError", "DlcErrors", "Model", "compile", "load"]

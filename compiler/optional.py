"""Optional dependencies: imported when a feature needs them, with a coded error
naming the pip extra that installs them (``dlc[ort]``, ``dlc[graphviz]``, ...)
instead of an ImportError traceback."""
from __future__ import annotations

import importlib
from types import ModuleType

from dlc.grammar.errors import DlcError

# module → the extra of pyproject.toml that installs it
EXTRAS = {"onnxruntime": "ort", "graphviz": "graphviz", "pygments": "pygments",
          "safetensors.numpy": "safetensors", "ray": "ray"}


def import_optional(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or E0004 saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module)
        module = module.split(".")[0]
        hint = f"pip install 'dlc[{extra}]'" if extra else f"pip install {module}"
        raise DlcError("E0004", f"{purpose} needs the Python package `{module}`, which is not installed",
                       hint=hint) from None

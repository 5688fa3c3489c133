"""Lowering: AST → typed IR graph (see module.py for the entry points)."""
from .module import Loaded, Lowered, compile_model, load_module, pick_model

__all__ = ["Loaded", "Lowered", "compile_model", "load_module", "pick_model"]

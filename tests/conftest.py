"""Every interpreter run in the test suite checks that each value has its declared type
(runtime/interpreter.py's debug mode), so any op sample or spec that breaks the
type system fails loudly instead of silently."""
import os

os.environ.setdefault("DLC_CHECK_TYPES", "1")

"""Lark's LALR tables, built once per grammar and reused across processes.

Building the tables for ``dl.lark`` takes about 0.1 s, longer than the rest of
``dlc check``; loading them back takes a few milliseconds.  Lark's own ``cache=``
option stores them (pickled, with the SHA-256 of grammar, options, Lark and
Python versions in the first line, checked on every load: a changed grammar
rebuilds).  The file goes into a per-user cache folder that only its owner can
write — never next to the grammar, whose folder may be a read-only install —
and ``DLC_PARSER_CACHE=0`` or an unusable folder turns caching off (the tables are
then built in memory, as without a cache).
"""
from __future__ import annotations

import hashlib
import os
import sys


def cache_dir() -> str | None:
    """The folder for cached parser tables, created private to the user, or None."""
    if os.environ.get("DLC_PARSER_CACHE", "1") == "0":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "dlc")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    # a folder someone else can write could hold a planted pickle: do not use it
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
        return None
    return path if os.access(path, os.W_OK | os.R_OK) else None


def cache_file(grammar: str) -> str | bool:
    """The ``cache=`` argument for ``lark.Lark``: a file named by the grammar's hash
    (several checkouts with different grammars do not evict each other), or False."""
    folder = cache_dir()
    if folder is None:
        return False
    digest = hashlib.sha256(grammar.encode()).hexdigest()[:20]
    return os.path.join(folder, f"dl-lalr-{digest}-py{sys.version_info[0]}{sys.version_info[1]}.lark")

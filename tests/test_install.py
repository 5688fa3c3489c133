"""The install: the core without its extras, the source checkout importable from
its root, the parser tables cached across processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlc.grammar.errors import DlcError

ROOT = Path(__file__).resolve().parent.parent


def test_checkout_root_imports_without_the_editable_finder():
    """`python -c "import dlc"` in the repository root finds the root's `dlc/` first; after a
    non-editable install no finder maps `dlc.grammar` to `grammar/`, so dlc/__init__.py must."""
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "for k in [k for k in sys.modules if k == 'dlc' or k.startswith('dlc.')]: del sys.modules[k]\n"
            "import dlc\n"
            "m = dlc.load('specs/mlp.dl')\n"
            "print(m.param_count(), dlc.__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    count, path = out.stdout.split()
    assert count == "4810" and Path(path).resolve() == ROOT / "dlc" / "__init__.py"


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    from dlc.compiler.optional import import_optional

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(DlcError) as err:
        import_optional("onnxruntime", "the onnxruntime backend")
    assert err.value.code == "E0004" and err.value.hint == "pip install 'dlc[ort]'"
    import dlc

    m = dlc.load(ROOT / "specs" / "xor.dl")
    with pytest.raises(DlcError) as err:
        m.run({"x": [[0.0, 1.0]]}, backend="onnxruntime")
    assert err.value.code == "E0004" and "dlc[ort]" in err.value.hint


def test_import_dlc_loads_no_compiler_and_no_heavy_module():
    """`import dlc` (every `dlc` command starts with it) stays cheap: the compiler loads on first use,
    onnx/onnxruntime/tqdm/scikit-learn only in the commands that need them, networkx only when a
    graph is converted or verified (not by `dlc check`)."""
    code = ("import sys, dlc, dlc.cli\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'tqdm', 'sklearn', 'scipy', 'networkx', 'numpy', 'lark') "
            "or m.startswith('dlc.compiler'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
    code = ("import sys\nfrom dlc.check import check\ncheck('specs/mlp.dl')\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'tqdm', 'sklearn', 'scipy', 'networkx'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


def _parse_in_fresh_process(env) -> subprocess.CompletedProcess:
    code = "from dlc.grammar.parse import parse\nprint(type(parse('model m() { input x: f32[2]\\n output y = x }')).__name__)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)


def test_parser_tables_are_cached_per_user_and_grammar(tmp_path, monkeypatch):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    first = _parse_in_fresh_process(env)
    assert first.returncode == 0 and first.stdout.strip() == "Module", first.stderr
    files = list((tmp_path / "dlc").glob("dl-lalr-*.lark"))
    assert len(files) == 1 and (tmp_path / "dlc").stat().st_mode & 0o077 == 0
    stamp = files[0].stat().st_mtime_ns
    second = _parse_in_fresh_process(env)
    assert second.returncode == 0 and second.stdout.strip() == "Module"
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt

    from dlc.grammar.parser_cache import cache_file

    grammar = (ROOT / "grammar" / "dl.lark").read_text()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_file(grammar) == str(files[0])
    assert cache_file(grammar + "\n// changed") != str(files[0])  # a changed grammar gets its own tables


def test_unusable_cache_folder_falls_back_to_building(tmp_path):
    (tmp_path / "dlc").write_text("a file where the folder should be")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    out = _parse_in_fresh_process(env)
    assert out.returncode == 0 and out.stdout.strip() == "Module" and out.stderr == ""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "other"), "DLC_PARSER_CACHE": "0"}
    assert _parse_in_fresh_process(env).returncode == 0 and not (tmp_path / "other").exists()

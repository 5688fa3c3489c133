"""The edit-compile loop: wall time of fresh `dlc` processes, and where their imports go.

    python benchmarks/startup.py [--runs 21] [SPEC]

Runs `dlc --help` and `dlc check SPEC` (default specs/mlp.dl) ``--runs`` times
each, interleaved, in fresh processes, and prints median and quartiles (as
hyperfine would); then one `python -X importtime` run of `dlc check`, listing
the slowest top-level imports.  The parser tables come from the per-user cache
(grammar/parser_cache.py) after the first run; `DLC_PARSER_CACHE=0` measures
without it.  The children run with Python's bytecode cache as on a user's machine
(``PYTHONDONTWRITEBYTECODE`` is dropped from their environment): with it set and
no ``__pycache__``, every run recompiles dlc's ~100 modules from source, which
costs ~0.13 s of each `dlc check`.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dlc() -> list[str]:
    return [sys.executable, "-m", "dlc"]


def wall_times(commands: dict[str, list[str]], runs: int, env=None) -> dict[str, tuple[list, list]]:
    """{command: (wall times, CPU times)}; the CPU time (user + system) of a single-threaded
    process is its wall time on an idle machine, and barely moves with the load of a shared one."""
    out = {k: ([], []) for k in commands}
    for _ in range(runs):
        for name, cmd in commands.items():  # interleaved: machine load hits every command alike
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, capture_output=True, env=env, check=False)
            out[name][0].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            out[name][1].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return out


def import_profile(cmd: list[str], top: int = 12, env=None) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the slowest imports of one run, outermost modules only."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        top_level = name.startswith(" ") and not name.startswith("  ")  # nested imports are indented further
        if cumulative.strip().isdigit() and top_level:
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="specs/mlp.dl")
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    commands = {"dlc --help": [*_dlc(), "--help"], f"dlc check {args.spec}": [*_dlc(), "check", args.spec]}
    user_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(commands[f"dlc check {args.spec}"], cwd=ROOT, capture_output=True, env=user_env)  # bytecode, cache
    for label, env in (("parser tables cached", user_env), ("no parser cache", {**user_env, "DLC_PARSER_CACHE": "0"})):
        print(f"\n{label}: {args.runs} fresh processes each (ms)\n")
        print("| command | wall median | wall p25 | wall p75 | wall min | CPU median |\n|---|---|---|---|---|---|")
        for name, (ts, cpu) in wall_times(commands, args.runs, env).items():
            q = statistics.quantiles(ts, n=4)
            print(f"| `{name}` | {statistics.median(ts) * 1e3:.0f} | {q[0] * 1e3:.0f} | {q[2] * 1e3:.0f} | "
                  f"{min(ts) * 1e3:.0f} | {statistics.median(cpu) * 1e3:.0f} |")
    print(f"\nslowest top-level imports of `dlc check {args.spec}` (cumulative ms, one run):\n")
    for us, name in import_profile(commands[f"dlc check {args.spec}"], env=user_env):
        print(f"  {us / 1e3:7.1f}  {name}")


if __name__ == "__main__":
    main()

"""The `dlc` command line: check, graph, summary, run, compile, train, export-weights, gradcheck, fmt.

This module holds the main group, error reporting, the shared options and the
inspection commands; ``cli_export`` (compile, export-weights) and ``cli_train``
(train, gradcheck) add theirs to ``main``.

Errors in a spec print as ``file:line:col`` + source line + caret, exit status 2;
a misused command line (unknown option, malformed ``--bind``, a dim the model
does not have) exits with status 64 (``EX_USAGE``).  A Python traceback appears
only with ``--debug``.  Messages are coloured on a terminal unless ``NO_COLOR``
is set (``--color always|never`` overrides).
"""
from __future__ import annotations

import functools
import os
import stat
import sys
from pathlib import Path

import click

from dlc.grammar.errors import DlcError, DlcErrors

EXIT_USER_ERROR = 2  # an error in the spec (or its data)
EXIT_USAGE = 64  # the command line itself is wrong (sysexits' EX_USAGE)


class UsageError(DlcError):
    """A wrong command line (not a wrong spec): rendered like any DlcError, exit status 64."""


def usage(message: str, hint: str | None = None) -> UsageError:
    return UsageError("E0110", message, hint=hint)


def use_color(stream=None) -> bool:
    """Colour when ``--color always``, or ``auto`` on a terminal without ``NO_COLOR``."""
    ctx = click.get_current_context(silent=True)
    choice = ctx.find_root().params.get("color", "auto") if ctx else "auto"
    if choice != "auto":
        return choice == "always"
    stream = stream or sys.stderr
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def echo_error(e) -> None:
    color = use_color()
    click.echo(e.render(color=color), err=True, color=color)


def _report(fn):
    """Turn DlcErrors into rendered messages and exit status 2 (64 for usage errors)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (DlcError, DlcErrors) as e:
            if debug:
                raise
            echo_error(e)
            sys.exit(EXIT_USAGE if isinstance(e, UsageError) else EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _bindings(pairs: tuple[str, ...], what: str) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise usage(f"{what} `{pair}` is not of the form NAME=VALUE")
        name = name.strip()
        if name in out:  # two values for one name: which one the user meant is a guess
            raise usage(f"{what} `{name}` is given twice (`{name}={out[name]}` and `{pair.strip()}`)",
                        hint="give each name once")
        out[name] = value.strip()
    return out


def _int_bindings(pairs, what) -> dict[str, int]:
    out = {}
    for k, v in _bindings(pairs, what).items():
        try:
            out[k] = int(v)
        except ValueError:
            raise usage(f"{what} `{k}={v}`: `{v}` is not an integer") from None
        if out[k] <= 0:
            raise usage(f"{what} `{k}={v}`: dims must be positive")
    return out


def _hyper(pairs) -> dict:
    """--set name=value: model hyperparameters (ints, floats, true/false, strings)."""
    out = {}
    for k, v in _bindings(pairs, "--set").items():
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                pass
        else:
            out[k] = {"true": True, "false": False}.get(v, v)
    return out


model_options = [
    click.option("--model", "model_name", default=None, help="Which model of the file (default: the last one)."),
    click.option("--set", "hyper", multiple=True, metavar="NAME=VALUE", help="Override a model hyperparameter."),
]


def _with_model_options(fn):
    for opt in reversed(model_options):
        fn = opt(fn)
    return fn


def _load(path, model_name, hyper, mode="eval", checkpoint=None):
    import dlc

    return dlc.load(path, mode=mode, model=model_name, checkpoint=checkpoint, **_hyper(hyper))


UNTRAINED_NOTE = "note: the weights are untrained (initialised from the spec); pass --checkpoint DIR for trained ones"


def _checkpoint_option(what: str):
    return click.option("--checkpoint", type=click.Path(), default=None,
                        help=f"{what} the trained parameters and state of a checkpoint folder or manifest "
                             "(the best epoch when kept), or of a .safetensors file of `dlc export-weights`.")


class _Group(click.Group):
    """click's own usage errors (unknown option or command, bad choice) exit with 64, not 2."""

    def make_context(self, *args, **kwargs):
        with _usage_status():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_status():
            return super().invoke(ctx)


class _usage_status:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, click.UsageError):
            exc.exit_code = EXIT_USAGE
        return False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory budget, e.g. 2G (default: half the physical memory; env DLC_MAX_MEMORY).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colour error messages (auto: on a terminal, unless NO_COLOR is set).")
@click.version_option(package_name="dlc")
def main(debug, max_memory, color):
    """dlc — compile declarative .dl model specs to graphs, NumPy and ONNX."""
    if max_memory is not None:
        from dlc.compiler import budget

        try:
            budget.set_budget(budget.parse_size(max_memory))
        except DlcError as e:
            echo_error(usage(e.message, e.hint))
            sys.exit(EXIT_USAGE)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--set", "hyper", multiple=True, metavar="NAME=VALUE",
              help="Set a model hyperparameter (train blocks read them too) before checking.")
@_report
def check(files, hyper):
    """Parse and type-check FILES; report every error found."""
    from dlc.check import check as check_file

    failed = 0
    values = _hyper(hyper)
    for f in files:
        try:
            click.echo(f"{f}: ok: {check_file(f, **values)}")
        except (DlcError, DlcErrors) as e:
            failed += 1
            echo_error(e)
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) have errors", err=True)
        sys.exit(EXIT_USER_ERROR)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "json", "svg", "png"]), default="text",
              show_default=True, help="svg/png are rendered by Graphviz (extra dlc[graphviz] and the `dot` program).")
@click.option("-o", "output", type=click.Path(), default=None, help="Write to this file (needed for png).")
@click.option("--force", is_flag=True, help="With -o: overwrite an existing file.")
@click.option("--grad", is_flag=True, help="Include the backward nodes.")
@click.option("--train", "train_step", is_flag=True, help="The whole training step, optimizer included.")
@click.option("-O", "opt_level", type=click.IntRange(0, 2), default=0, show_default=True,
              help="Optimization level: 0 the graph as built, 1 after the cleanup passes (what onnxruntime "
                   "receives), 2 after fusion too (what the NumPy interpreter runs).")
@_with_model_options
@_report
def graph(file, fmt, output, force, grad, train_step, opt_level, model_name, hyper):
    """Print (or draw) the computation graph of FILE."""
    from dlc.compiler import printer
    from dlc.compiler.passes.pipeline import optimize
    from dlc.runtime.files import check_target, write_atomic

    if fmt == "png" and not output:
        raise usage("--format png writes a binary file: give it with -o FILE.png")
    if output and check_target(Path(output)) and not force:  # before the work; a drawing does not say who made it
        raise DlcError("E0002", f"refusing to overwrite `{output}`: it exists",
                       hint="choose another path, or pass --force to replace it")
    m = _load(file, model_name, hyper, mode="train" if (grad or train_step) else "eval")
    g = m.train_graph(optimizer=train_step) if (grad or train_step) else m.graph
    g = optimize(g, opt_level, "numpy")
    if fmt in ("svg", "png"):
        from dlc.compiler.dot import render

        data = render(printer.to_dot(g), fmt)
        if output:
            write_atomic(Path(output), data)
            click.echo(f"wrote {output} ({len(data):,} bytes)")
        else:
            click.echo(data.decode("utf-8"))
        return
    text = {"text": printer.to_text, "dot": printer.to_dot, "json": printer.to_json}[fmt](g)
    if output:
        write_atomic(Path(output), (text + "\n").encode("utf-8"))
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_with_model_options
@_report
def summary(file, fmt, model_name, hyper):
    """Per-layer table in execution order: type, output types, parameters, state, FLOPs per example."""
    import json

    from dlc.compiler.summary import summary_json, summary_table

    s = _load(file, model_name, hyper).summary()
    click.echo(summary_table(s) if fmt == "text" else json.dumps(summary_json(s), indent=2))


@main.command()
@click.argument("file", type=click.Path())
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="Feed an input from a .npy file.")
@click.option("--bind", "binds", multiple=True, metavar="DIM=N", help="Value of a symbolic dim for random inputs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Save the outputs to an .npz file.")
@click.option("--force", is_flag=True, help="With --out: overwrite an existing file that dlc did not write.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN and Inf in --input files.")
@click.option("--backend", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True)
@_checkpoint_option("Run with")
@_with_model_options
@_report
def run(file, inputs, binds, seed, out, force, allow_nonfinite, backend, checkpoint, model_name, hyper):
    """Run FILE forward on given or random inputs."""
    from dlc.runtime.finite import check_finite
    from dlc.runtime.feeds import random_feeds
    from dlc.runtime.npy_file import load_npy

    m = _load(file, model_name, hyper, checkpoint=checkpoint)
    if checkpoint is None:
        click.echo(UNTRAINED_NOTE, err=True)
    if out:
        from dlc.runtime.npz_file import check_out

        check_out(Path(out), force=force)  # before the work, not after it
    feeds = {}
    for name, path in _bindings(inputs, "--input").items():
        feeds[name] = load_npy(Path(path), f"the file for input `{name}`")
        if not allow_nonfinite:
            check_finite(feeds[name], f"input `{name}` (from `{path}`)")
    unknown = set(feeds) - set(m.inputs)
    if unknown:
        raise usage(f"the model has no input `{sorted(unknown)[0]}`", hint=f"its inputs are: {', '.join(m.inputs)}")
    symbolic = m.symbolic_dims()
    dims = {name: 2 for name in symbolic}
    bound = _int_bindings(binds, "--bind")
    for name in bound:
        if name not in symbolic:
            from dlc.grammar.errors import suggest

            listing = f"its symbolic dims are {', '.join(symbolic)}" if symbolic else "its inputs have no symbolic dims"
            same_letters = [d for d in symbolic if d.lower() == name.lower()]
            close = f"did you mean `{same_letters[0]}`?" if same_letters else suggest(name, symbolic)
            raise usage(f"--bind {name}=...: the model's inputs have no dim `{name}`",
                        hint=f"{close} ({listing})" if close else listing)
    dims.update(bound)
    for name, arr in feeds.items():
        dims.update(m.dims_from(name, arr))
    generated = random_feeds(m.graph, dims, seed)
    missing = {k: v for k, v in generated.items() if k not in feeds}
    feeds.update(missing)
    results = m.run(feeds, seed=seed, backend=backend)
    for name, arr in results.items():
        click.echo(f"{name}: {arr.dtype}{list(arr.shape)}  {_describe(arr)}")
    if out:
        from dlc.runtime.npz_file import write_outputs

        write_outputs(Path(out), results, force=force)
        click.echo(f"saved {len(results)} output(s) to {out}")


def _describe(arr) -> str:
    if arr.size == 0:
        return "(empty)"
    if arr.dtype.kind in "fc":
        return f"mean {arr.mean():.4g}  std {arr.std():.4g}  min {arr.min():.4g}  max {arr.max():.4g}"
    if arr.size <= 8:
        return str(arr.tolist())
    return f"min {arr.min()}  max {arr.max()}"


@main.command(name="fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--check", "check_only", is_flag=True, help="Change nothing; exit 1 when a file is not formatted.")
@_report
def fmt_cmd(files, check_only):
    """Rewrite FILES in the canonical layout (comments kept); --check only reports."""
    from dlc.grammar.formatter import format_source
    from dlc.grammar.parse import read_source

    from dlc.runtime.files import write_atomic

    unformatted, failed = [], 0
    for f in files:
        try:
            text = read_source(f)
            formatted = format_source(text, f)
            if formatted != text and not check_only:  # atomically, keeping the file's permissions
                write_atomic(Path(f), formatted.encode("utf-8"), mode=stat.S_IMODE(os.stat(f).st_mode))
        except (DlcError, DlcErrors) as e:
            failed += 1
            echo_error(e)
            continue
        if formatted != text:
            unformatted.append(f)
    for f in unformatted:
        click.echo(f"{'would reformat' if check_only else 'reformatted'} {f}")
    if failed:
        sys.exit(EXIT_USER_ERROR)
    if check_only and unformatted:
        click.echo(f"{len(unformatted)} of {len(files)} file(s) would be reformatted", err=True)
        sys.exit(1)



# the command groups of their own modules register themselves on `main`
from dlc import cli_export, cli_train  # noqa: E402,F401

if __name__ == "__main__":  # `python -m dlc.cli`: the importable module's group, which holds every command
    from dlc.cli import main as _main

    _main()

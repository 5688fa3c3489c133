"""The `dlc` command line: check, graph, summary, run, compile, train, gradcheck.

User errors print as ``file:line:col`` + source line + caret, exit status 2;
a Python traceback appears only with ``--debug``.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
import numpy as np

from dlc.grammar.errors import DlcError, DlcErrors

EXIT_USER_ERROR = 2


def _report(fn):
    """Turn DlcErrors into rendered messages and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (DlcError, DlcErrors) as e:
            if debug:
                raise
            click.echo(e.render(), err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _bindings(pairs: tuple[str, ...], what: str) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise DlcError("E0110", f"{what} `{pair}` is not of the form NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _int_bindings(pairs, what) -> dict[str, int]:
    out = {}
    for k, v in _bindings(pairs, what).items():
        try:
            out[k] = int(v)
        except ValueError:
            raise DlcError("E0110", f"{what} `{k}={v}`: `{v}` is not an integer") from None
        if out[k] <= 0:
            raise DlcError("E0110", f"{what} `{k}={v}`: dims must be positive")
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


def _load(path, model_name, hyper, mode="eval"):
    import dlc

    return dlc.load(path, mode=mode, model=model_name, **_hyper(hyper))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory budget, e.g. 2G (default: half the physical memory; env DLC_MAX_MEMORY).")
@click.version_option(package_name="dlc")
def main(debug, max_memory):
    """dlc — compile declarative .dl model specs to graphs, NumPy and ONNX."""
    if max_memory is not None:
        from dlc.compiler import budget

        try:
            budget.set_budget(budget.parse_size(max_memory))
        except DlcError as e:
            click.echo(e.render(), err=True)
            sys.exit(EXIT_USER_ERROR)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@_report
def check(files):
    """Parse and type-check FILES; report every error found."""
    from dlc.model import check as check_file

    failed = 0
    for f in files:
        try:
            click.echo(f"{f}: ok: {check_file(f)}")
        except (DlcError, DlcErrors) as e:
            failed += 1
            click.echo(e.render(), err=True)
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) have errors", err=True)
        sys.exit(EXIT_USER_ERROR)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "json"]), default="text")
@click.option("--grad", is_flag=True, help="Include the backward nodes.")
@click.option("--train", "train_step", is_flag=True, help="The whole training step, optimizer included.")
@_with_model_options
@_report
def graph(file, fmt, grad, train_step, model_name, hyper):
    """Print the computation graph of FILE."""
    from dlc.compiler import printer

    m = _load(file, model_name, hyper, mode="train" if (grad or train_step) else "eval")
    g = m.train_graph(optimizer=train_step) if (grad or train_step) else m.graph
    click.echo({"text": printer.to_text, "dot": printer.to_dot, "json": printer.to_json}[fmt](g))


@main.command()
@click.argument("file", type=click.Path())
@_with_model_options
@_report
def summary(file, model_name, hyper):
    """Per-layer table: output shapes, parameters, FLOPs per example."""
    from dlc.compiler.summary import summary_table

    m = _load(file, model_name, hyper)
    click.echo(summary_table(m.graph, m.params))


@main.command()
@click.argument("file", type=click.Path())
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="Feed an input from a .npy file.")
@click.option("--bind", "binds", multiple=True, metavar="DIM=N", help="Value of a symbolic dim for random inputs.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Save the outputs to an .npz file.")
@click.option("--force", is_flag=True, help="With --out: overwrite an existing file that dlc did not write.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN and Inf in --input files.")
@click.option("--backend", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True)
@_with_model_options
@_report
def run(file, inputs, binds, seed, out, force, allow_nonfinite, backend, model_name, hyper):
    """Run FILE forward on given or random inputs."""
    from dlc.runtime.finite import check_finite
    from dlc.runtime.interpreter import random_feeds
    from dlc.runtime.npy_file import load_npy

    m = _load(file, model_name, hyper)
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
        raise DlcError("E0110", f"the model has no input `{sorted(unknown)[0]}`",
                       hint=f"its inputs are: {', '.join(m.inputs)}")
    dims = {name: 2 for name in m.symbolic_dims()}
    dims.update(_int_bindings(binds, "--bind"))
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


def _describe(arr: np.ndarray) -> str:
    if arr.size == 0:
        return "(empty)"
    if arr.dtype.kind in "fc":
        return f"mean {arr.mean():.4g}  std {arr.std():.4g}  min {arr.min():.4g}  max {arr.max():.4g}"
    if arr.size <= 8:
        return str(arr.tolist())
    return f"min {arr.min()}  max {arr.max()}"


@main.command(name="compile")
@click.argument("file", type=click.Path())
@click.option("--onnx", "to_onnx", is_flag=True, required=True, help="Write an ONNX model.")
@click.option("--train", "train_step", is_flag=True, help="Export the training step instead of inference.")
@click.option("--group", default=None, help="With --train: which step group (default: the first).")
@click.option("-o", "output", type=click.Path(), default=None, help="Output path (default: next to FILE).")
@click.option("--force", is_flag=True, help="Overwrite an existing file that dlc did not write.")
@_with_model_options
@_report
def compile_cmd(file, to_onnx, train_step, group, output, force, model_name, hyper):
    """Compile FILE to ONNX (inference graph, or --train for the training step)."""
    from dlc.runtime.onnx_file import write_onnx

    m = _load(file, model_name, hyper, mode="train" if train_step else "eval")
    if group and not train_step:
        raise DlcError("E0110", "--group picks the step group of a training step: use it with --train")
    suffix = (f".{group}" if group else "") + (".train.onnx" if train_step else ".onnx")
    target = Path(output) if output else Path(file).with_suffix(suffix)
    proto = m.to_onnx(train=train_step, group=group)
    write_onnx(proto, target, force=force)
    click.echo(f"wrote {target} ({target.stat().st_size:,} bytes, {len(proto.graph.node)} nodes)")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--epochs", type=int, default=None, help="Override the train block's epochs.")
@click.option("--seed", type=int, default=None, help="Override the train block's seed.")
@click.option("--checkpoint", type=click.Path(), default=None, help="Directory for per-epoch checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint directory.")
@click.option("--backend", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN and Inf in the data set.")
@_with_model_options
@_report
def train(file, epochs, seed, checkpoint, resume, backend, no_progress, allow_nonfinite, model_name, hyper):
    """Train FILE as its train block says."""
    from dlc.runtime.train import train as run_training

    if resume and not checkpoint:
        raise DlcError("E0110", "--resume needs --checkpoint DIR")
    m = _load(file, model_name, hyper, mode="train")
    run_training(m, epochs=epochs, seed=seed, checkpoint=checkpoint, resume=resume, backend=backend,
                 progress=not no_progress, echo=click.echo, allow_nonfinite=allow_nonfinite)
    if not checkpoint:
        click.echo("(parameters not saved: pass --checkpoint DIR to keep them and to resume)")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--tol", type=float, default=1e-4, show_default=True, help="Max relative error allowed.")
@click.option("--seed", default=0, show_default=True)
@click.option("--loss", "loss_name", default=None, help="The scalar output to differentiate (default: the train "
                                                         "block's first loss, or `loss`).")
@_with_model_options
@_report
def gradcheck(file, tol, seed, loss_name, model_name, hyper):
    """Check symbolic gradients of every parameter against float64 central differences."""
    from dlc.runtime.gradcheck import gradcheck as run_check

    m = _load(file, model_name, hyper, mode="train")
    worst = run_check(m, loss=loss_name, seed=seed, echo=click.echo)
    bad = {k: v for k, v in worst.items() if v > tol}
    if bad:
        click.echo(f"{len(bad)} parameter(s) over tolerance {tol:g}", err=True)
        sys.exit(1)
    click.echo(f"all {len(worst)} parameters within {tol:g}")


if __name__ == "__main__":
    main()

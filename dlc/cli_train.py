"""`dlc train` and `dlc gradcheck` (registered on `dlc.cli.main`)."""
from __future__ import annotations

import sys

import click

from dlc.cli import _load, _report, _with_model_options, main, usage


@main.command()
@click.argument("file", type=click.Path())
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Override the train block's epochs.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the train block's seed.")
@click.option("--checkpoint", type=click.Path(), default=None, help="Directory for per-epoch checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint directory.")
@click.option("--backend", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@click.option("--log", "log_file", type=click.Path(), default=None,
              help="Also write the per-epoch metrics to FILE (.jsonl: JSON lines, else CSV); a checkpoint "
                   "folder always gets metrics.csv and metrics.jsonl.")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Data-parallel training on N Ray workers (pip install 'dlc[ray]').")
@click.option("--address", default=None, metavar="ADDR",
              help="With --workers: join the Ray cluster at ADDR (default: start Ray on this machine).")
@click.option("--device", default="cpu", show_default=True,
              help="Where onnxruntime runs the steps: cpu, or cuda[:N] (onnxruntime-gpu).")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN and Inf in the data set.")
@_with_model_options
@_report
def train(file, epochs, seed, checkpoint, resume, backend, no_progress, log_file, workers, address, device,
          allow_nonfinite, model_name, hyper):
    """Train FILE as its train block says."""
    from dlc.runtime.train import train as run_training

    if resume and not checkpoint:
        raise usage("--resume needs --checkpoint DIR")
    if address and workers is None:
        raise usage("--address needs --workers N")
    if workers is not None and workers < 1:
        raise usage(f"--workers must be at least 1, got {workers}")
    m = _load(file, model_name, hyper, mode="train")
    debug = click.get_current_context().find_root().params.get("debug", False)
    run_training(m, epochs=epochs, seed=seed, checkpoint=checkpoint, resume=resume, backend=backend,
                 device=device, progress=not no_progress, echo=click.echo, log=log_file, workers=workers,
                 address=address, debug=debug, allow_nonfinite=allow_nonfinite)
    if not checkpoint:
        click.echo("(parameters not saved: pass --checkpoint DIR to keep them and to resume)")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--tol", type=float, default=1e-4, show_default=True, help="Max relative error allowed.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
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


"""`dlc compile` and `dlc export-weights`: ONNX models and .safetensors weights (registered on `dlc.cli.main`)."""
from __future__ import annotations

from pathlib import Path

import click

from dlc.cli import UNTRAINED_NOTE, _checkpoint_option, _load, _report, _with_model_options, main, usage


@main.command(name="compile")
@click.argument("file", type=click.Path())
@click.option("--onnx", "to_onnx", is_flag=True, help="Write an ONNX model (the default and only format).")
@click.option("--train", "train_step", is_flag=True, help="Export the self-contained training step.")
@click.option("--grad", "grad_step", is_flag=True, help="Export loss, metrics and one gradient per parameter.")
@click.option("--optimizer-step", "update_step", is_flag=True,
              help="Export the optimizer update alone (gradients in, new parameters and slots out).")
@click.option("--group", default=None, help="With --train/--grad/--optimizer-step: which step group "
                                            "(default: the first).")
@click.option("--outputs", default=None, metavar="A,B", help="Inference outputs to export (default: every "
                                                             "output but the train block's losses and metrics).")
@_checkpoint_option("Export")
@click.option("-o", "output", type=click.Path(), default=None, help="Output path (default: next to FILE).")
@click.option("--force", is_flag=True, help="Overwrite an existing file that dlc did not write.")
@_with_model_options
@_report
def compile_cmd(file, to_onnx, train_step, grad_step, update_step, group, outputs, checkpoint, output, force,
                model_name, hyper):
    """Compile FILE to ONNX: the inference model, or the training step (--train), the gradients (--grad) or
    the optimizer update (--optimizer-step)."""
    from dlc.runtime.onnx_file import write_onnx

    chosen = [k for k, on in (("train", train_step), ("grad", grad_step), ("update", update_step)) if on]
    if len(chosen) > 1:
        raise usage("--train, --grad and --optimizer-step each write one file: choose one")
    kind = chosen[0] if chosen else "inference"
    if group and kind == "inference":
        raise usage("--group picks the step group of a training export: use it with --train, "
                                "--grad or --optimizer-step")
    if outputs and kind != "inference":
        raise usage("--outputs chooses the inference model's outputs; training exports have fixed ones")
    wanted = [o.strip() for o in outputs.split(",") if o.strip()] if outputs else None
    if outputs is not None and not wanted:
        raise usage("--outputs is empty", hint="name outputs: --outputs probs,logits")
    m = _load(file, model_name, hyper, mode="eval" if kind == "inference" else "train", checkpoint=checkpoint)
    suffix = (f".{group}" if group else "") + {"inference": ".onnx", "train": ".train.onnx", "grad": ".grad.onnx",
                                               "update": ".update.onnx"}[kind]
    target = Path(output) if output else Path(file).with_suffix(suffix)
    proto = m.to_onnx(kind, group=group, outputs=wanted)
    write_onnx(proto, target, force=force)
    defaulted = {t.name for t in proto.graph.initializer}
    fed = [i.name for i in proto.graph.input if i.name not in defaulted]
    click.echo(f"wrote {target} ({target.stat().st_size:,} bytes, {len(proto.graph.node)} nodes; "
               f"fed with {', '.join(fed) or 'nothing'})")
    if checkpoint is None:
        click.echo(UNTRAINED_NOTE, err=True)


@main.command(name="export-weights")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "output", type=click.Path(), required=True, help="The .safetensors file to write.")
@click.option("--last", is_flag=True, help="The last epoch's weights, not the best epoch's.")
@_report
def export_weights(checkpoint, output, last):
    """Write the trained parameters and state of CHECKPOINT (a folder or manifest) under their dlc
    names as a .safetensors file (needs `pip install 'dlc[safetensors]'`)."""
    from dlc.runtime.weights import checkpoint_weights, write_safetensors

    if Path(output).suffix != ".safetensors":
        raise usage(f"`{output}` does not end in .safetensors", hint="-o weights.safetensors")
    params, state, meta = checkpoint_weights(Path(checkpoint), best=not last)
    size = write_safetensors(Path(output), params, state, meta)
    click.echo(f"wrote {output} ({size:,} bytes: {len(params)} parameters, {len(state)} state tensors, "
               f"epoch {meta['epoch']})")


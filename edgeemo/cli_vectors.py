"""The vector commands: export-vector, inspect, layers, compare-methods (added in cli.py)."""

from __future__ import annotations

import click

from . import models
from .cli_common import Progress, json_option, model_argument, print_json, say, seed_option
from .errors import require

METHOD_HELP = ("dialogue: the model reads assistant replies that differ only in tone (for chat); "
               "generation: it writes stories and its own text is read back; comprehension: it "
               "reads vignettes.")
method_option = click.option("--method", type=click.Choice(["dialogue", "generation",
                                                          "comprehension"]),
                             default="dialogue", show_default=True, help=METHOD_HELP)
pooling_option = click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean",
                              show_default=True, help="Mean over content tokens (sinks left "
                                                      "out), or the last token.")


def layer_table(report: dict) -> str:
    lines = [f"{report['model']} · {report['method']} · chance {report['chance']:.2f}",
             f"{'state':>5} {'depth':>6} {'accuracy':>9} {'cosine':>7} {'recentred':>9} "
             f"{'fisher':>7} {'anisotropy':>10} {'norm':>7}"]
    lo, hi = report["best_band"]
    for i, k in enumerate(report["layers"]):
        aniso = report.get("anisotropy", [float("nan")] * len(report["layers"]))[i]
        mark = " *" if lo <= k <= hi else ""
        lines.append(f"{k:>5} {report['depth'][i]:>6.2f} {report['accuracy'][i]:>9.3f} "
                     f"{report['cosine'][i]:>7.3f} {report['cosine_recentred'][i]:>9.3f} "
                     f"{report['fisher'][i]:>7.3f} {aniso:>10.3f} {report['residual_norm'][i]:>7.0f}{mark}")
    lines.append(f"best band (*): hidden states {lo}-{hi} = llama.cpp layers {lo - 1}-{hi - 1}, "
                 f"depth {report['best_band_depth'][0]:.2f}-{report['best_band_depth'][1]:.2f}")
    return "\n".join(lines)


@click.command()
@model_argument
@method_option
@pooling_option
@seed_option("Seed for story sampling (same seed, same vector).")
@click.option("--json", "json_", is_flag=True, help="Print the report as one JSON document.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw the curve to this PNG file.")
def layers(model, method, pooling, seed, json_, plot):
    """Where emotions live: per-layer separation scores against relative depth."""
    from . import analysis, make

    if plot:
        require("eval", "matplotlib")
    resolved = models.ensure(model, say=say)
    _, report = make.layer_report(resolved, method, pooling=pooling, seed=seed,
                                  progress=Progress(), say=say)
    if plot:
        analysis.plot_layers([report], plot)
    if json_:
        print_json(report)
    else:
        click.echo(layer_table(report))
        path = make.report_path(resolved, method)
        click.echo(f"saved {path}" + (f" and {plot}" if plot else ""), err=True)


@click.command(name="compare-methods")
@model_argument
@seed_option("Seed for story sampling (same seed, same vector).")
@json_option
def compare_methods(model, seed, json_):
    """Generation vs comprehension: per-emotion separation (cross-validated recall of each
    emotion at each method's best band), a Mann-Whitney U test and Cohen's d."""
    from . import make

    require("eval", "scipy")
    result = make.compare_methods(models.ensure(model, say=say), seed=seed,
                                  progress=Progress(), say=say)
    if json_:
        print_json(result)
        return
    seps = {m: r["separation"] for m, r in result["methods"].items()}
    click.echo(f"{'emotion':14} {'generation':>10} {'comprehension':>13}")
    for e in seps["generation"]:
        click.echo(f"{e:14} {seps['generation'][e]:>10.3f} {seps['comprehension'][e]:>13.3f}")
    t = result["test"]
    for method, r in result["methods"].items():
        click.echo(f"{method}: best band {r['best_band'][0]}-{r['best_band'][1]} "
                   f"(depth {r['best_band_depth'][0]:.2f}-{r['best_band_depth'][1]:.2f}), "
                   f"peak accuracy {r['peak_accuracy']:.3f}")
    click.echo(f"per-emotion recall over each method's band: generation {t['mean_a']:.3f} "
               f"vs comprehension {t['mean_b']:.3f}; Mann-Whitney U = {t['mann_whitney_u']:.1f}, "
               f"p = {t['p_value']:.3g}; Cohen's d = {t['cohens_d']:.2f} (n = {t['n']})")


def parse_layer_range(text: str) -> tuple[int, int] | None:
    if text == "auto":
        return None
    try:
        a, b = (int(x) for x in text.split("-", 1)) if "-" in text else (int(text),) * 2
    except ValueError:
        raise click.BadParameter(f"'{text}' is not 'auto' or a range like 12-16") from None
    if not 1 <= a <= b:
        raise click.BadParameter(f"'{text}': layers start at 1 and the range must go upwards")
    return a, b


@click.command(name="export-vector")
@click.option("--emotion", "-e", help="Emotion or concept (fear, joy, calm…); see --all.")
@click.option("--all", "all_", is_flag=True, help="Write vectors for all 20 emotions.")
@click.option("--model", "-m", help="Model name or .gguf path (default: smollm2-135m-instruct).")
@click.option("--method", type=click.Choice(["dialogue", "generation", "comprehension"]),
              help=METHOD_HELP + " Default: dialogue, as the prebuilt vectors; generation for a "
                                 "concept that is not one of the 20 emotions; for --stimuli, "
                                 "the method its records are shaped for.")
@click.option("--layers", "layer_spec", default="auto", show_default=True,
              help="llama.cpp layers A-B (tensors direction.A … direction.B), or auto: the band "
                   "where emotions separate best (for the prebuilt vectors' recipe, their band, "
                   "which that search found, so only those layers are read).")
@click.option("--strength", type=float, help="Recommended strength stored in the file, as a "
                                              "fraction of each layer's residual norm. Default: "
                                              "the calibrated strength of the prebuilt vector "
                                              "made the same way, else 0.08.")
@click.option("--stimuli", "stimuli_file", type=click.Path(exists=True, dir_okay=False),
              help="Your own JSONL texts ({\"emotion\":…, \"text\":…}, with neutral ones).")
@pooling_option
@click.option("--baseline", type=click.Choice(["grand", "neutral"]),
              help="Subtract the mean of all emotions (the default when the texts hold two or "
                   "more), or the neutral texts' mean.")
@click.option("--denoise", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Project out this many top principal components of neutral text.")
@seed_option("Seed for story sampling (same seed, same vector).")
@click.option("-o", "--output", type=click.Path(), help="Output file (a directory with --all). "
                                                      "Default: the store, where chat finds it.")
def export_vector(emotion, all_, model, method, layer_spec, strength, stimuli_file, pooling,
                  baseline, denoise, seed, output):
    """Extract emotion vectors and write them as llama.cpp GGUF control vectors.

    \b
    Examples:
      edgeemo export-vector --emotion fear
      edgeemo export-vector --all --method comprehension
      edgeemo export-vector --emotion nostalgia          # any concept: the model writes stories
      edgeemo export-vector -e fear --layers 12-16 -o fear.gguf
      llama-cli -m model.gguf --control-vector fear.gguf      # stock llama.cpp, scale 1.0
    """
    from .make import check_output, check_settings, make_vectors

    if all_ == bool(emotion):
        raise click.UsageError("give --emotion NAME or --all")
    layers = parse_layer_range(layer_spec)
    check_settings(None if all_ else [emotion], method=method, strength=strength,
                   baseline=baseline, denoise=denoise, layers=layers,
                   stimuli_file=stimuli_file)                               # before slow work
    if output is not None:
        check_output(output, directory=all_)
    resolved = models.ensure(model, say=say)
    paths = make_vectors(resolved, None if all_ else [emotion], method=method, layers=layers,
                         strength=strength, stimuli_file=stimuli_file, pooling=pooling,
                         baseline=baseline, denoise=denoise, seed=seed, output=output,
                         progress=Progress(), say=say)
    for path in paths:
        click.echo(path)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
def inspect(path, json_):
    """Show a control vector's layers, norms and edgeemo metadata."""
    from .vectors import ControlVector

    vec = ControlVector.from_gguf(path)
    info = {"path": str(path), "model_hint": vec.model_hint, "n_embd": vec.n_embd,
            "layers": vec.layers,
            "norms": {str(n): round(float((d.astype("float64") ** 2).sum() ** 0.5), 4)
                      for n, d in vec.directions.items()},
            "metadata": vec.metadata}
    if json_:
        print_json(info)
        return
    click.echo(f"{path}: control vector for {vec.model_hint} (n_embd {vec.n_embd}), "
               f"layers {vec.layers[0]}-{vec.layers[-1]} ({len(vec.layers)} tensors)")
    for key, value in vec.metadata.items():
        if isinstance(value, list):
            value = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in value)
        click.echo(f"  {key:16} {value}")
    click.echo("  tensor norms     " + ", ".join(f"{n}:{v:.2f}" for n, v in info["norms"].items()))

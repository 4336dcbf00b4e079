"""What every edgeemo command shares: the group that turns errors into one line, progress on
stderr, JSON output, and the options that mean the same in every command."""

from __future__ import annotations

import json
import math
import os
import sys

import click

from . import emotions, models, writes
from .errors import EdgeemoError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Group(click.Group):
    """Turns EdgeemoError into a one-line error (exit 1), Ctrl-C into exit 130 and SIGTERM into
    exit 143. Both signals are raised as exceptions (``writes.signals_handled``), so every
    temporary file is removed on the way out and a commit in progress finishes first."""

    def invoke(self, ctx):
        try:
            with writes.signals_handled():
                return super().invoke(ctx)
        except EdgeemoError as exc:
            if os.environ.get("EDGEEMO_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            click.echo("\nterminated" if isinstance(exc, writes.Terminated) else "\ninterrupted",
                       err=True)
            sys.exit(143 if isinstance(exc, writes.Terminated) else 130)


def say(message: str) -> None:
    """A step of the work, on stderr."""
    click.echo(f"edgeemo: {message}", err=True)


def print_json(data) -> None:
    """One JSON document on stdout; a non-finite number is written as null (JSON has no NaN)."""
    click.echo(json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False,
                          ensure_ascii=False))


def json_safe(data):
    """``data`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


class Progress:
    """``progress(label, done, total)``, the library's callback for long loops, drawn as click's
    progress bar on stderr (on a terminal; elsewhere each label is printed once)."""

    def __init__(self):
        self.bar = None
        self.label = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.bar is None or label != self.label:
            self.close()
            self.bar = click.progressbar(length=total, label=f"edgeemo: {label}", file=sys.stderr)
            self.bar.__enter__()
            self.label = label
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.label = None, None


model_argument = click.argument("model", required=False)
json_option = click.option("--json", "json_", is_flag=True, help="Print one JSON document.")


def seed_option(what: str = "Sampling seed (same seed, same text)."):
    """The one --seed option (0 to 2**32 - 1, the seeds llama.cpp takes); ``what`` says what it
    seeds in that command."""
    return click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0,
                        show_default=True, help=what)
threads_option = click.option("--threads", type=click.IntRange(1, 256),
                              help="llama.cpp threads (default: one per core; on a machine busy "
                                   "with other work 1 is much faster).")


def emotion_list(spec: str) -> list[str]:
    """``a,b,c`` or ``all`` -> canonical emotion names, each once."""
    if spec.strip().lower() == "all":
        return list(emotions.EMOTIONS)
    names = [emotions.canonical(part) for part in spec.split(",") if part.strip()]
    if not names:
        raise EdgeemoError("give emotions as a,b,c or all")
    return list(dict.fromkeys(names))


def load_runtime(model, seed: int = 0, threads: int | None = None, n_ctx: int = 2048):
    """The model in llama.cpp, pulled first if it is a card not yet in the store."""
    from .steer import EmotionModel        # loads llama.cpp: only for the commands that chat

    resolved = models.ensure(model, say=say)
    say("loading the model")
    return EmotionModel(resolved, seed=seed, threads=threads, n_ctx=n_ctx)

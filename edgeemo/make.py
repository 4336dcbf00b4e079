"""Making emotion vectors: from a model and a method to control-vector files, and the layer report.

    from edgeemo import models
    from edgeemo.make import make_vectors
    paths = make_vectors(models.ensure(), ["afraid"], method="comprehension")   # into the store
    paths = make_vectors(models.ensure(), None, output="my-vectors/")          # all 20

This is the one place that turns activations into files: the ``export-vector`` command, the build
script of the prebuilt vectors and the benchmarks all call :func:`make_vectors`. Steps:
activations (``extract.py``, cached in the store) -> the layer band where emotions separate best
(``analysis.py``) -> one direction per emotion -> a ``ControlVector`` at the strength asked for
(``vectors.at_strength``) -> a GGUF file, written atomically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import analysis, emotions, extract, models, stimuli, store, writes
from .errors import EdgeemoError
from .export import export_model
from .models import Model
from .reader import HiddenStateReader
from .vectors import ControlVector, at_strength, check_strength

BASELINES = analysis.BASELINES


def check_output(path: Path | str, *, directory: bool) -> Path:
    """A place a vector may be written: a new path or a regular file (a directory with
    ``directory``). Checked before any slow work, so a bad ``-o`` fails at once."""
    path = Path(path)
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise EdgeemoError(f"{parent} is not a directory, so {path} cannot be written: give a "
                           f"path in a directory (-o)")
    if directory:
        if path.exists() and not path.is_dir():
            raise EdgeemoError(f"{path} exists and is not a directory: give a directory for "
                               f"the vectors (-o DIR)")
        return path
    if path.exists() and (path.is_dir() or not path.is_file()):
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise EdgeemoError(f"{path} is {kind}: give a new file name or a regular file to "
                           f"replace (-o FILE.gguf)")
    return path


def band_for(acts: extract.Activations, layers: tuple[int, int] | None) -> tuple[int, int]:
    """Hidden states to steer: llama.cpp layers ``(A, B)`` if given, else the best band."""
    if layers is None:
        return analysis.best_band(analysis.band_scores(acts), acts.layers)
    a, b = layers
    n_layer = acts.info["n_layer"]
    if not 1 <= a <= b <= n_layer - 2:
        raise EdgeemoError(f"layers {a}-{b}: give a range within 1-{n_layer - 2} for this model")
    return a + 1, b + 1                                   # llama.cpp N -> hidden_states N + 1


def hidden_states_of(layers: tuple[int, int]) -> list[int]:
    """The hidden-state indices that llama.cpp layers ``(A, B)`` steer (see ``vectors.py``)."""
    return list(range(layers[0] + 1, layers[1] + 2))


def make_vectors(model: Model, emotion_names: Sequence[str] | None = None, *,
                 method: str | None = None, layers: tuple[int, int] | None = None,
                 strength: float | None = None, stimuli_file: Path | str | None = None,
                 pooling: str = "mean", baseline: str | None = None, denoise: int = 0,
                 seed: int = 0, output: Path | str | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 say: Callable[[str], None] | None = None) -> list[Path]:
    """Write one control vector per emotion and return the paths.

    ``emotion_names``: emotions, aliases or (generation) custom concepts; None for all 20.
    ``method``: generation, comprehension or dialogue (see ``extract.METHODS``); None for the
    recipe the shipped vectors use (see :func:`recipe`). ``layers``: llama.cpp layers (A, B) to
    steer, or None for the band where emotions separate best. ``strength``: the strength stored
    in the file; None for the calibrated strength of the prebuilt vector made the same way, when
    the model has one, else ``vectors.DEFAULT_STRENGTH``. ``stimuli_file``: your own JSONL texts
    for a reading method. ``baseline``: subtract the neutral mean or the grand mean of the
    emotions (None: see :func:`recipe`). ``denoise``: top principal components of
    neutral text to project out. ``output``: a file (one emotion) or a directory; default the
    store, where ``chat`` finds them. ``progress(label, done, total)`` follows long loops and
    ``say(message)`` reports steps.
    """
    plan = check_settings(emotion_names, method=method, strength=strength, baseline=baseline,
                          denoise=denoise, layers=layers, stimuli_file=stimuli_file)
    targets = plan.targets
    everything = emotion_names is None
    single_file = output is not None and not everything and len(targets) == 1 \
        and not Path(output).is_dir()
    out_dir = None if single_file else (
        check_output(output, directory=True) if output is not None else store.vector_dir(model.sha256))
    if single_file:
        check_output(output, directory=False)

    if layers is None and stimuli_file is None:
        layers = prebuilt_band(model, plan.method, plan.baseline or "grand", pooling, denoise)
        if layers is not None:
            say = say or (lambda msg: None)
            say(f"steering layers {layers[0]}-{layers[1]}, where the emotions separate best in "
                f"this model (measured for its prebuilt vectors; --layers to choose others)")
    read = None if layers is None else hidden_states_of(layers)
    acts = activations_for(model, plan.method, targets, stimuli_file=stimuli_file,
                           pooling=pooling, seed=seed, layers=read, progress=progress, say=say)
    baseline = plan.baseline or ("grand" if len(acts.emotions) >= 2 else "neutral")
    vecs = vectors_from(acts, targets, layers=layers, strength=plan.strength, baseline=baseline,
                        denoise=denoise)
    if plan.strength is None:
        vecs = {name: prebuilt_strength(model, vec) for name, vec in vecs.items()}
    with writes.transaction():          # all the files, or (interrupted) none of them
        return [vec.to_gguf(Path(output) if single_file else out_dir / f"{name}.gguf")
                for name, vec in vecs.items()]


def vectors_from(acts: extract.Activations, targets: Sequence[str] | None = None, *,
                 layers: tuple[int, int] | None = None, strength: float | None = None,
                 baseline: str = "neutral", denoise: int = 0) -> dict:
    """Activations -> {emotion: ControlVector}: the band, the directions, the strength."""
    targets = list(targets or acts.emotions)
    missing = [t for t in targets if t not in acts.by_label]
    if missing:
        raise EdgeemoError(f"the stimuli have no texts for {', '.join(missing)}")
    if baseline == "grand" and len(acts.emotions) < 2:
        raise EdgeemoError(f"the grand baseline is the mean of two or more emotions, and these "
                           f"texts hold only {acts.emotions[0]!r}: use the neutral baseline "
                           f"(--baseline neutral)")
    band = band_for(acts, layers)
    dirs = analysis.directions(acts, baseline=baseline, denoise=denoise)
    return {name: analysis.make_vector(acts, name, dirs[name], band, strength=strength,
                                       settings={"baseline": baseline, "denoise": denoise})
            for name in targets}


class Plan(NamedTuple):
    """A request for vectors, checked: canonical targets, the method, the baseline (None: chosen
    from the texts read, see :func:`recipe`) and the strength (None: see :func:`make_vectors`)."""
    targets: list[str]
    method: str
    baseline: str | None
    strength: float | None


def recipe(targets: Sequence[str], stimuli_file: Path | str | None = None) -> str:
    """The method used when none is asked for, following what the evaluations found best for
    chat: dialogue (replies that differ only in tone) for the 20 emotions, with the grand mean of
    the emotions as the baseline; for a custom concept, generation (the model writes stories
    about it, as no shipped texts name it); for a ``--stimuli`` file, the reading method its
    records are shaped for. The baseline is then grand whenever the texts hold two or more
    emotions, else neutral."""
    if stimuli_file is not None:
        return stimuli.user_file_method(stimuli_file)
    return "dialogue" if all(t in emotions.EMOTIONS for t in targets) else "generation"


def check_settings(emotion_names: Sequence[str] | None, *, method: str | None = None,
                   strength: float | None = None, baseline: str | None = None, denoise: int = 0,
                   layers: tuple[int, int] | None = None,
                   stimuli_file: Path | str | None = None) -> Plan:
    """Everything about a request for vectors that can be checked before any slow work."""
    if method is not None and method not in extract.METHODS:
        raise EdgeemoError(f"unknown method '{method}': choose one of {', '.join(extract.METHODS)}")
    if strength is not None:
        strength = check_strength(strength, positive=True)
    if baseline is not None and baseline not in BASELINES:
        raise EdgeemoError(f"unknown baseline '{baseline}': choose one of {', '.join(BASELINES)}")
    if isinstance(denoise, bool) or not isinstance(denoise, int) or denoise < 0:
        raise EdgeemoError(f"denoise {denoise!r}: give a number of components, 0 or more")
    if layers is not None and not 1 <= layers[0] <= layers[1]:
        raise EdgeemoError(f"layers {layers[0]}-{layers[1]}: layers start at 1 and the range must "
                           f"go upwards")
    targets = list(emotions.EMOTIONS) if emotion_names is None else list(dict.fromkeys(
        emotions.canonical(e, allow_custom=True) for e in emotion_names))
    if not targets:
        raise EdgeemoError("give at least one emotion")
    method = method or recipe(targets, stimuli_file)
    custom = [t for t in targets if t not in emotions.EMOTIONS]
    if baseline == "grand" and method == "generation" and custom and len(custom) < 2 \
            and stimuli_file is None:
        raise EdgeemoError(f"the grand baseline is the mean of two or more emotions, and the "
                           f"stories will be about {custom[0]!r} alone: use the neutral baseline "
                           f"(--baseline neutral) or give more concepts")
    return Plan(targets, method, baseline, strength)


# What must agree for a prebuilt vector's calibrated strength to carry over to a new vector.
SAME_RECIPE = ("method", "baseline", "pooling", "denoise", "layers", "source_sha256",
               "stimuli_hash")


def prebuilt_strength(model: Model, vec):
    """``vec`` at the strength calibrated for the prebuilt vector of its emotion when that file
    was made the same way (same model file, texts, method, baseline, pooling and layers: the same
    direction), else ``vec`` as it is (at ``vectors.DEFAULT_STRENGTH``)."""
    name = vec.metadata["emotion"]
    shipped = prebuilt_metadata(model).get(name)
    if not shipped or not shipped.get("calibrated") or any(
            shipped.get(k) != vec.metadata.get(k) for k in SAME_RECIPE):
        return vec
    return at_strength(vec, float(shipped["strength"]),
                       reply_strength=shipped.get("reply_strength"),
                       strength_from=f"prebuilt {name}.gguf")


def prebuilt_metadata(model: Model) -> dict[str, dict]:
    """The metadata of the model's prebuilt vectors by emotion ({} for a model without them;
    read only). A file is read again only when it changed (``calibrate --prebuilt`` rewrites
    them)."""
    if model.card is None:
        return {}
    paths = sorted((models.shipped_dir("vectors") / model.card.name).glob("*.gguf"))
    return {p.stem: _metadata(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths}


@functools.lru_cache(maxsize=256)
def _metadata(path: str, mtime_ns: int, size: int) -> dict:
    return ControlVector.from_gguf(path).metadata


def prebuilt_band(model: Model, method: str, baseline: str, pooling: str,
                  denoise: int) -> tuple[int, int] | None:
    """The llama.cpp layers (A, B) of the model's prebuilt vectors when they were made by this
    recipe from this model file and the shipped texts, else None. The band search over the same
    activations would find them again (it did for every model shipped), so reading only those
    layers gives the same vector at a fraction of the reading."""
    shipped = prebuilt_metadata(model)
    if not shipped or method == "generation":
        return None
    texts = stimuli.dialogue() if method == "dialogue" else stimuli.comprehension()
    wanted = {"method": method, "baseline": baseline, "pooling": pooling, "denoise": denoise,
              "source_sha256": model.sha256, "stimuli_hash": stimuli.stimuli_hash(texts)}
    if any(meta.get(k) != v for meta in shipped.values() for k, v in wanted.items()):
        return None
    bands = {meta.get("layers") for meta in shipped.values()}
    if len(bands) != 1:
        return None
    first, last = (int(x) for x in bands.pop().split("-"))
    return first, last


def activations_for(model: Model, method: str, targets: Sequence[str] = (), *,
                    stimuli_file: Path | str | None = None, pooling: str = "mean", seed: int = 0,
                    layers: Sequence[int] | None = None, progress=None,
                    say=None) -> extract.Activations:
    """The activations a set of vectors is made from: the shipped stimuli, the user's file, or
    (generation) stories about each custom concept; ``layers``: the hidden states to read
    (default all)."""
    if method == "generation" and stimuli_file is not None:
        raise EdgeemoError(f"the generation method writes its own stories, so it reads no "
                           f"--stimuli file: use --method comprehension or dialogue to read "
                           f"{stimuli_file}")
    if stimuli_file is None:
        texts = None
    elif method == "dialogue":
        texts = stimuli.load_user_dialogue(stimuli_file)
    else:
        texts = stimuli.load_user_stimuli(stimuli_file)
    custom = [t for t in targets if t not in emotions.EMOTIONS]
    labels = None
    if method == "generation" and custom:
        labels = custom
    elif custom and texts is None:
        raise EdgeemoError(f"'{custom[0]}' is not one of the 20 emotions: the {method} method "
                           f"needs its texts, give them with --stimuli FILE.jsonl")
    return extract.activations(model, method, texts=texts, labels=labels, pooling=pooling,
                               seed=seed, layers=layers, progress=progress, say=say)


def layer_report(model: Model, method: str, *, pooling: str = "mean", seed: int = 0,
                 progress=None, say=None) -> tuple[extract.Activations, dict]:
    """Where emotions live: per-layer separation scores for ``method``, with the anisotropy of
    neutral factual sentences beside them (``analysis.layer_report``); saved in the store."""
    import json

    acts = activations_for(model, method, pooling=pooling, seed=seed, progress=progress, say=say)
    reader = HiddenStateReader(export_model(model, say=say))
    facts, _ = extract.read_pooled(reader, stimuli.neutral_facts(), acts.layers, pooling=pooling)
    report = analysis.layer_report(acts, facts)
    writes.write_text(report_path(model, method), json.dumps(report, indent=2))
    return acts, report


def report_path(model: Model, method: str) -> Path:
    """Where :func:`layer_report` keeps a model's layer report for ``method``."""
    return store.reports_dir() / f"{model.name}-{method}-layers.json"


def compare_methods(model: Model, *, seed: int = 0, progress=None, say=None) -> dict:
    """Generation vs comprehension: per-emotion separation (cross-validated recall of each
    emotion at each method's best band), a Mann-Whitney U test and Cohen's d."""
    result: dict = {"model": model.name, "methods": {}}
    seps = {}
    for method in ("generation", "comprehension"):
        acts, report = layer_report(model, method, seed=seed, progress=progress, say=say)
        band = tuple(report["best_band"])
        seps[method] = analysis.per_emotion_separation(acts, band)
        result["methods"][method] = {"best_band": band, "best_band_depth": report["best_band_depth"],
                                     "peak_accuracy": float(np.max(report["accuracy"])),
                                     "separation": seps[method]}
    result["test"] = analysis.compare(seps["generation"], seps["comprehension"])
    return result

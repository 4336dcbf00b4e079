"""Emotion activations: the model's pooled hidden states while it reads or writes about emotions.

Three methods (the first two are Jeong 2026's):
  comprehension  the ONNX model reads vignettes that show an emotion without naming it
  generation     the GGUF model writes stories about a character feeling the emotion (through
                 llama.cpp, seeded); the ONNX model reads prompt + story and pools only the
                 story's tokens, so the vector comes from the model's own words
  dialogue       the model reads assistant replies to everyday requests inside its own chat
                 template (user turn, then the reply), pooled over the reply's tokens only; each
                 request is answered neutrally and in each emotion with the same content, so
                 emotion mean − neutral mean is the mean paired difference: tone, not topic

Pooling is the mean over content tokens, with attention-sink positions left out (the first
position's norm is ~100x the others' in SmolLM2 and would dominate a mean), or the last token.
Texts are pooled as soon as they are read, so memory holds one batch of states at most.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import __version__, batched, emotions, export, models, stimuli, store, writes
from .errors import EdgeemoError
from .reader import HiddenStateReader
from .steer import EmotionModel
from .vectors import hidden_state_index, usable_layers

POOLINGS = ("mean", "last")
METHODS = ("generation", "comprehension", "dialogue")
SINK_RATIO = 8.0          # a position whose norm is this many times the text's median is a sink


@dataclass
class Activations:
    """Pooled hidden states per label, at hidden-state indices ``layers``."""
    method: str
    layers: list[int]                              # hidden-state indices (ONNX numbering)
    by_label: dict[str, np.ndarray]                # label -> (n_texts, len(layers), n_embd)
    norms: np.ndarray                              # (len(layers),) typical residual norm
    info: dict = field(default_factory=dict)       # model, stimuli hash, seed, pooling, …

    @property
    def emotions(self) -> list[str]:
        return [label for label in self.by_label if label != emotions.NEUTRAL]

    def only(self, layers: Sequence[int]) -> "Activations":
        """These activations at a subset of their layers."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise EdgeemoError(f"hidden states {missing} were not read")
        at = [self.layers.index(k) for k in layers]
        return Activations(self.method, list(layers), {k: v[:, at] for k, v in self.by_label.items()},
                           self.norms[at], self.info)


def steerable_layers(n_layer: int) -> list[int]:
    """Hidden-state indices that have a llama.cpp control-vector layer (see vectors.py)."""
    return [hidden_state_index(n) for n in usable_layers(n_layer)]


def content_mask(states: np.ndarray, start: int = 0) -> np.ndarray:
    """Which positions to pool: from ``start`` on, minus attention sinks.  states: (L, T, d)."""
    norms = np.linalg.norm(states, axis=-1).max(axis=0)                 # (T,) loudest layer
    keep = np.arange(states.shape[1]) >= max(start, 1)                  # position 0 is a sink
    if keep.any():
        keep &= norms <= SINK_RATIO * np.median(norms[keep])
    if not keep.any():                                                  # a one-token story
        keep[-1] = True
    return keep


def pool(states: np.ndarray, start: int = 0, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(L, T, d) -> pooled (L, d) and the mean token norm per layer (L,)."""
    keep = content_mask(states, start)
    content = states[:, keep]                                           # (L, t, d)
    pooled = content.mean(axis=1) if how == "mean" else content[:, -1]
    return pooled, np.linalg.norm(content, axis=-1).mean(axis=1)


def read_pooled(reader: HiddenStateReader, items: Sequence, layers: list[int], *,
                starts: Sequence[int] | None = None, pooling: str = "mean", batch_size: int = 8,
                label: str = "", progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pool each item as it is read.  Returns (n, L, d) states and (n, L) token norms."""
    if pooling not in POOLINGS:
        raise EdgeemoError(f"unknown pooling '{pooling}': choose one of {', '.join(POOLINGS)}")
    starts = starts or [0] * len(items)
    # shortest first, so that texts of like length share a batch and little is padding
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    pooled, norms = [None] * len(items), [None] * len(items)
    read = reader.read([items[i] for i in order], layers, batch_size=batch_size)
    for done, (i, states) in enumerate(zip(order, read), start=1):
        pooled[i], norms[i] = pool(states, starts[i], pooling)
        if progress:
            progress(label, done, len(items))
    return np.stack(pooled).astype(np.float32), np.stack(norms)


def collect(reader: HiddenStateReader, method: str, items_by_label: dict[str, list],
            starts_by_label: dict[str, list[int]] | None, *, layers: list[int] | None,
            pooling: str, batch_size: int, progress, info: dict) -> Activations:
    layers = layers or steerable_layers(reader.n_layer)
    by_label, neutral_norms = {}, None
    for label, items in items_by_label.items():
        starts = starts_by_label[label] if starts_by_label else None
        states, norms = read_pooled(reader, items, layers, starts=starts, pooling=pooling,
                                    batch_size=batch_size, label=f"reading {label}", progress=progress)
        by_label[label] = states
        if label == emotions.NEUTRAL:
            neutral_norms = np.median(norms, axis=0)
    if neutral_norms is None:
        raise EdgeemoError("no neutral texts: the neutral baseline is needed to measure norms")
    info = {**info, "method": method, "pooling": pooling, "model": reader.manifest["model"],
            "source_sha256": reader.manifest["source_sha256"], "n_layer": reader.n_layer,
            "n_embd": reader.n_embd, "architecture": reader.manifest["architecture"],
            "edgeemo_version": __version__}
    return Activations(method, list(layers), by_label, neutral_norms, info)


# --- comprehension ----------------------------------------------------------------------------

def comprehension(reader: HiddenStateReader, texts: dict[str, list[str]] | None = None, *,
                  layers: list[int] | None = None, pooling: str = "mean", batch_size: int = 8,
                  progress: Callable | None = None) -> Activations:
    """The model reads vignettes: ``texts`` maps emotion -> texts and must include neutral
    (default: the shipped comprehension stimuli for all 20 emotions)."""
    texts = texts or stimuli.comprehension()
    return collect(reader, "comprehension", texts, None, layers=layers, pooling=pooling,
                   batch_size=batch_size, progress=progress,
                   info={"stimuli_hash": stimuli.stimuli_hash(texts)})


# --- dialogue ---------------------------------------------------------------------------------

def dialogue(reader: HiddenStateReader, records: list[dict] | None = None, *,
             layers: list[int] | None = None, pooling: str = "mean", batch_size: int = 8,
             progress: Callable | None = None) -> Activations:
    """The model reads replies that differ only in tone. ``records``: ``{"request", "emotion",
    "text"}`` rows (default the shipped ones), each request with a neutral reply."""
    records = records or stimuli.dialogue()
    turns = {q: reader.turn_ids(q) for q in dict.fromkeys(r["request"] for r in records)}
    items: dict[str, list] = {}
    starts: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: r["emotion"] != emotions.NEUTRAL):   # neutral last,
        turn = turns[r["request"]]                                             # file order kept
        reply = reader.encode(r["text"] if reader.has_template else " " + r["text"])
        items.setdefault(r["emotion"], []).append(turn + reply)
        starts.setdefault(r["emotion"], []).append(len(turn))
    neutral = items.pop(emotions.NEUTRAL), starts.pop(emotions.NEUTRAL)
    items[emotions.NEUTRAL], starts[emotions.NEUTRAL] = neutral
    complete = len({len(v) for v in items.values()}) == 1
    return collect(reader, "dialogue", items, starts, layers=layers, pooling=pooling,
                   batch_size=batch_size, progress=progress,
                   info={"stimuli_hash": stimuli.stimuli_hash(records),
                         # every emotion answers the same requests in the same order
                         "paired": complete})


# --- generation -------------------------------------------------------------------------------

STORY_TOKENS = 160
STORY_TEMPERATURE = 0.8
STORY_SAMPLER = "batched-1"   # stories are drawn by batched.sample (in the cache key: a change of
                              # sampler writes them again)


def story_cache_path(model: models.Model, prompt: str, seed: int, max_tokens: int):
    key = json.dumps([prompt, seed, max_tokens, STORY_TEMPERATURE, STORY_SAMPLER],
                     ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return store.cache_dir("stories", model.sha256) / f"{digest}.json"


def write_stories(runtime, wanted: Sequence[tuple[str, int]], *, max_tokens: int = STORY_TOKENS,
                  progress: Callable | None = None) -> list[dict]:
    """The model's story for each (prompt, seed): token ids of prompt and story, and its text.
    Stories in the store's cache are read from it; the others are written several at a time
    (``batched.write_many``) and each is cached as soon as it ends."""
    paths = [story_cache_path(runtime.model, prompt, seed, max_tokens) for prompt, seed in wanted]
    stories = {k: json.loads(path.read_text()) for k, path in enumerate(paths) if path.is_file()}
    missing = [k for k in range(len(wanted)) if k not in stories]
    prompts = [runtime.prompt_ids([{"role": "user", "content": wanted[k][0]}]) for k in missing]

    def done(j: int, story_ids: list[int]) -> None:
        k = missing[j]
        prompt, seed = wanted[k]
        stories[k] = {"prompt": prompt, "seed": seed, "prompt_ids": prompts[j],
                      "story_ids": story_ids,
                      "text": runtime.detokenize(story_ids, errors="replace")}
        writes.write_text(paths[k], json.dumps(stories[k], ensure_ascii=False))
        if progress:
            progress("writing stories", len(stories), len(wanted))

    batched.write_many(runtime, prompts, seeds=[wanted[k][1] for k in missing],
                       max_tokens=max_tokens, temperature=STORY_TEMPERATURE, done=done)
    return [stories[k] for k in range(len(wanted))]


def write_story(runtime, prompt: str, *, seed: int, max_tokens: int = STORY_TOKENS) -> dict:
    """The model's story for ``prompt`` (see :func:`write_stories`)."""
    return write_stories(runtime, [(prompt, seed)], max_tokens=max_tokens)[0]


def generation_prompts(label: str, n: int) -> list[str]:
    prompts = stimuli.neutral_topics() if label == emotions.NEUTRAL else \
        stimuli.generation_prompts(label)
    return prompts[:n]


def generation(runtime, reader: HiddenStateReader, labels: list[str] | None = None, *,
               stories: int = 6, neutral_stories: int = 12, seed: int = 0,
               max_tokens: int = STORY_TOKENS, layers: list[int] | None = None,
               pooling: str = "mean", batch_size: int = 4,
               progress: Callable | None = None) -> Activations:
    """The model writes ``stories`` stories per emotion (and neutral ones); we read them back.

    ``runtime`` is an unsteered ``steer.EmotionModel`` on the same GGUF as ``reader``'s export.
    """
    labels = list(labels or emotions.EMOTIONS)
    if emotions.NEUTRAL not in labels:
        labels.append(emotions.NEUTRAL)
    chosen = {label: generation_prompts(label, neutral_stories if label == emotions.NEUTRAL
                                        else stories) for label in labels}
    wanted = [(label, prompt, seed + i) for label in labels
              for i, prompt in enumerate(chosen[label])]
    done = write_stories(runtime, [(prompt, s) for _, prompt, s in wanted],
                         max_tokens=max_tokens, progress=progress)
    items, starts, written = {}, {}, {}
    for (label, _, _), story in zip(wanted, done):
        items.setdefault(label, []).append(story["prompt_ids"] + story["story_ids"])
        starts.setdefault(label, []).append(len(story["prompt_ids"]))
        written.setdefault(label, []).append(story["text"])
    return collect(reader, "generation", items, starts, layers=layers, pooling=pooling,
                   batch_size=batch_size, progress=progress,
                   info={"seed": seed, "stories": stories, "max_tokens": max_tokens,
                         # the generic templates come first, so story i of every emotion has
                         # the same template while stories fit in them (analysis.paired_centred)
                         "paired": stories <= len(stimuli.generation_prompts("any concept")),
                         "stimuli_hash": stimuli.stimuli_hash(written)})


# --- from a model name to activations, cached --------------------------------------------------

def activations(model: models.Model, method: str = "dialogue", *,
                texts: dict[str, list[str]] | list[dict] | None = None, labels: Sequence[str] | None = None,
                pooling: str = "mean", precision: str | None = None, seed: int = 0,
                stories: int = 6, layers: Sequence[int] | None = None,
                progress: Callable | None = None, say: Callable | None = None) -> Activations:
    """Activations of ``model`` by ``method``, from the store's cache when the same inputs were
    seen before (the ONNX export is made if missing; stories are written if missing).

    ``precision``: the export read; None reads the one the store has (fp32 first: the int8
    export's directions are at cosine >= 0.997 to it), and exports fp32 when there is none.

    ``texts``: for comprehension, emotion -> texts to read, neutral included (default the shipped
    vignettes); for dialogue, ``{"request", "emotion", "text"}`` rows (default the shipped ones). ``labels`` (generation only): the emotions or concepts to write stories
    about; default the 20 emotions. Neutral stories are always written. ``layers``: the
    hidden-state indices to read (default every steerable one); fewer layers read fewer blocks,
    and a cache of every layer serves any subset.
    """
    if method not in METHODS:
        raise EdgeemoError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if method == "generation" and texts:
        raise EdgeemoError("the generation method writes its own texts; to read your texts use "
                           "the comprehension method (--method comprehension)")
    if method != "generation" and labels:
        raise EdgeemoError(f"the {method} method reads texts, not labels: give texts "
                           f"(--stimuli FILE.jsonl) or use the generation method")
    say = say or (lambda msg: None)
    if precision is None:
        cached = [p.name for p in export.exports(model)]
        precision = "int8" if cached == ["int8"] else "fp32"
    if method == "generation":
        labels = list(dict.fromkeys([*(labels or emotions.EMOTIONS), emotions.NEUTRAL]))
    key = {"method": method, "pooling": pooling, "precision": precision, "version": __version__,
           "texts": stimuli.stimuli_hash(texts) if texts else None,
           "labels": labels if method == "generation" else None,
           "seed": seed if method == "generation" else None,
           "stories": stories if method == "generation" else None}
    if method == "generation":               # stories drawn another way are other texts
        key["sampler"] = STORY_SAMPLER
    if layers is not None:
        layers = sorted(set(layers))
    every_layer = activations_path(model, key)
    if every_layer.is_file():
        acts = load_activations(every_layer)
        return acts if layers is None else acts.only(layers)
    if layers is not None:
        key["layers"] = layers
    path = activations_path(model, key)
    if path.is_file():
        return load_activations(path)
    reader = HiddenStateReader(export.export_model(model, precision, say=say))
    if method == "comprehension":
        acts = comprehension(reader, texts, layers=layers, pooling=pooling, progress=progress)
    elif method == "dialogue":
        acts = dialogue(reader, texts, layers=layers, pooling=pooling, progress=progress)
    else:
        runtime = EmotionModel(model, seed=seed)
        acts = generation(runtime, reader, labels, seed=seed, stories=stories, layers=layers,
                          pooling=pooling, progress=progress)
    save_activations(acts, path)
    return acts


def activations_path(model: models.Model, key: dict):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return store.cache_dir("activations", model.sha256) / f"{digest}.npz"


def save_activations(acts: Activations, path) -> None:
    arrays = {f"label:{k}": v for k, v in acts.by_label.items()}
    with writes.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, layers=np.array(acts.layers), norms=acts.norms,
                     info=np.array(json.dumps({**acts.info, "method": acts.method})), **arrays)


def load_activations(path) -> Activations:
    with np.load(path) as data:
        info = json.loads(str(data["info"]))
        by_label = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("label:")}
        return Activations(info["method"], data["layers"].tolist(), by_label, data["norms"], info)

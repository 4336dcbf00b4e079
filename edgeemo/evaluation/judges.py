"""Judges of a steered reply: did the emotion move? Reported separately, never merged.

  lexicon  Empath categories mapped onto our 20 emotions (:data:`EMPATH_MAP`), as the share of
           words that fall in them; emotions Empath has no category for are judged by VADER's
           compound valence in the direction of ``emotions.VALENCE`` instead (:data:`UNMAPPED`).
  probe    the emotion probe (``probe.Probe``): the unsteered model's own readout of the steered
           text, as the cosine with the target emotion's vector. It reads a reply with the very
           vector that steered it, so it is a diagnostic, never the judge of success.
  reader-smollm2, reader-gemma3
           held-out readers: emotion directions made from texts that no vector is made from
           (``heldout.jsonl``), read by one of the two offline models (two model families). They
           share nothing with the vector under test. Their margin is measured on every run: the
           90th percentile of the same difference between two unsteered replies.
  llm      an instruction-tuned chat model of another family reads the reply's text and names
           its tone (``llmjudge.py``): the judge that reads like a person, and the default.

Every judge is a small class with the same three parts (``judgebase.Judge``): ``read`` scores
texts, ``verdict`` compares a steered reply's scores with its baseline's for one emotion,
``margin`` says how far the score must move. Adding a judge is one class and one entry in
:data:`JUDGES`; ``evaluate.py`` runs whatever judges it is given by name.

A sample succeeds for a judge when the target's score in the steered reply exceeds the baseline
reply's by that judge's margin (:data:`LEXICON_MARGIN`, :data:`VALENCE_MARGIN`,
:data:`PROBE_MARGIN`). An empty reply never succeeds.

The lexicon judge needs no model, only two lexicons (Empath, VADER) loaded on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import contextmanager
from functools import lru_cache
from typing import ClassVar

import numpy as np

from .. import emotions as emotions_mod
from .. import export, models, stimuli
from ..emotions import EMOTIONS
from ..errors import EdgeemoError, require
from ..extract import read_pooled
from ..probe import Probe
from ..reader import HiddenStateReader
from .judgebase import Judge, ScoredJudge, chance_margin
from .llmjudge import LLMJudge

# Empath (Fast et al. 2016) categories for each of our emotions, as far as they go. A category may
# serve two emotions (nervousness for nervous and anxious, contentment for calm and blissful): the
# lexicon cannot tell those apart, but success is measured against the same emotion's score in the
# baseline reply, so a shared category still says whether the steered reply moved towards it.
EMPATH_MAP: dict[str, tuple[str, ...]] = {
    "happy": ("joy", "cheerfulness"),
    "sad": ("sadness", "suffering"),
    "calm": ("contentment",),              # tranquility, calmness, relief, gentleness
    "afraid": ("fear", "horror", "timidity"),
    "angry": ("anger", "rage"),
    "proud": ("pride",),
    "guilty": ("shame",),                  # guilt, remorse, ashamed
    "nervous": ("nervousness",),
    "hopeful": ("optimism",),              # hope, hopeful, optimistic
    "enthusiastic": ("zest",),             # enthusiasm, eager, zeal, vigor
    "hostile": ("aggression", "hate"),
    "loving": ("love", "affection"),
    "exasperated": ("exasperation", "irritability"),
    "blissful": ("contentment", "joy"),    # bliss, euphoria, delight
    "anxious": ("nervousness",),           # anxiety, worry, apprehension, dread
}

# No Empath category fits these; the lexicon judge uses VADER valence in the direction of
# emotions.VALENCE for them (down for desperate, brooding, gloomy; up for grateful and, weakly,
# reflective, whose valence is only +0.1). Results mark them with measure "valence".
UNMAPPED: tuple[str, ...] = tuple(e for e in emotions_mod.EMOTIONS if e not in EMPATH_MAP)

# Success margins: the steered reply's score minus the baseline reply's must reach these. Each is
# about the 90th percentile of the same difference between two UNSTEERED replies to the same prompt
# (default model, 8 scenarios x 4 seeds, 48 tokens, all ordered pairs), so a reply that was not
# steered at all "succeeds" about 1 time in 10 (the chance level; evaluate() measures it again on
# every run with a second unsteered reply per scenario, see summary["chance"]):
#   probe    cosine; unsteered replies differ by up to 0.5, P(diff >= 0.14) = 0.10
#   lexicon  share of words; a 48-token reply has ~35-40 words, so one more emotion word than the
#            baseline reply is +0.025-0.03: 0.02 lets one more word pass and a length wobble
#            not. P(diff >= 0.02) = 0.13 (0.03, i.e. two words, would give 0.06 but missed most
#            clearly fearful replies at 0.08, which carry one fear word each)
#   valence  VADER compound swings widely between replies: P(diff >= 0.6) = 0.09
LEXICON_MARGIN = 0.02
VALENCE_MARGIN = 0.6
PROBE_MARGIN = 0.14

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


@lru_cache(maxsize=1)
def _empath():
    require("eval", "empath")
    from empath import Empath

    return Empath()      # reads its bundled lexicon; only create_category uses the network


@lru_cache(maxsize=1)
def _vader():
    require("eval", "vaderSentiment")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _lexicon_vocabulary() -> frozenset[str]:
    lexicon = _empath()
    return frozenset(w for cats in EMPATH_MAP.values() for c in cats for w in lexicon.cats[c])


_SUFFIXES = (("ies", "y"), ("ied", "y"), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"),
             ("d", ""), ("ly", ""), ("es", ""), ("s", ""))


def lexicon_words(text: str) -> list[str]:
    """Lower-case words of ``text`` as Empath's lexicon spells them.

    Empath's own tokenizer splits on spaces only, so "afraid," or "Terrified" would never match.
    Here words are runs of letters (with inner apostrophes), and an inflected word that is not in
    the lexicon (of the mapped categories) is replaced by the first stem that is ("dreading" ->
    "dread", "worries" -> "worry"); a word the lexicon lists as it is stays as it is. Plain suffix
    stripping against the lexicon, no other dictionary.
    """
    vocabulary = _lexicon_vocabulary()
    out = []
    for word in _WORD.findall(text.lower().replace("’", "'")):
        if word not in vocabulary:
            for suffix, repl in _SUFFIXES:
                stem = word[: -len(suffix)] + repl
                if word.endswith(suffix) and len(stem) >= 3 and stem in vocabulary:
                    word = stem
                    break
        out.append(word)
    return out


def lexicon_scores(text: str) -> dict[str, float]:
    """Lexicon judge: ``{emotion: score}`` for the emotions in :data:`EMPATH_MAP`, plus ``valence``.

    An emotion's score is the sum of Empath's normalized counts (category words / all words) over
    its categories; ``valence`` is VADER's compound score in [-1, 1]. Empty text scores 0.
    """
    words = lexicon_words(text)
    categories = sorted({c for cats in EMPATH_MAP.values() for c in cats})
    counts = _empath().analyze(" ".join(words), categories=categories, normalize=True,
                               tokenizer=lambda doc: words) if words else None
    counts = counts or dict.fromkeys(categories, 0.0)
    scores = {e: float(sum(counts[c] for c in cats)) for e, cats in EMPATH_MAP.items()}
    scores["valence"] = float(_vader().polarity_scores(text)["compound"]) if text.strip() else 0.0
    return scores


def lexicon_judgement(emotion: str, steered: dict, baseline: dict) -> dict:
    """Compare lexicon scores of a steered reply and its baseline for ``emotion``."""
    if emotion in EMPATH_MAP:
        measure, margin, sign = "empath", LEXICON_MARGIN, 1.0
        s, u = steered[emotion], baseline[emotion]
    else:
        measure, margin = "valence", VALENCE_MARGIN
        sign = 1.0 if emotions_mod.VALENCE.get(emotion, 0.0) >= 0 else -1.0
        s, u = steered["valence"], baseline["valence"]
    delta = sign * (s - u)
    return {"measure": measure, "steered": round(s, 4), "baseline": round(u, 4),
            "delta": round(delta, 4), "success": bool(delta >= margin - 1e-12)}


class LexiconJudge(Judge):
    """Empath's categories for the target, or VADER valence where Empath has none."""

    name = "lexicon"

    def read(self, texts):
        return [lexicon_scores(t) for t in texts]

    @classmethod
    def verdict(cls, emotion, steered, baseline):
        return lexicon_judgement(emotion, steered, baseline)

    @classmethod
    def margin(cls, verdict):
        return VALENCE_MARGIN if verdict.get("measure") == "valence" else LEXICON_MARGIN


class ProbeJudge(Judge):
    """The unsteered model's own readout (``probe.Probe``): needs the model's ONNX export and a
    vector for every emotion judged. It reads replies with the vectors that steer them, so it is a
    diagnostic of the model's own states, not an independent judge."""

    name = "probe"
    chunk = 16

    def __init__(self, model=None, emotions=()):
        super().__init__(model, emotions)
        self.probe = Probe(model)
        missing = [n for n in self.emotions if n not in self.probe.vectors]
        if missing:
            raise EdgeemoError(f"the probe has no vector for {', '.join(missing)}")

    def read(self, texts):
        out: list[dict | None] = [None] * len(texts)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        for start in range(0, len(idx), self.chunk):
            part = idx[start:start + self.chunk]
            for i, ranked in zip(part, self.probe.scores([texts[i] for i in part])):
                out[i] = dict(ranked)
        return out

    def stored(self, scores):
        return None if scores is None else {e: round(v, 4) for e, v in scores.items()}

    @classmethod
    def margin(cls, verdict):
        return PROBE_MARGIN


_READERS_MADE: dict[type, tuple] = {}       # reader class -> (export, layers, centre, directions)


class ReaderJudge(ScoredJudge):
    """Held-out reader: the cosine of a reply's pooled hidden states (centred on the mean of the
    emotions' texts) with each emotion's direction (its texts' mean minus that centre), averaged
    over the hidden states at relative depth 0.45-0.70, in the ONNX export of ``reader_model``."""

    reader_model: ClassVar[str] = ""
    DEPTH = (0.45, 0.70)

    def __init__(self, model=None, emotions=()):
        super().__init__(model, emotions)
        self.reader = HiddenStateReader(export.export_model(models.ensure(self.reader_model)))
        made = _READERS_MADE.get(type(self))
        if made is None or made[0] != (self.reader.dir, self.source()):
            n = self.reader.n_layer
            layers = [k for k in range(1, n) if self.DEPTH[0] <= k / n <= self.DEPTH[1]]
            texts = self.texts()
            means = {e: read_pooled(self.reader, texts[e], layers)[0].mean(0) for e in EMOTIONS}
            centre = np.mean(list(means.values()), axis=0)                       # (L, d)
            made = ((self.reader.dir, self.source()), layers, centre,
                    {e: _unit(m - centre) for e, m in means.items()})
            _READERS_MADE[type(self)] = made       # a calibration judges many times: read once
        _, self.layers, self.centre, self.directions = made

    def read(self, texts):
        out: list[dict | None] = [None] * len(texts)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        if not idx:
            return out
        states, _ = read_pooled(self.reader, [texts[i] for i in idx], self.layers)   # (n, L, d)
        centred = _unit(states - self.centre)
        for row, i in enumerate(idx):
            out[i] = {e: float(np.mean(np.sum(centred[row] * d, axis=-1)))
                      for e, d in self.directions.items()}
        return out

    @classmethod
    def source(cls):
        """What the directions are made from, when it can change between runs (a cache key)."""
        return None

    @classmethod
    def texts(cls) -> dict[str, list[str]]:
        """The texts each emotion's direction is made from: the held-out vignettes."""
        return stimuli.heldout(EMOTIONS)

class SmolLM2Reader(ReaderJudge):
    name = "reader-smollm2"
    reader_model = "smollm2-135m-instruct"


class Gemma3Reader(ReaderJudge):
    name = "reader-gemma3"
    reader_model = "gemma3-270m"


class ToneReader(ReaderJudge):
    """A reader of tone, not of story: directions made from assistant replies that differ only
    in tone (``dialogue.jsonl``: the same answer to an everyday request, neutral and in each
    emotion). The held-out vignette readers hardly see tone at all (``scripts/judge_ceiling.py``:
    on the hand-written tone-only replies they pick out 30% / 21%). These readers share their
    texts with ``--method dialogue`` vectors, so they are independent judges of comprehension and
    generation vectors only; ``evaluate`` says so when it is given dialogue vectors. For those,
    :func:`tone_readers_from` makes them from the replies to other requests (a cross-fit)."""

    shares_data_with = "dialogue"
    requests: ClassVar[frozenset[str] | None] = None     # None: every request of dialogue.jsonl

    @classmethod
    def source(cls):
        return ToneReader.requests

    @classmethod
    def texts(cls) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for row in stimuli.dialogue():
            if ToneReader.requests is not None and row["request"] not in ToneReader.requests:
                continue
            if row["emotion"] != "neutral":
                out.setdefault(row["emotion"], []).append(row["text"])
        return out


class ToneSmolLM2(ToneReader):
    name = "tone-smollm2"
    reader_model = "smollm2-135m-instruct"


class ToneGemma3(ToneReader):
    name = "tone-gemma3"
    reader_model = "gemma3-270m"


@contextmanager
def tone_readers_from(requests: Iterable[str]):
    """Within this block the tone readers are made from the replies to ``requests`` only, so
    dialogue vectors made from the other requests can be judged by them (a cross-fit)."""
    wanted = frozenset(requests)
    known = {r["request"] for r in stimuli.dialogue()}
    if not wanted or not wanted <= known:
        raise EdgeemoError("tone readers need requests of dialogue.jsonl")
    previous, ToneReader.requests = ToneReader.requests, wanted
    try:
        yield
    finally:
        ToneReader.requests = previous


def _unit(v):
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)

JUDGES: dict[str, type[Judge]] = {j.name: j for j in (LexiconJudge, ProbeJudge, SmolLM2Reader,
                                                      Gemma3Reader, ToneSmolLM2, ToneGemma3,
                                                      LLMJudge)}
__all__ = ["JUDGES", "Judge", "ScoredJudge", "chance_margin"]
READERS = ("reader-smollm2", "reader-gemma3")            # held-out vignettes: calibration's judges
TONE_READERS = ("tone-smollm2", "tone-gemma3")
MARGINS = {"lexicon": LEXICON_MARGIN, "valence": VALENCE_MARGIN, "probe": PROBE_MARGIN}

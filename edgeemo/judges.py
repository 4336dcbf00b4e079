"""Judges of a steered reply: did the emotion move? Reported separately, never merged.

  lexicon  Empath categories mapped onto our 20 emotions (:data:`EMPATH_MAP`), as the share of
           words that fall in them; emotions Empath has no category for are judged by VADER's
           compound valence in the direction of ``emotions.VALENCE`` instead (:data:`UNMAPPED`).
  probe    the emotion probe (``probe.Probe``): the unsteered model's own readout of the steered
           text, as the cosine with the target emotion's vector. It needs the model, so it runs in
           ``evaluate.py``; its margin is set here beside the others.

A sample succeeds for a judge when the target's score in the steered reply exceeds the baseline
reply's by that judge's margin (:data:`LEXICON_MARGIN`, :data:`VALENCE_MARGIN`,
:data:`PROBE_MARGIN`). An empty reply never succeeds.

The lexicon judge needs no model, only two lexicons (Empath, VADER) loaded on first use.
"""

from __future__ import annotations

import re
from functools import lru_cache

from . import emotions as emotions_mod

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
    from empath import Empath

    return Empath()      # reads its bundled lexicon; only create_category uses the network


@lru_cache(maxsize=1)
def _vader():
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

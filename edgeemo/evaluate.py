"""Steering evaluation: does a vector move the tone, does the text survive, does the language hold.

    from edgeemo.evaluate import evaluate, write_report
    result = evaluate(EmotionModel(), ["afraid", "happy"], [0.04, 0.08], stimuli.scenarios()[:6])
    write_report(result, "eval-report")       # result.json, report.md, regimes.png, success.png

For every scenario prompt the unsteered model answers once (the baseline), then the steered model
answers the same prompt with the same seed for each emotion × strength. Each steered reply is
compared with the baseline reply of its scenario by three independent checks:

Judges (did the emotion move?), reported separately, never merged:
  lexicon  Empath categories mapped onto our 20 emotions (:data:`EMPATH_MAP`), as the share of
           words that fall in them; emotions Empath has no category for are judged by VADER's
           compound valence in the direction of ``emotions.VALENCE`` instead (:data:`UNMAPPED`).
  probe    the emotion probe (``probe.Probe``): the unsteered model's own readout of the steered
           text, as the cosine with the target emotion's vector.
  A sample succeeds for a judge when the target's score in the steered reply exceeds the
  baseline reply's by that judge's margin (:data:`LEXICON_MARGIN`, :data:`VALENCE_MARGIN`,
  :data:`PROBE_MARGIN`). An empty reply never succeeds.

Regimes (did the text survive?), from surface statistics and the unsteered model's perplexity:
  surgical    fluent text whose tone moved; what steering is for
  repetitive  the reply loops ("I was. I was. I was.")
  explosive   the reply breaks apart: empty or whitespace, non-words, or text the unsteered model
              finds far less likely than its own reply

Language drift: a reply written (partly) in a script the prompt does not use, which small models
do when pushed hard (Chinese characters in an answer to an English prompt).

Calibration (:func:`calibrate`, :func:`apply_calibration`) picks, per emotion, the strength with the
best success rate among those whose replies stay surgical, and rewrites the vector file so stock
llama.cpp at scale 1.0 steers at that strength.

Everything is seeded: the same model, vectors, settings and seed give the same numbers.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import emotions as emotions_mod
from . import store
from .errors import EdgeemoError

# --- the lexicon judge ----------------------------------------------------------------------------

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


# --- text features and the regime classifier -----------------------------------------------------

# Regime thresholds. Chosen on real replies of the default model (SmolLM2-135M-Instruct, comprehension
# vectors, 48 tokens, temperature 0.7, seed 0) to 6 scenarios steered with afraid and happy at
# 0.03, 0.08, 0.15, 0.3 and 0.6, read one by one, plus the unsteered replies:
#   * perplexity ratio: replies at 0.03-0.08 read as fluent (a typo at most) and sit at
#     0.7-8x the baseline's perplexity (emotional, literary text costs likelihood); from 0.15 on
#     afraid gives invented words and fragments ("A cold-fellnin' ran down", "itlocked") at
#     12-40x, and at 0.3-0.6 whitespace or word salad at 30-970x. 10x splits the two groups.
#   * blank share: the collapse at 0.3 is a word or two and then newlines (50-90% whitespace);
#     fluent prose is ~17% whitespace and line-broken verse ~35%.
#   * non-words: fluent replies have none or one in ~30 tokens; 20% is far above that and is
#     met by garbled symbol runs. (Invented but pronounceable words pass this heuristic; the
#     perplexity ratio catches them.)
#   * loops: no steered reply looped in that sweep (the repeat penalty is 1.1), and fluent replies
#     repeat at most 3% of their 3-grams with distinct-2 >= 0.94; the thresholds sit far from
#     that, where constructed loops ("I was. I was. I was.") land at 0.5-0.8.
REPEAT3_REPETITIVE = 0.3       # share of 3-gram occurrences that repeat an earlier one, at or above
DISTINCT2_REPETITIVE = 0.5     # distinct bigrams / bigrams, below
NONWORD_EXPLOSIVE = 0.2        # share of whitespace tokens that are not words, above
BLANK_EXPLOSIVE = 0.5          # share of characters that are whitespace, above
PPL_RATIO_EXPLOSIVE = 10.0     # steered / baseline perplexity under the unsteered model, above
MIN_WORDS_FOR_REPETITION = 6   # fewer words than this cannot be judged repetitive

REGIMES = ("surgical", "repetitive", "explosive")

# Symbol-only tokens that fluent prose uses on their own between words.
_PROSE_SYMBOLS = {"-", "–", "—", "&", "/", "+", "=", "*", "...", "…", ":", "|", "(", ")", "x", "→"}
# At the start of a line: markdown headings, list and quote markers.
_LINE_MARKER = re.compile(r"^(#{1,6}|[-*+>•|]|\d+[.)]|\*\*)$")
# Trimmed off a token before it is judged: quotes, brackets, emphasis and sentence punctuation.
_EDGE = "\"'“”‘’«»()[]{}<>*_.,;:!?¿¡%$€£`~"
_NO_VOWEL_WORDS = {"hmm", "hmmm", "mmm", "shh", "shhh", "brr", "psst", "pst", "tsk", "nth", "grr",
                   "zzz", "pfft", "mrs", "mr", "dr", "st", "vs", "pp", "cm", "mm", "km", "kg", "ml"}
_ORDINAL_OR_UNIT = re.compile(r"^\d+(st|nd|rd|th|s|am|pm|k|m|g|kg|km|cm|mm|ml|h|min|x|p|b|d)?$",
                              re.IGNORECASE)


def _base_letter(ch: str) -> str:
    return unicodedata.normalize("NFD", ch)[0].lower()


def is_nonword(token: str, *, line_start: bool = False) -> bool:
    """Is a whitespace-delimited token something other than a word, number or prose symbol?

    A heuristic, not a dictionary check (any pronounceable string passes). A token is a non-word
    when it is: a run of symbols fluent text does not use alone (",,", "##" mid-line, "!!!!"); a
    word with the Unicode replacement character, letters of two scripts, or punctuation inside it
    other than apostrophes, hyphens, periods, slashes, '&' and digit separators ("ran,the",
    "qx#z"); letters and digits alternating ("a1b"); three or more Latin letters without a vowel
    that are not an acronym or a known interjection ("qxz"); or longer than 30 letters with no
    hyphen. Markdown markers at the start of a line are allowed.
    """
    if line_start and _LINE_MARKER.match(token):
        return False
    core = token.strip(_EDGE)
    if not core:
        return token not in _PROSE_SYMBOLS and not (len(token) == 1 and token in ".!?\"'")
    if "\ufffd" in core:
        return True
    if not any(ch.isalnum() for ch in core):
        if all(unicodedata.category(ch) in ("So", "Sk", "Cf") for ch in core):
            return False                                    # emoji and other pictographs
        return core not in _PROSE_SYMBOLS
    letters = [ch for ch in core if ch.isalpha()]
    if len({script_of(ch) for ch in letters}) > 1:
        return True
    for i, ch in enumerate(core):
        if ch.isalnum() or ch in "-'’./&@+":
            continue
        between_digits = 0 < i < len(core) - 1 and core[i - 1].isdigit() and core[i + 1].isdigit()
        if not (ch in ",:" and between_digits):
            return True
    if letters and any(ch.isdigit() for ch in core):
        if not core.isupper() and not _ORDINAL_OR_UNIT.match(core) and \
                re.search(r"[^\W\d_]\d+[^\W\d_]", core):
            return True
    word = core.lower()
    if (len(letters) >= 3 and len(letters) == len(core) and script_of(letters[0]) == "LATIN"
            and not core.isupper() and word not in _NO_VOWEL_WORDS
            and not any(_base_letter(ch) in "aeiouy" for ch in letters)):
        return True
    if len(letters) > 30 and "-" not in core:
        return True
    return False


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\w+(?:['’]\w+)*", text)]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def surface_features(text: str) -> dict:
    """Features of one reply that need no model: emptiness, repetition, diversity, non-words."""
    words = _words(text)
    tokens = [(tok, i == 0) for line in text.splitlines() for i, tok in enumerate(line.split())]
    trigrams = _ngrams(words, 3)
    bigrams = _ngrams(words, 2)
    # repeated 3-gram share: occurrences of a 3-gram beyond its first, over all 3-gram occurrences
    repeats = len(trigrams) - len(set(trigrams))
    nonwords = [tok for tok, first in tokens if is_nonword(tok, line_start=first)]
    return {
        "empty": not text.strip(),
        "n_words": len(words),
        "blank_share": round(sum(ch.isspace() for ch in text) / len(text), 4) if text else 1.0,
        "repeat3": round(repeats / len(trigrams), 4) if trigrams else 0.0,
        "distinct1": round(len(set(words)) / len(words), 4) if words else 1.0,
        "distinct2": round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 1.0,
        "nonword_share": round(len(nonwords) / len(tokens), 4) if tokens else 0.0,
        "nonwords": nonwords[:10],
    }


class Scorer:
    """Log-probabilities of a reply under the unsteered model (its own llama.cpp context).

    A separate ``llama_cpp.Llama`` with ``logits_all=True``: the steered runtime's control vector
    never touches it, so it measures how likely the *unsteered* model finds a text.
    """

    def __init__(self, model_path: Path | str, *, n_ctx: int = 1024, threads: int | None = None):
        import os

        import llama_cpp

        threads = threads or os.cpu_count()
        self.llm = llama_cpp.Llama(model_path=str(model_path), logits_all=True, n_ctx=n_ctx,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.n_ctx = n_ctx
        self._cache: dict[tuple, float | None] = {}

    def logprobs(self, prompt_ids: Sequence[int], reply: str) -> np.ndarray:
        """Natural-log probability of each reply token given the prompt and the tokens before it."""
        reply_ids = self.llm.tokenize(reply.encode("utf-8"), add_bos=False, special=False)
        if not reply_ids:
            return np.zeros(0)
        prompt_ids = list(prompt_ids)[-(self.n_ctx - len(reply_ids)):]   # keep the prompt's end
        if not prompt_ids:
            raise EdgeemoError(f"the reply is {len(reply_ids)} tokens, more than the scorer's "
                               f"context of {self.n_ctx}")
        tokens = prompt_ids + reply_ids
        self.llm.reset()
        self.llm.eval(tokens)
        # row i of the logits predicts token i + 1
        logits = np.asarray(self.llm.scores[len(prompt_ids) - 1:len(tokens) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return logits[np.arange(len(reply_ids)), reply_ids] - log_norm

    def perplexity(self, prompt_ids: Sequence[int], reply: str) -> float | None:
        """exp(−mean log-probability) of the reply's tokens; None for an empty reply."""
        key = (tuple(prompt_ids), reply)
        if key not in self._cache:
            lp = self.logprobs(prompt_ids, reply) if reply.strip() else np.zeros(0)
            self._cache[key] = float(math.exp(-lp.mean())) if lp.size else None
        return self._cache[key]


def text_features(steered: str, unsteered: str | None = None,
                  prompt_ids: Sequence[int] | None = None, scorer: Scorer | None = None) -> dict:
    """Surface features of a steered reply, plus its perplexity ratio when a scorer is given.

    ``ppl_ratio`` = perplexity of the steered reply / perplexity of the unsteered reply, both under
    the unsteered model and after the same prompt. It is None without a scorer or prompt.
    """
    features = surface_features(steered)
    features.update(ppl=None, ppl_baseline=None, ppl_ratio=None)
    if scorer is not None and prompt_ids is not None:
        ppl = scorer.perplexity(prompt_ids, steered)
        base = scorer.perplexity(prompt_ids, unsteered) if unsteered is not None else None
        features["ppl"] = None if ppl is None else round(ppl, 4)
        features["ppl_baseline"] = None if base is None else round(base, 4)
        if ppl is not None and base:
            features["ppl_ratio"] = round(ppl / base, 4)
    return features


def regime(features: dict) -> str:
    """``surgical``, ``repetitive`` or ``explosive`` for the features of one reply.

    In this order: empty, whitespace-only or mostly whitespace -> explosive; too many non-words
    -> explosive; a loop
    (repeated 3-grams or few distinct bigrams) -> repetitive; far less likely than the unsteered
    reply under the unsteered model -> explosive (skipped when there is no ``ppl_ratio``);
    otherwise surgical. Works on :func:`surface_features` alone for texts scored without a model.
    """
    if features["empty"] or features.get("blank_share", 0.0) > BLANK_EXPLOSIVE:
        return "explosive"
    if features["nonword_share"] > NONWORD_EXPLOSIVE:
        return "explosive"
    if features["n_words"] >= MIN_WORDS_FOR_REPETITION and (
            features["repeat3"] >= REPEAT3_REPETITIVE
            or features["distinct2"] < DISTINCT2_REPETITIVE):
        return "repetitive"
    ratio = features.get("ppl_ratio")
    if ratio is not None and ratio > PPL_RATIO_EXPLOSIVE:
        return "explosive"
    return "surgical"


def classify_text(text: str) -> str:
    """The regime of a text judged on its surface alone (no model, no perplexity)."""
    return regime(surface_features(text))


# --- language drift -------------------------------------------------------------------------------

def script_of(ch: str) -> str:
    """The writing system of a letter, from its Unicode name: LATIN, CYRILLIC, HAN, HANGUL, ...

    CJK ideographs are HAN; fullwidth and halfwidth forms count as the script they are forms of.
    Characters without a name give UNKNOWN.
    """
    name = unicodedata.name(ch, "")
    if not name:
        return "UNKNOWN"
    parts = name.split()
    if parts[0] in ("FULLWIDTH", "HALFWIDTH") and len(parts) > 1:
        parts = parts[1:]
    if parts[0] == "CJK":
        return "HAN"
    if parts[0] in ("HIRAGANA", "KATAKANA"):
        return "KANA"
    return parts[0]


def scripts(text: str) -> Counter:
    """Letters of ``text`` counted by script (digits, punctuation, symbols and emoji are ignored)."""
    return Counter(script_of(ch) for ch in text if unicodedata.category(ch).startswith("L"))


def language_drift(prompt: str, reply: str) -> dict:
    """Does the reply use letters of a script the prompt does not? (A prompt with no letters
    counts as Latin.) Returns the flag, the scripts, the share of foreign letters and the
    drifted tokens (whitespace-delimited words holding foreign letters, at most 20)."""
    expected = set(scripts(prompt)) or {"LATIN"}
    found = scripts(reply)
    foreign = {s for s in found if s not in expected}
    tokens = [tok for tok in reply.split()
              if any(unicodedata.category(ch).startswith("L") and script_of(ch) in foreign
                     for ch in tok)]
    total = sum(found.values())
    return {
        "drifted": bool(foreign),
        "prompt_scripts": sorted(expected),
        "reply_scripts": sorted(found),
        "foreign_scripts": sorted(foreign),
        "foreign_share": round(sum(found[s] for s in foreign) / total, 4) if total else 0.0,
        "tokens": tokens[:20],
    }


# --- scenarios ------------------------------------------------------------------------------------

def select_scenarios(spec: int | str | Sequence[str] | None = None) -> list[dict]:
    """Scenarios by count or by id.

    ``None``: all of them. An int N (or "N"): N scenarios taken round-robin over the kinds in file
    order (4 -> one neutral, one opposite, one conversational, one story). A comma-separated string
    or list of ids: those, in the order given.
    """
    from . import stimuli

    every = stimuli.scenarios()
    if spec is None:
        return every
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        if spec < 1:
            raise EdgeemoError(f"the number of scenarios must be at least 1, not {spec}")
        by_kind: dict[str, list[dict]] = {}
        for s in every:
            by_kind.setdefault(s["kind"], []).append(s)
        picked, depth = [], 0
        while len(picked) < min(spec, len(every)):
            for rows in by_kind.values():
                if depth < len(rows) and len(picked) < spec:
                    picked.append(rows[depth])
            depth += 1
        return picked
    ids = [x.strip() for x in (spec.split(",") if isinstance(spec, str) else spec) if x.strip()]
    known = {s["id"]: s for s in every}
    missing = [i for i in ids if i not in known]
    if missing or not ids:
        raise EdgeemoError(f"unknown scenario id(s) {', '.join(missing) or '(none given)'}: ids are "
                           f"{every[0]['id']}-{every[-1]['id']}, or give a number of scenarios")
    return [known[i] for i in ids]


# --- the evaluation -------------------------------------------------------------------------------

RECOMMENDED = "recommended"      # the strength key of "each vector's own recommended strength"


def strength_key(strength: float | None) -> str:
    """How a strength is written as a JSON key and in reports: 0.08 -> "0.08"; None (each
    vector's recommended strength) -> "recommended"."""
    return RECOMMENDED if strength is None else f"{float(strength):g}"


def _setting(sample: dict) -> str:
    """The strength setting a sample was made under (older results lack "setting")."""
    return sample.get("setting") or strength_key(sample["strength"])


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {r: round(counts[r] / len(labels), 4) if labels else 0.0 for r in REGIMES}


def _load_runtime(model, seed: int, threads: int | None = None):
    from .steer import EmotionModel

    if isinstance(model, EmotionModel):
        return model
    return EmotionModel(model, seed=seed, threads=threads)


def evaluate(model, emotions: Sequence[str], strengths: Sequence[float],
             scenarios: Sequence[dict] | None = None, *, seed: int = 0, max_tokens: int = 60,
             temperature: float = 0.7, use_probe: bool = True, chance: bool = True,
             threads: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Steer ``model`` with each emotion at each strength on each scenario; judge every reply.

    ``model`` is an ``EmotionModel`` or anything it accepts (None for the default model); a model
    built here uses ``threads`` (on a machine busy with other work, 1 thread is far faster than
    one per core: llama.cpp's threads wait on each other at every layer).
    A strength of None stands for each vector's recommended strength (its calibrated one, once
    ``edgeemo calibrate`` has run); samples record the strength applied and, as "setting", the
    key they are summarised under. ``scenarios`` are ``stimuli.scenarios()`` rows (all of them
    when None). ``progress(label,
    done, total)`` is called after each reply. With ``chance`` each scenario also gets a second
    unsteered reply (seed + 1), judged like a steered one: the success rate of no steering.
    Returns one JSON-ready dict: settings, the baseline replies, the chance replies, every
    sample, and a ``summary`` of the aggregates.
    """
    from .steer import check_strength

    started = time.perf_counter()
    names = [emotions_mod.canonical(e) for e in emotions]
    strengths = [None if s is None else float(s) for s in strengths]
    for s in strengths:
        if s is not None:
            check_strength(s)
    if not names or not strengths:
        raise EdgeemoError("give at least one emotion and one strength to evaluate")
    scenarios = list(scenarios) if scenarios is not None else select_scenarios()
    if not scenarios:
        raise EdgeemoError("give at least one scenario to evaluate on")
    runtime = _load_runtime(model, seed, threads)
    for name in names:
        runtime.vector(name)                       # fail now, not after the baseline
    scorer = Scorer(runtime.model.path, threads=runtime.llm.n_threads)   # same as the runtime's
    options = {"max_tokens": max_tokens, "temperature": temperature}
    prompts = {s["id"]: runtime.prompt_ids([{"role": "user", "content": s["prompt"]}])
               for s in scenarios}

    def reply(scenario: dict, seed: int = seed) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        ids = list(runtime.stream_ids(prompts[scenario["id"]], seed=seed, **options))
        text = runtime.llm.detokenize(ids).decode("utf-8", errors="ignore") if ids else ""
        return text, len(ids), time.perf_counter() - t0

    # the baseline: each scenario answered once, unsteered, with the same seed as the samples
    runtime.clear()
    baseline: dict[str, dict] = {}
    generation_seconds, generated_tokens = 0.0, 0
    for i, scenario in enumerate(scenarios):
        text, n_tokens, seconds = reply(scenario)
        generation_seconds += seconds
        generated_tokens += n_tokens
        features = text_features(text, text, prompts[scenario["id"]], scorer)
        baseline[scenario["id"]] = {
            "scenario": scenario["id"], "kind": scenario["kind"], "prompt": scenario["prompt"],
            "text": text, "tokens": n_tokens, "seconds": round(seconds, 3),
            "features": features, "regime": regime(features),
            "lexicon": lexicon_scores(text), "drift": language_drift(scenario["prompt"], text),
        }
        if progress:
            progress("baseline", i + 1, len(scenarios))

    # the chance level: a second unsteered reply (seed + 1) judged against the baseline as if it
    # had been steered; how often the judges "succeed" with no steering at all
    reference: dict[str, dict] = {}
    if chance:
        for i, scenario in enumerate(scenarios):
            text, n_tokens, seconds = reply(scenario, seed + 1)
            generation_seconds += seconds
            generated_tokens += n_tokens
            reference[scenario["id"]] = {
                "scenario": scenario["id"], "seed": seed + 1, "text": text, "tokens": n_tokens,
                "lexicon": lexicon_scores(text), "probe": None,
            }
            if progress:
                progress("chance", i + 1, len(scenarios))

    samples: list[dict] = []
    recommended: dict[str, float | None] = {}
    try:
        for name in names:
            for strength in strengths:
                applied = runtime.steer({name: strength})[name]
                recommended[name] = runtime.vector(name).metadata.get("strength")
                label = f"{name} {strength_key(applied)}"
                for i, scenario in enumerate(scenarios):
                    text, n_tokens, seconds = reply(scenario)
                    generation_seconds += seconds
                    generated_tokens += n_tokens
                    base = baseline[scenario["id"]]
                    features = text_features(text, base["text"], prompts[scenario["id"]], scorer)
                    samples.append({
                        "emotion": name, "strength": applied,
                        "setting": strength_key(strength), "scenario": scenario["id"],
                        "kind": scenario["kind"], "text": text, "tokens": n_tokens,
                        "seconds": round(seconds, 3), "features": features,
                        "regime": regime(features),
                        "drift": language_drift(scenario["prompt"], text),
                        "judges": {"lexicon": lexicon_judgement(name, lexicon_scores(text),
                                                                base["lexicon"])},
                    })
                    if progress:
                        progress(label, i + 1, len(scenarios))
    finally:
        runtime.clear()

    judge_seconds = 0.0
    if use_probe:
        t0 = time.perf_counter()
        _probe_judge(runtime.model, names, baseline, samples, reference, progress)
        judge_seconds = time.perf_counter() - t0
    judges = ["lexicon", "probe"] if use_probe else ["lexicon"]
    settings = {
        "model": runtime.model.name, "emotions": names,
        "strengths": strengths, "recommended_strengths": recommended,
        "scenarios": [s["id"] for s in scenarios], "seed": seed,
        "max_tokens": max_tokens, "temperature": temperature, "judges": judges,
        "threads": runtime.llm.n_threads,
        "margins": {"lexicon": LEXICON_MARGIN, "valence": VALENCE_MARGIN, "probe": PROBE_MARGIN},
        "thresholds": {"repeat3_repetitive": REPEAT3_REPETITIVE,
                       "distinct2_repetitive": DISTINCT2_REPETITIVE,
                       "nonword_explosive": NONWORD_EXPLOSIVE,
                       "blank_explosive": BLANK_EXPLOSIVE,
                       "ppl_ratio_explosive": PPL_RATIO_EXPLOSIVE},
        "lexicon_map": {e: list(c) for e, c in EMPATH_MAP.items()},
        "lexicon_valence_only": [e for e in names if e not in EMPATH_MAP],
    }
    result = {"settings": settings, "baseline": list(baseline.values()),
              "chance": list(reference.values()), "samples": samples}
    rejudge(result)
    elapsed = time.perf_counter() - started
    result["timing"] = {
        "total_seconds": round(elapsed, 1), "generation_seconds": round(generation_seconds, 1),
        "probe_seconds": round(judge_seconds, 1),
        "replies": len(samples) + len(baseline) + len(reference),
        "generated_tokens": generated_tokens,
        "tokens_per_second": round(generated_tokens / generation_seconds, 1)
        if generation_seconds else None,
        "seconds_per_reply": round(elapsed / (len(samples) + len(baseline) + len(reference)), 3),
    }
    return result


def _probe_judge(model, names, baseline: dict, samples: list[dict], reference: dict,
                 progress) -> None:
    """Add the probe's verdict to every sample (the target's cosine, steered vs baseline) and to
    every chance reply (for each evaluated emotion)."""
    from .probe import Probe

    probe = Probe(model)
    missing = [n for n in names if n not in probe.vectors]
    if missing:
        raise EdgeemoError(f"the probe has no vector for {', '.join(missing)}")

    def read(texts: list[str]) -> list[dict[str, float] | None]:
        out: list[dict | None] = [None] * len(texts)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        for start in range(0, len(idx), 16):
            chunk = idx[start:start + 16]
            for i, ranked in zip(chunk, probe.scores([texts[i] for i in chunk])):
                out[i] = dict(ranked)
        return out

    base_ids = list(baseline)
    for sid, scores in zip(base_ids, read([baseline[s]["text"] for s in base_ids])):
        baseline[sid]["probe"] = None if scores is None else {
            e: round(v, 4) for e, v in scores.items()}
    steered = read([s["text"] for s in samples])
    for n, (sample, scores) in enumerate(zip(samples, steered)):
        base = baseline[sample["scenario"]]["probe"]
        s = None if scores is None else scores[sample["emotion"]]
        u = None if base is None else base[sample["emotion"]]
        delta = None if s is None or u is None else s - u
        sample["judges"]["probe"] = {
            "steered": None if s is None else round(s, 4),
            "baseline": None if u is None else round(u, 4),
            "delta": None if delta is None else round(delta, 4),
            "success": bool(delta is not None and delta >= PROBE_MARGIN - 1e-12),
        }
        if progress:
            progress("probe", n + 1, len(samples))
    ref_ids = list(reference)
    for sid, scores in zip(ref_ids, read([reference[s]["text"] for s in ref_ids])):
        reference[sid]["probe"] = None if scores is None else {
            e: round(v, 4) for e, v in scores.items()}


def rejudge(result: dict) -> dict:
    """Apply this module's margins and thresholds to a result's stored scores and features.

    Sets every sample's regime and success flags, judges the chance replies, and rebuilds the
    summary, in place (and returns the result). evaluate() ends with it; run it on an older
    result.json after changing a threshold to re-judge without generating again.
    """
    names = result["settings"]["emotions"]
    margins = {"lexicon": LEXICON_MARGIN, "valence": VALENCE_MARGIN, "probe": PROBE_MARGIN}
    for sample in result["samples"]:
        sample["regime"] = regime(sample["features"])
        for name, verdict in sample["judges"].items():
            margin = margins["valence" if verdict.get("measure") == "valence" else name]
            # nothing was said: nothing succeeded
            verdict["success"] = bool(not sample["features"]["empty"]
                                      and verdict["delta"] is not None
                                      and verdict["delta"] >= margin - 1e-12)
    for base in result["baseline"]:
        base["regime"] = regime(base["features"])
    baseline = {b["scenario"]: b for b in result["baseline"]}
    for ref in result.get("chance", []):
        base = baseline[ref["scenario"]]
        said = bool(ref["text"].strip())
        ref["judges"] = {"lexicon": {e: said and lexicon_judgement(
            e, ref["lexicon"], base["lexicon"])["success"] for e in names}}
        if ref.get("probe") and base.get("probe"):
            ref["judges"]["probe"] = {e: ref["probe"][e] - base["probe"][e] >= PROBE_MARGIN - 1e-12
                                      for e in names}
    result["settings"]["margins"] = margins
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    """Aggregates of an evaluation: success per judge, regime shares, drift."""
    samples = result["samples"]
    judges = result["settings"]["judges"]
    names = result["settings"]["emotions"]
    keys = [strength_key(s) for s in result["settings"]["strengths"]]

    def where(**match):
        return [s for s in samples if all(
            (_setting(s) if k == "strength" else s[k]) == v for k, v in match.items())]

    success = {}
    for judge in judges:
        ok = lambda rows: _rate([r["judges"][judge]["success"] for r in rows])  # noqa: E731
        success[judge] = {
            "overall": ok(samples),
            "per_emotion": {e: ok(where(emotion=e)) for e in names},
            "per_strength": {k: ok(where(strength=k)) for k in keys},
            "cells": {e: {k: ok(where(emotion=e, strength=k)) for k in keys} for e in names},
            "surgical_among_successes": _rate([r["regime"] == "surgical" for r in samples
                                               if r["judges"][judge]["success"]]),
        }
    regimes = {
        "overall": _shares([s["regime"] for s in samples]),
        "per_emotion": {e: _shares([s["regime"] for s in where(emotion=e)]) for e in names},
        "per_strength": {k: _shares([s["regime"] for s in where(strength=k)]) for k in keys},
        "cells": {e: {k: _shares([s["regime"] for s in where(emotion=e, strength=k)])
                      for k in keys} for e in names},
        "baseline": _shares([b["regime"] for b in result["baseline"]]),
    }
    drifted = [s for s in samples if s["drift"]["drifted"]]
    drift = {
        "steered": len(drifted), "steered_share": _rate([s["drift"]["drifted"] for s in samples]),
        "baseline": sum(b["drift"]["drifted"] for b in result["baseline"]),
        "scripts": dict(Counter(x for s in drifted for x in s["drift"]["foreign_scripts"])),
        "examples": [{"emotion": s["emotion"], "strength": s["strength"],
                      "scenario": s["scenario"], "tokens": s["drift"]["tokens"][:5]}
                     for s in drifted[:10]],
    }
    refs = result.get("chance", [])
    chance = {judge: {
        "overall": _rate([ok for ref in refs for ok in ref["judges"].get(judge, {}).values()]),
        "per_emotion": {e: _rate([ref["judges"][judge][e] for ref in refs
                                  if e in ref["judges"].get(judge, {})]) for e in names},
    } for judge in judges}
    return {"n_samples": len(samples), "success": success, "chance": chance, "regimes": regimes,
            "drift": drift}


# --- the report -----------------------------------------------------------------------------------

def write_report(result: dict, directory: Path | str) -> dict[str, Path]:
    """Write ``result.json``, ``report.md``, ``regimes.png`` and ``success.png`` into ``directory``.

    Every file is written under a temporary name and renamed, so a report is whole or absent.
    Returns the paths by kind.
    """
    directory = Path(directory)
    paths = {"json": directory / "result.json", "markdown": directory / "report.md",
             "regimes": directory / "regimes.png", "success": directory / "success.png"}
    store.write_text(paths["json"], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot_regimes(result, paths["regimes"])
    plot_success(result, paths["success"])
    store.write_text(paths["markdown"], markdown_report(result))
    return paths


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def markdown_report(result: dict) -> str:
    st, sm = result["settings"], result["summary"]
    judges = st["judges"]
    lines = [
        f"# Steering evaluation: {st['model']}", "",
        f"{len(st['emotions'])} emotions × {len(st['strengths'])} strengths × "
        f"{len(st['scenarios'])} scenarios = {sm['n_samples']} steered replies "
        f"(+ {len(result['baseline'])} unsteered baseline replies"
        f"{', + %d chance replies' % len(result['chance']) if result.get('chance') else ''}); "
        f"seed {st['seed']}, "
        f"{st['max_tokens']} tokens, temperature {st['temperature']}.", "",
        "## Judges", "",
        f"- **lexicon**: Empath categories mapped onto the emotions; success when the target's "
        f"share of words rises by ≥ {st['margins']['lexicon']} over the baseline reply. "
        f"Judged by VADER valence instead (≥ {st['margins']['valence']} in the emotion's "
        f"direction): {', '.join(st['lexicon_valence_only']) or 'none'}.",
    ]
    if "probe" in judges:
        lines.append(f"- **probe**: the unsteered model's readout of the steered reply; success "
                     f"when the target's cosine rises by ≥ {st['margins']['probe']}.")
    th = st["thresholds"]
    lines += [
        f"- **regimes**: explosive if empty, > {_pct(th.get('blank_explosive', 0.5))} whitespace, "
        f"> {_pct(th['nonword_explosive'])} non-words, or "
        f"perplexity > {th['ppl_ratio_explosive']}× the baseline reply's (under the unsteered "
        f"model); repetitive if ≥ {_pct(th['repeat3_repetitive'])} repeated 3-grams or distinct-2 "
        f"< {th['distinct2_repetitive']}; otherwise surgical.", "",
        "## Overall", "",
        "| measure | value |", "| --- | --- |",
    ]
    for judge in judges:
        j = sm["success"][judge]
        lines.append(f"| success ({judge}) | {_pct(j['overall'])} (chance: "
                     f"{_pct(sm.get('chance', {}).get(judge, {}).get('overall'))}) |")
        lines.append(f"| surgical among {judge} successes | {_pct(j['surgical_among_successes'])} |")
    for r in REGIMES:
        lines.append(f"| {r} | {_pct(sm['regimes']['overall'][r])} "
                     f"(baseline {_pct(sm['regimes']['baseline'][r])}) |")
    lines.append(f"| language drift | {sm['drift']['steered']} steered replies "
                 f"(baseline {sm['drift']['baseline']}) |")
    t = result.get("timing", {})
    if t:
        lines.append(f"| time | {t['total_seconds']:.0f} s, {t['seconds_per_reply']:.2f} s per "
                     f"reply, {t['tokens_per_second']} tokens/s generating |")
    lines += ["", "## Per emotion", ""]
    if None in st["strengths"] and st.get("recommended_strengths"):
        lines += ["Recommended strengths (each vector's own): " + ", ".join(
            f"{e} {strength_key(v) if v is not None else '–'}"
            for e, v in st["recommended_strengths"].items()) + ".", ""]
    lines += [
              "| emotion | " + " | ".join(f"success ({j})" for j in judges)
              + " | surgical | repetitive | explosive |",
              "| --- |" + " --- |" * (len(judges) + 3)]
    for e in st["emotions"]:
        reg = sm["regimes"]["per_emotion"][e]
        lines.append(f"| {e} | " + " | ".join(_pct(sm["success"][j]["per_emotion"][e])
                                               for j in judges)
                     + " | " + " | ".join(_pct(reg[r]) for r in REGIMES) + " |")
    lines += ["", "## Per strength", "",
              "| strength | " + " | ".join(f"success ({j})" for j in judges)
              + " | surgical | repetitive | explosive |",
              "| --- |" + " --- |" * (len(judges) + 3)]
    for k in (strength_key(s) for s in st["strengths"]):
        reg = sm["regimes"]["per_strength"][k]
        lines.append(f"| {k} | " + " | ".join(_pct(sm["success"][j]["per_strength"][k])
                                              for j in judges)
                     + " | " + " | ".join(_pct(reg[r]) for r in REGIMES) + " |")
    if sm["drift"]["examples"]:
        lines += ["", "## Language drift", ""]
        for ex in sm["drift"]["examples"]:
            lines.append(f"- {ex['emotion']} {strength_key(ex['strength'])} on {ex['scenario']}: "
                         + ", ".join(f"`{tok}`" for tok in ex["tokens"]))
    lines += ["", "## Examples", "", "One reply per regime where there is one (first found).", ""]
    for r in REGIMES:
        sample = next((s for s in result["samples"] if s["regime"] == r), None)
        if sample is None:
            continue
        text = " ".join(sample["text"].split())[:300] or "(empty)"
        base = " ".join(result_baseline(result, sample["scenario"])["text"].split())[:300]
        lines += [f"**{r}** — {sample['emotion']} {strength_key(sample['strength'])} on "
                  f"{sample['scenario']}:", "", f"> {text}", "", f"baseline: {base}", ""]
    lines += ["Plots: `regimes.png` (regime shares per emotion × strength), `success.png` "
              "(success rate per emotion and judge).", ""]
    return "\n".join(lines)


def result_baseline(result: dict, scenario_id: str) -> dict:
    return next(b for b in result["baseline"] if b["scenario"] == scenario_id)


REGIME_COLOURS = {"surgical": "#4c9f70", "repetitive": "#e0a030", "explosive": "#c8453c"}


def plot_regimes(result: dict, path: Path | str) -> Path:
    """Regime map: one cell per emotion × strength, coloured by its most common regime, with the
    surgical / repetitive / explosive shares written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    st, cells = result["settings"], result["summary"]["regimes"]["cells"]
    names, keys = st["emotions"], [strength_key(s) for s in st["strengths"]]
    image = np.ones((len(names), len(keys), 3))
    fig, ax = plt.subplots(figsize=(max(6.5, 3.5 + 1.1 * len(keys)), 1.4 + 0.38 * len(names)))
    for i, e in enumerate(names):
        for j, k in enumerate(keys):
            shares = cells[e][k]
            top = max(REGIMES, key=lambda r: shares[r])
            colour = np.array(to_rgb(REGIME_COLOURS[top]))
            image[i, j] = 1 - shares[top] * (1 - colour)        # paler when less dominant
            ax.text(j, i, "/".join(f"{100 * shares[r]:.0f}" for r in REGIMES), ha="center",
                    va="center", fontsize=7)
    ax.imshow(image, aspect="auto")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("strength (fraction of residual norm)")
    ax.set_title(f"{st['model']}: regimes\n"
                 "% surgical / repetitive / explosive; colour: most common", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in REGIME_COLOURS.values()]
    ax.legend(handles, REGIMES, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_success(result: dict, path: Path | str) -> Path:
    """Success rate per emotion (all strengths pooled), one bar per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st, success = result["settings"], result["summary"]["success"]
    names, judges = st["emotions"], st["judges"]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.35 * len(names)))
    height = 0.8 / len(judges)
    y = np.arange(len(names))
    for n, judge in enumerate(judges):
        values = [success[judge]["per_emotion"][e] or 0.0 for e in names]
        ax.barh(y + n * height, values, height, label=judge)
    ax.set_yticks(y + height * (len(judges) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate (steered reply beats the baseline reply by the judge's margin)")
    strengths = ", ".join(strength_key(s) for s in st["strengths"])
    ax.set_title(f"{st['model']}: success per emotion (strengths {strengths})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path | str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with store.atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


# --- calibration ----------------------------------------------------------------------------------

CALIBRATION_STRENGTHS = (0.03, 0.05, 0.08, 0.12, 0.16)
CALIBRATION_SCENARIOS = 8          # two per kind
SURGICAL_WINDOW = 0.8              # a strength is usable when at least this share is surgical


def calibrate(model, emotions: Sequence[str], strengths: Sequence[float] = CALIBRATION_STRENGTHS,
              scenarios: Sequence[dict] | None = None, *, seed: int = 0, max_tokens: int = 48,
              judge: str = "both", use_probe: bool = True, threads: int | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Per emotion, the strength to recommend, with the evidence.

    The window is the strengths whose replies are at least :data:`SURGICAL_WINDOW` surgical;
    within it the strength with the best success rate wins, the smaller one on a tie. The
    success rate is the ``judge``'s ("lexicon", "probe", or "both": the mean of the two).
    An emotion with an empty window gets ``strength`` None: no strength is safe, nothing to apply.
    """
    if judge not in ("lexicon", "probe", "both"):
        raise EdgeemoError(f"unknown judge '{judge}': use lexicon, probe or both")
    if judge == "probe" and not use_probe:
        raise EdgeemoError("the probe judge needs use_probe=True")
    scenarios = list(scenarios) if scenarios is not None else select_scenarios(
        CALIBRATION_SCENARIOS)
    strengths = sorted(float(s) for s in strengths)
    result = evaluate(model, emotions, strengths, scenarios, seed=seed, max_tokens=max_tokens,
                      use_probe=use_probe, chance=False, threads=threads, progress=progress)
    sm = result["summary"]
    used = [j for j in ("lexicon", "probe") if j in result["settings"]["judges"]
            and judge in (j, "both")]
    out = {}
    for name in result["settings"]["emotions"]:
        rows = {}
        for s in strengths:
            k = strength_key(s)
            rates = {j: sm["success"][j]["cells"][name][k] for j in used}
            rows[k] = {"strength": s, "surgical_share": sm["regimes"]["cells"][name][k]["surgical"],
                       "success_rate": round(float(np.mean(list(rates.values()))), 4),
                       **{f"success_{j}": r for j, r in rates.items()},
                       "regimes": sm["regimes"]["cells"][name][k]}
        window = [r for r in rows.values() if r["surgical_share"] >= SURGICAL_WINDOW]
        best = min(window, key=lambda r: (-r["success_rate"], r["strength"]), default=None)
        out[name] = {
            "strength": None if best is None else best["strength"],
            "success_rate": None if best is None else best["success_rate"],
            "surgical_share": None if best is None else best["surgical_share"],
            "window": [r["strength"] for r in window],
            "judge": judge, "per_strength": rows, "seed": seed, "max_tokens": max_tokens,
            "scenarios": [s["id"] for s in scenarios], "model": result["settings"]["model"],
        }
    return out


def apply_calibration(vector_path: Path | str, strength: float, info: dict | None = None, *,
                      output: Path | str | None = None) -> Path:
    """Rewrite a vector file so its tensors sit at ``strength``; return the path written.

    Each tensor becomes its unit direction × ``strength`` × that layer's ``residual_norm``, so
    stock llama.cpp at scale 1.0 steers at the new strength. Metadata ``strength`` and
    ``direction_scale`` follow; ``calibrated`` = true and ``calibration_*`` keys record the
    evidence from ``info`` (a :func:`calibrate` entry). All other metadata, the layers and the
    model hint stay as they were. Writes ``output`` if given, else the file itself (atomically).
    """
    from .steer import check_strength
    from .vectors import ControlVector

    check_strength(strength)
    if strength <= 0:
        raise EdgeemoError(f"a calibrated strength must be positive, not {strength}")
    vec = ControlVector.from_gguf(vector_path)
    norms = vec.metadata.get("residual_norm")
    if not isinstance(norms, list) or len(norms) != len(vec.layers):
        raise EdgeemoError(f"{vector_path} has no per-layer residual_norm metadata for its "
                           f"{len(vec.layers)} layers; only edgeemo vectors can be calibrated")
    directions, scales = {}, []
    for layer, norm in zip(vec.layers, norms):     # residual_norm is in layer order
        d = vec.directions[layer].astype(np.float64)
        length = np.linalg.norm(d)
        if length == 0:
            raise EdgeemoError(f"{vector_path}: direction.{layer} is zero; re-export the vector")
        scale = float(strength) * float(norm)
        directions[layer] = (d / length * scale).astype(np.float32)
        scales.append(scale)
    metadata = dict(vec.metadata)
    previous = metadata.get("strength")
    metadata.update(strength=float(strength), direction_scale=scales, calibrated=True)
    info = info or {}
    extra = {
        "calibration_previous_strength": previous,
        "calibration_success_rate": info.get("success_rate"),
        "calibration_surgical_share": info.get("surgical_share"),
        "calibration_judge": info.get("judge"),
        "calibration_window": info.get("window") or None,
        "calibration_strengths": [float(r["strength"]) for r in info["per_strength"].values()]
        if info.get("per_strength") else None,
        "calibration_scenarios": len(info["scenarios"]) if info.get("scenarios") else None,
        "calibration_seed": info.get("seed"),
    }
    metadata.update({k: (float(v) if isinstance(v, float) else v)
                     for k, v in extra.items() if v is not None})
    out = ControlVector(vec.model_hint, vec.n_embd, directions, metadata)
    return out.to_gguf(output or vector_path)

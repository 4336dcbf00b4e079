"""What a steered reply looks like: did the text survive, did the language hold?

Regimes, from surface statistics and the unsteered model's perplexity:
  surgical    fluent text whose tone moved; what steering is for
  repetitive  the reply loops ("I was. I was. I was.")
  explosive   the reply breaks apart: empty or whitespace, non-words, or text the unsteered model
              finds far less likely than its own reply

:func:`classify_text` judges a text on its surface alone; :func:`text_features` with a
:class:`Scorer` adds the perplexity ratio, and :func:`regime` decides. The thresholds, and the
replies they were read off, are explained where they are set.

Language drift: a reply written (partly) in a script the prompt does not use, which small models
do when pushed hard (Chinese characters in an answer to an English prompt).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import _llama
from ..errors import EdgeemoError

# Regime thresholds. Chosen on real replies of the default model (SmolLM2-135M-Instruct,
# comprehension vectors, 48 tokens, temperature 0.7, seed 0) to 6 scenarios steered with afraid
# and happy at 0.03, 0.08, 0.15, 0.3 and 0.6, read one by one, plus the unsteered replies:
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

    A separate llama.cpp model that keeps every position's logits (``_llama.load_scorer``): the
    steered runtime's control vector never touches it, so it measures how likely the *unsteered*
    model finds a text.
    """

    def __init__(self, model_path: Path | str, *, n_ctx: int = 1024, threads: int | None = None):
        self.llm = _llama.load_scorer(model_path, n_ctx=n_ctx, threads=threads)
        self.n_ctx = n_ctx
        self._cache: dict[tuple, float | None] = {}

    def logprobs(self, prompt_ids: Sequence[int], reply: str) -> np.ndarray:
        """Natural-log probability of each reply token given the prompt and the tokens before it."""
        reply_ids = _llama.tokenize(self.llm, reply, bos=False)
        if not reply_ids:
            return np.zeros(0)
        prompt_ids = list(prompt_ids)[-(self.n_ctx - len(reply_ids)):]   # keep the prompt's end
        if not prompt_ids:
            raise EdgeemoError(f"the reply is {len(reply_ids)} tokens, more than the scorer's "
                               f"context of {self.n_ctx}")
        logits = _llama.score_logits(self.llm, prompt_ids + reply_ids, len(prompt_ids))
        picked = logits[np.arange(len(reply_ids)), reply_ids].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        np.exp(np.subtract(logits, top, out=logits), out=logits)   # in place: (T, vocab) floats
        log_norm = top[:, 0].astype(np.float64) + np.log(logits.sum(axis=1, dtype=np.float64))
        return picked - log_norm

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
    """Letters of ``text`` counted by script (digits, punctuation, symbols, emoji are ignored)."""
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

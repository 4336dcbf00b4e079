"""What every judge is: reads texts, compares a steered reply with its baseline, has a margin.

A judge is a small class (:class:`Judge`) with three parts: ``read`` scores texts, ``verdict``
compares a steered reply's scores with its baseline's for one emotion, ``margin`` says how far
the score must move. :class:`ScoredJudge` is a judge that scores every emotion of a text (the
readers, the LLM judge): its verdict keeps them all, for identification among the replies to one
request, and its margin is measured from unsteered replies (:func:`chance_margin`).
The judges themselves are in ``judges.py`` and ``llmjudge.py``, registered in ``judges.JUDGES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np


class Judge:
    """Scores texts for emotions; a steered reply succeeds when its score for the target beats the
    baseline reply's by the judge's margin. Subclasses set ``name`` and implement ``read``."""

    name: ClassVar[str] = ""

    def __init__(self, model=None, emotions: Sequence[str] = ()):
        self.model, self.emotions = model, list(emotions)

    def read(self, texts: list[str]) -> list[dict[str, float] | None]:
        """Per text, ``{emotion or measure: score}``; None where the text cannot be scored."""
        raise NotImplementedError

    def stored(self, scores: dict | None) -> dict | None:
        """Scores as they are kept in a result (baseline and chance replies)."""
        return scores

    @classmethod
    def verdict(cls, emotion: str, steered: dict | None, baseline: dict | None) -> dict:
        """Compare one reply's scores with its baseline's for ``emotion`` (needs no model)."""
        s = None if steered is None else steered[emotion]
        u = None if baseline is None else baseline[emotion]
        delta = None if s is None or u is None else s - u
        return {"steered": None if s is None else round(s, 4),
                "baseline": None if u is None else round(u, 4),
                "delta": None if delta is None else round(delta, 4),
                "success": bool(delta is not None and delta >= cls.margin({}) - 1e-12)}

    @classmethod
    def margin(cls, verdict: dict) -> float:
        raise NotImplementedError


class ScoredJudge(Judge):
    """A judge that scores every emotion of a text. Its margin is measured on each run from pairs
    of unsteered replies (``chance_margin``) and stored in each verdict as "margin"."""

    chance_margin = True

    @classmethod
    def verdict(cls, emotion, steered, baseline):
        out = super().verdict(emotion, steered, baseline)
        # every emotion's score, for identification among the replies to one prompt
        out["scores"] = None if steered is None else {e: round(v, 4) for e, v in steered.items()}
        return out

    def stored(self, scores):
        return None if scores is None else {e: round(v, 4) for e, v in scores.items()}

    @classmethod
    def margin(cls, verdict):
        return verdict.get("margin", 0.0)


def chance_margin(deltas: list[float]) -> float:
    """A measured margin: the 90th percentile of the score differences between two unsteered
    replies to the same prompt (so no steering "succeeds" about one time in ten)."""
    return round(float(np.percentile(deltas, 90)), 4) if deltas else 0.0

"""Aggregates of an evaluation: success per judge, regimes, drift, and what a chat user meets,
each rate with a 95% bootstrap interval over the prompts.

``evaluate.rejudge`` rebuilds a result's summary with :func:`summarize`; :func:`chat_summary` is
the part that reads like a chat user (success = moved, on task and coherent; identification among
the replies to one prompt). Intervals resample prompts (requests), not replies: the replies to one
prompt, over emotions and seeds, are not independent of each other.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from .regimes import REGIMES
from .report import strength_key

BOOTSTRAP_SAMPLES = 2000
# The LLM judge's P(yes) from which a reply counts as answering its request. Hand-written tone
# replies to their own request score 0.83-0.97, and most given to another request stay under it
# (scripts/llm_judge_ceiling.py measures both; records/judge-ceiling-llm.json has the figures).
LLM_ON_TASK = 0.5


def _setting(sample: dict) -> str:
    """The strength setting a sample was made under (older results lack "setting")."""
    return sample.get("setting") or strength_key(sample["strength"])


def row_key(row: dict) -> tuple[str, int]:
    """What pairs a reply with its baseline: the prompt and the run (the base seed; one run per
    seed in ``evaluate(seeds=...)``, 0 in results made before runs existed)."""
    return row["scenario"], row.get("run", 0)


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {r: round(counts[r] / len(labels), 4) if labels else 0.0 for r in REGIMES}



def interval(rows: list, flag: Callable[[object], bool], cluster: Callable[[object], str],
             seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of the share of ``rows`` for which ``flag`` holds, resampling the
    clusters (prompts) with replacement (:data:`BOOTSTRAP_SAMPLES` times, seeded)."""
    if not rows:
        return None
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        h = hits[cluster(r)]
        h[0] += bool(flag(r))
        h[1] += 1
    counts = np.array(list(hits.values()), dtype=float)            # (clusters, 2)
    pick = np.random.default_rng(seed).integers(0, len(counts), (BOOTSTRAP_SAMPLES, len(counts)))
    rates = counts[pick, 0].sum(1) / counts[pick, 1].sum(1)
    return [round(float(np.percentile(rates, 2.5)), 4), round(float(np.percentile(rates, 97.5)), 4)]


def label_prior(result: dict, judge: str) -> dict[str, float]:
    """A label-set judge's mean log-probability of each label over the unsteered replies to the
    margin prompts (never judged): its leaning before any steering ("calm" for neutral replies),
    subtracted before its first choice is read (contextual calibration, Zhao et al. 2021). Empty
    when the result has no margin pairs."""
    rows = [sc for p in result.get("margin_pairs") or []
            for sc in (p.get("scores", {}).get(judge) or []) if sc]
    return {e: float(np.mean([r[e] for r in rows])) for e in rows[0]} if rows else {}


def first_choice(scores: dict[str, float], prior: dict[str, float] | None = None) -> str:
    """The emotion (neutral left out) a label-set judge rates highest, less its prior."""
    prior = prior or {}
    return max((e for e in scores if e != "neutral"), key=lambda e: scores[e] - prior.get(e, 0.0))


def _prompt(row) -> str:
    return row["scenario"]


def chat_summary(result: dict) -> dict:
    """What a chat user meets: per judge, success = moved beyond the judge's margin AND on task
    AND not collapsed (surgical); on-task rates steered and unsteered; identification = for each
    prompt, run and setting, is the target's own reply the one of the replies steered toward each
    emotion that scores highest for the target (top-1; chance 1 / number of emotions). Every rate
    has a 95% interval over prompts in ``intervals``. A judge that reads the whole label set (the
    LLM judge) also gives ``top_emotion``: how often the target is its first choice among the
    emotions, its own on-task verdict (``on_task_by``) with its agreement with the embedding
    check, and, when asked, ``preferred``: how often it finds the steered reply more like the
    target than the unsteered one, shown both (both orders; chance 50%)."""
    samples = result["samples"]
    names = result["settings"]["emotions"]
    has_task = bool(samples) and all("on_task" in s and "on_task" in s["on_task"] for s in samples)
    refs = result.get("chance", [])
    ci: dict = {}
    out: dict = {
        "on_task": _rate([s["on_task"]["on_task"] for s in samples]) if has_task else None,
        "on_task_unsteered": _rate([r["on_task"]["on_task"] for r in refs if "on_task" in r])
        if has_task else None,
        "coherent": _rate([s["regime"] == "surgical" for s in samples]),
        "success": {}, "moved": {}, "identification": {}, "per_emotion": {}, "cells": {},
        "top_emotion": {}, "on_task_by": {}, "preferred": {}, "intervals": ci,
        "seeds": result["settings"].get("seeds", [result["settings"].get("seed", 0)]),
        "prompts": len({s["scenario"] for s in samples}),
    }
    if has_task:
        ci["on_task"] = interval(samples, lambda s: s["on_task"]["on_task"], _prompt)
    ci["coherent"] = interval(samples, lambda s: s["regime"] == "surgical", _prompt)

    def ok(s, judge):
        return (s["judges"][judge]["success"] and s["regime"] == "surgical"
                and (not has_task or s["on_task"]["on_task"]))

    keys = [strength_key(x) for x in result["settings"]["strengths"]]
    for e in names:
        out["cells"][e] = {}
        for k in keys:
            cell = [s for s in samples if s["emotion"] == e and _setting(s) == k]
            out["cells"][e][k] = {
                "on_task": _rate([s["on_task"]["on_task"] for s in cell]) if has_task else None,
                "coherent": _rate([s["regime"] == "surgical" for s in cell]),
                "success": {j: _rate([ok(s, j) for s in cell])
                            for j in result["settings"]["judges"]}}
    for judge in result["settings"]["judges"]:
        out["moved"][judge] = _rate([s["judges"][judge]["success"] for s in samples])
        out["success"][judge] = _rate([ok(s, judge) for s in samples])
        ci[f"moved {judge}"] = interval(samples, lambda s: s["judges"][judge]["success"], _prompt)
        ci[f"success {judge}"] = interval(samples, lambda s: ok(s, judge), _prompt)
        out["per_emotion"][judge] = {e: _rate([ok(s, judge) for s in samples if s["emotion"] == e])
                                     for e in names}
        if all("on_task" in s and judge in s["on_task"] for s in samples) and samples:
            said = [s["on_task"][judge] >= LLM_ON_TASK for s in samples]
            out["on_task_by"][judge] = {
                "on_task": _rate(said),
                "unsteered": _rate([r["on_task"][judge] >= LLM_ON_TASK for r in refs
                                    if judge in r.get("on_task", {})]),
                "agreement": _rate([a == s["on_task"]["on_task"] for a, s in zip(said, samples)])
                if has_task else None}
            ci[f"on_task {judge}"] = interval(samples,
                                              lambda s: s["on_task"][judge] >= LLM_ON_TASK, _prompt)
        if samples and all(judge in s.get("preferred", {}) for s in samples):
            out["preferred"][judge] = _rate([s["preferred"][judge] > 0.5 for s in samples])
            ci[f"preferred {judge}"] = interval(samples, lambda s: s["preferred"][judge] > 0.5,
                                                _prompt)
        # a judge that scores replies; a reply it could not read (empty) is a miss below
        scored = [s["judges"][judge]["scores"] for s in samples
                  if s["judges"][judge].get("scores")]
        if not scored:
            continue
        if "neutral" in scored[0]:                                     # a label-set judge
            prior = label_prior(result, judge)

            def named(s, prior):
                scores = s["judges"][judge].get("scores")
                return bool(scores) and first_choice(scores, prior) == s["emotion"]

            first = [named(s, prior) for s in samples]
            out["top_emotion"][judge] = {
                "top1": _rate(first), "chance": 0.05, "prior": bool(prior),
                "top1_raw": _rate([named(s, None) for s in samples])}
            ci[f"top_emotion {judge}"] = interval(list(zip(samples, first)), lambda p: p[1],
                                                  lambda p: p[0]["scenario"])
        if len(names) < 2:
            continue
        groups: dict[tuple, dict] = {}
        for s in samples:
            groups.setdefault((*row_key(s), _setting(s)), {})[s["emotion"]] = s
        hits = []
        for group in groups.values():
            rated = [r for r in group.values() if r["judges"][judge].get("scores")]
            for e, s in group.items():
                best = max(rated, key=lambda r: r["judges"][judge]["scores"][e], default=None)
                hits.append((s["scenario"], best is s))
        out["identification"][judge] = {"top1": _rate([h for _, h in hits]),
                                        "chance": round(1 / len(names), 4), "n": len(hits)}
        ci[f"identification {judge}"] = interval(hits, lambda h: h[1], lambda h: h[0])
    return out


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
        "per_strength": {k: _rate([s["drift"]["drifted"] for s in where(strength=k)])
                         for k in keys},
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
            "drift": drift, "chat": chat_summary(result)}

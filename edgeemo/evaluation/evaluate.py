"""Steering evaluation: does a vector move the tone, does the text survive, does the language hold.

    from edgeemo.evaluation.evaluate import evaluate
    from edgeemo.evaluation.report import write_report
    result = evaluate(EmotionModel(), ["afraid", "happy"], [0.04, 0.08], stimuli.scenarios()[:6])
    write_report(result, "eval-report")       # result.json, report.md, regimes.png, success.png

For every scenario prompt the unsteered model answers once (the baseline), then the steered model
answers the same prompt with the same seed for each emotion × strength. Each steered reply is
compared with the baseline reply of its scenario by three independent checks:

  judges   did the emotion move? Each judge (``judges.JUDGES``) reads every reply and gives its
           verdict; a new judge is a class in ``judges.py``, and nothing here changes.
  regimes  did the text survive? Surgical, repetitive or explosive (``regimes.py``).
  drift    did the language hold? A reply in a script the prompt does not use (``regimes.py``).

This module generates the replies (:func:`evaluate`), judges them again from their stored scores
(:func:`rejudge`) and aggregates them (:func:`summarize`); ``report.py`` writes the result as JSON,
markdown and plots.

Calibration (``calibration.py``) runs this evaluation over candidate strengths and writes the
chosen one into each vector file.

Everything is seeded: the same model, vectors, settings and seed give the same numbers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

from .. import emotions as emotions_mod
from ..errors import EdgeemoError
from .judges import EMPATH_MAP, JUDGES, MARGINS
from .ontask import ON_TASK_THRESHOLD
from .regimes import (BLANK_EXPLOSIVE, DISTINCT2_REPETITIVE, NONWORD_EXPLOSIVE,
                      PPL_RATIO_EXPLOSIVE, REGIMES, REPEAT3_REPETITIVE, Scorer, language_drift,
                      regime, text_features)
from .report import strength_key, write_report

# write_report is here too so that one import gives the whole evaluation; listing it tells
# linters the import is meant.
__all__ = ["add_judges", "evaluate", "rejudge", "select_scenarios", "strength_key", "summarize", "write_report"]


# --- scenarios ------------------------------------------------------------------------------------

def select_scenarios(spec: int | str | Sequence[str] | None = None, *,
                     exclude: Sequence[str] = (), pool: str = "scenarios") -> list[dict]:
    """Scenarios by count or by id, from ``pool``: "scenarios" (steering scenarios: statements,
    openings, conversation, story starts) or "requests" (everyday requests to an assistant).

    ``None``: all of them. An int N (or "N"): N scenarios taken round-robin over the kinds in file
    order (4 -> one neutral, one opposite, one conversational, one story). A comma-separated string
    or list of ids: those, in the order given. Scenarios whose ids are in ``exclude`` are left out.
    """
    from .. import stimuli

    if pool not in ("scenarios", "requests"):
        raise EdgeemoError(f"unknown prompt set '{pool}': choose scenarios or requests")
    rows = stimuli.requests() if pool == "requests" else stimuli.scenarios()
    every = [s for s in rows if s["id"] not in set(exclude)]
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
        raise EdgeemoError(f"unknown scenario id(s) {', '.join(missing) or '(none given)'}: ids "
                           f"are {every[0]['id']}-{every[-1]['id']}, or give a number of scenarios")
    return [known[i] for i in ids]


# --- the evaluation -------------------------------------------------------------------------------

def _setting(sample: dict) -> str:
    """The strength setting a sample was made under (older results lack "setting")."""
    return sample.get("setting") or strength_key(sample["strength"])


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {r: round(counts[r] / len(labels), 4) if labels else 0.0 for r in REGIMES}


def _load_runtime(model, seed: int, threads: int | None = None):
    from ..steer import EmotionModel

    if isinstance(model, EmotionModel):
        return model
    return EmotionModel(model, seed=seed, threads=threads)


class _Replies:
    """Answers scenario prompts with one runtime and keeps the generation time."""

    def __init__(self, runtime, scenarios, *, seed: int, max_tokens: int, temperature: float,
                 steer_prompt: bool = False):
        self.runtime, self.seed = runtime, seed
        self.options = {"max_tokens": max_tokens, "temperature": temperature,
                        "steer_prompt": steer_prompt}
        self.prompts = {s["id"]: runtime.prompt_ids([{"role": "user", "content": s["prompt"]}])
                        for s in scenarios}
        self.seconds, self.tokens, self.count = 0.0, 0, 0

    def __call__(self, scenario: dict, seed: int | None = None) -> dict:
        t0 = time.perf_counter()
        ids = list(self.runtime.stream_ids(self.prompts[scenario["id"]],
                                           seed=self.seed if seed is None else seed,
                                           **self.options))
        text = self.runtime.llm.detokenize(ids).decode("utf-8", errors="ignore") if ids else ""
        seconds = time.perf_counter() - t0
        self.seconds, self.tokens, self.count = self.seconds + seconds, self.tokens + len(ids), \
            self.count + 1
        return {"text": text, "tokens": len(ids), "seconds": round(seconds, 3)}


def evaluate(model, emotions: Sequence[str], strengths: Sequence[float],
             scenarios: Sequence[dict] | None = None, *, seed: int = 0, max_tokens: int = 60,
             temperature: float = 0.7, use_probe: bool = True, chance: bool = True,
             threads: int | None = None, baseline: Sequence[dict] | None = None,
             judges: Sequence[str] | None = None, on_task: bool = False,
             steer_prompt: bool = False,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Steer ``model`` with each emotion at each strength on each scenario; judge every reply.

    ``model`` is an ``EmotionModel`` or anything it accepts (None for the default model); a model
    built here uses ``threads`` (on a machine busy with other work, 1 thread is far faster than
    one per core: llama.cpp's threads wait on each other at every layer).
    A strength of None stands for each vector's recommended strength (its calibrated one, once
    ``edgeemo calibrate`` has run); samples record the strength applied and, as "setting", the
    key they are summarised under. ``scenarios`` are ``stimuli.scenarios()`` rows (all of them
    when None). ``progress(label, done, total)`` is called after each reply. With ``chance`` each
    scenario also gets a second unsteered reply (seed + 1), judged like a steered one: the
    success rate of no steering. ``baseline``: the "baseline" rows of an earlier result for the
    same model, scenarios, seed and max_tokens, reused instead of answering the scenarios
    unsteered again. ``judges``: names from ``judges.JUDGES`` (default lexicon, and probe when
    ``use_probe``). ``on_task``: check with an independent embedding model that each reply still
    answers its prompt (``ontask.py``); success in ``summary["chat"]`` then needs it.
    ``steer_prompt``: steer the prompt's tokens too, not only the reply's. Returns one JSON-ready dict: settings, the baseline replies, the chance
    replies, every sample, and a ``summary`` of the aggregates.
    """
    from ..vectors import check_strength

    started = time.perf_counter()
    names = [emotions_mod.canonical(e) for e in emotions]
    strengths = [None if s is None else check_strength(s) for s in strengths]
    if not names or not strengths:
        raise EdgeemoError("give at least one emotion and one strength to evaluate")
    scenarios = list(scenarios) if scenarios is not None else select_scenarios()
    if not scenarios:
        raise EdgeemoError("give at least one scenario to evaluate on")
    judge_names = list(judges) if judges is not None else \
        (["lexicon", "probe"] if use_probe else ["lexicon"])
    unknown = [j for j in judge_names if j not in JUDGES]
    if unknown:
        raise EdgeemoError(f"unknown judge {', '.join(unknown)}: choose from {', '.join(JUDGES)}")
    runtime = _load_runtime(model, seed, threads)
    shared = {}                                   # judges made from a vector's own data
    for name in names:
        method = runtime.vector(name).metadata.get("method")   # fail now, not after the baseline
        for j in judge_names:
            if method and getattr(JUDGES[j], "shares_data_with", None) == method:
                shared.setdefault(j, []).append(name)
    scorer = Scorer(runtime.model.path, threads=runtime.llm.n_threads)   # same as the runtime's
    reply = _Replies(runtime, scenarios, seed=seed, max_tokens=max_tokens, temperature=temperature,
                     steer_prompt=steer_prompt)

    runtime.clear()
    base = _baseline(reply, scenarios, scorer, baseline, progress)
    reference = _chance(reply, scenarios, seed, progress) if chance else {}
    samples, recommended = _steered(reply, names, strengths, scenarios, base, scorer, progress)

    t0 = time.perf_counter()
    for judge_name in judge_names:
        judge = JUDGES[judge_name](runtime.model, names)
        _judge(judge, names, base, samples, reference, progress)
    if on_task:
        _on_task(scenarios, base, samples, reference, progress)
    judge_seconds = time.perf_counter() - t0

    settings = {
        "model": runtime.model.name, "emotions": names,
        "strengths": strengths, "recommended_strengths": recommended,
        "scenarios": [s["id"] for s in scenarios], "seed": seed,
        "max_tokens": max_tokens, "temperature": temperature, "judges": judge_names,
        "threads": runtime.llm.n_threads, "on_task": on_task, "steer_prompt": steer_prompt,
        "on_task_threshold": ON_TASK_THRESHOLD,
        "judges_sharing_data": shared,
        "margins": dict(MARGINS),
        "thresholds": {"repeat3_repetitive": REPEAT3_REPETITIVE,
                       "distinct2_repetitive": DISTINCT2_REPETITIVE,
                       "nonword_explosive": NONWORD_EXPLOSIVE,
                       "blank_explosive": BLANK_EXPLOSIVE,
                       "ppl_ratio_explosive": PPL_RATIO_EXPLOSIVE},
        "lexicon_map": {e: list(c) for e, c in EMPATH_MAP.items()},
        "lexicon_valence_only": [e for e in names if e not in EMPATH_MAP],
    }
    result = {"settings": settings, "baseline": list(base.values()),
              "chance": list(reference.values()), "samples": samples}
    rejudge(result)
    elapsed = time.perf_counter() - started
    result["timing"] = {
        "total_seconds": round(elapsed, 1), "generation_seconds": round(reply.seconds, 1),
        "probe_seconds": round(judge_seconds, 1),
        "replies": reply.count,
        "generated_tokens": reply.tokens,
        "tokens_per_second": round(reply.tokens / reply.seconds, 1) if reply.seconds else None,
        "seconds_per_reply": round(elapsed / reply.count, 3) if reply.count else None,
    }
    return result


def _baseline(reply: _Replies, scenarios, scorer, given, progress) -> dict[str, dict]:
    """Each scenario answered once, unsteered, with the samples' seed (or an earlier run's)."""
    given = {b["scenario"]: b for b in given or []}
    if given and any(s["id"] not in given for s in scenarios):
        raise EdgeemoError("the baseline given to evaluate() lacks some of its scenarios")
    out: dict[str, dict] = {}
    for i, scenario in enumerate(scenarios):
        if given:        # judge scores other than the model-free lexicon are read again
            out[scenario["id"]] = {k: v for k, v in given[scenario["id"]].items()
                                   if k not in JUDGES or k == "lexicon"}
            continue
        r = reply(scenario)
        features = text_features(r["text"], r["text"], reply.prompts[scenario["id"]], scorer)
        out[scenario["id"]] = {
            "scenario": scenario["id"], "kind": scenario["kind"], "prompt": scenario["prompt"],
            **r, "features": features, "regime": regime(features),
            "drift": language_drift(scenario["prompt"], r["text"]),
        }
        if progress:
            progress("baseline", i + 1, len(scenarios))
    return out


def _chance(reply: _Replies, scenarios, seed: int, progress) -> dict[str, dict]:
    """A second unsteered reply (seed + 1) per scenario, judged later as if it had been steered:
    how often the judges "succeed" with no steering at all."""
    out = {}
    for i, scenario in enumerate(scenarios):
        r = reply(scenario, seed + 1)
        out[scenario["id"]] = {"scenario": scenario["id"], "seed": seed + 1, "text": r["text"],
                               "tokens": r["tokens"]}
        if progress:
            progress("chance", i + 1, len(scenarios))
    return out


def _steered(reply: _Replies, names, strengths, scenarios, base, scorer, progress):
    """Every emotion × strength × scenario reply, with its regime and drift (judged later)."""
    runtime = reply.runtime
    samples: list[dict] = []
    recommended: dict[str, float | None] = {}
    try:
        for name in names:
            for strength in strengths:
                applied = runtime.steer({name: strength})[name]
                recommended[name] = runtime.vector(name).metadata.get("strength")
                label = f"{name} {strength_key(applied)}"
                for i, scenario in enumerate(scenarios):
                    r = reply(scenario)
                    features = text_features(r["text"], base[scenario["id"]]["text"],
                                             reply.prompts[scenario["id"]], scorer)
                    samples.append({
                        "emotion": name, "strength": applied,
                        "setting": strength_key(strength), "scenario": scenario["id"],
                        "kind": scenario["kind"], **r, "features": features,
                        "regime": regime(features),
                        "drift": language_drift(scenario["prompt"], r["text"]), "judges": {},
                    })
                    if progress:
                        progress(label, i + 1, len(scenarios))
    finally:
        runtime.clear()
    return samples, recommended


def _judge(judge, names, baseline: dict, samples: list[dict], reference: dict, progress) -> None:
    """One judge's scores for the baseline and chance replies, and its verdict on every sample."""
    missing = [sid for sid, b in baseline.items() if judge.name not in b]
    for sid, scores in zip(missing, judge.read([baseline[sid]["text"] for sid in missing])):
        baseline[sid][judge.name] = judge.stored(scores)
    steered = judge.read([s["text"] for s in samples])
    for n, (sample, scores) in enumerate(zip(samples, steered)):
        sample["judges"][judge.name] = judge.verdict(
            sample["emotion"], scores, baseline[sample["scenario"]][judge.name])
        if progress and judge.name != "lexicon":
            progress(judge.name, n + 1, len(samples))
    refs = list(reference)
    for sid, scores in zip(refs, judge.read([reference[sid]["text"] for sid in refs])):
        reference[sid][judge.name] = judge.stored(scores)


def _on_task(scenarios, baseline: dict, samples: list[dict], reference: dict, progress) -> None:
    """Does each reply still answer its prompt? (the unsteered reply is the reference)"""
    from .ontask import on_task_scores

    prompts = {s["id"]: s["prompt"] for s in scenarios}
    rows = [*samples, *reference.values()]
    if progress:
        progress("on-task", 0, len(rows))
    checked = on_task_scores([prompts[r["scenario"]] for r in rows], [r["text"] for r in rows],
                             [baseline[r["scenario"]]["text"] for r in rows])
    for row, verdict in zip(rows, checked):
        row["on_task"] = verdict
    if progress:
        progress("on-task", len(rows), len(rows))


def rejudge(result: dict) -> dict:
    """Apply the current margins (judges.py) and regime thresholds (regimes.py) to a result's
    stored scores and features.

    Sets every sample's regime and success flags, judges the chance replies, and rebuilds the
    summary, in place (and returns the result). evaluate() ends with it; run it on an older
    result.json after changing a threshold to re-judge without generating again.
    """
    names = result["settings"]["emotions"]
    measured = _measured_margins(result)
    for row in [*result["samples"], *result.get("chance", [])]:
        if "on_task" in row:                        # the current threshold, on the stored score
            row["on_task"]["on_task"] = row["on_task"]["score"] >= ON_TASK_THRESHOLD
    for sample in result["samples"]:
        sample["regime"] = regime(sample["features"])
        for name, verdict in sample["judges"].items():
            if name in measured:
                verdict["margin"] = measured[name]
            margin = JUDGES[name].margin(verdict)
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
        ref["judges"] = {}
        for name in result["settings"]["judges"]:
            if ref.get(name) is None or base.get(name) is None:
                continue
            verdicts = {e: JUDGES[name].verdict(e, ref[name], base[name]) for e in names}
            ref["judges"][name] = {e: said and (v["delta"] >= measured[name] - 1e-12
                                                if name in measured else v["success"])
                                   for e, v in verdicts.items()}
    result["settings"]["margins"] = {**MARGINS, **measured}
    result["summary"] = summarize(result)
    return result


def add_judges(result: dict, judge_names: Sequence[str], progress=None) -> dict:
    """Judge an earlier result's replies (baseline, chance, every sample) with more judges,
    without generating again; then :func:`rejudge`. In place; returns the result."""
    from .. import models

    unknown = [j for j in judge_names if j not in JUDGES]
    if unknown:
        raise EdgeemoError(f"unknown judge {', '.join(unknown)}: choose from {', '.join(JUDGES)}")
    names = result["settings"]["emotions"]
    baseline = {b["scenario"]: b for b in result["baseline"]}
    reference = {c["scenario"]: c for c in result.get("chance", [])}
    for name in judge_names:
        model = models.resolve(result["settings"]["model"]) if name == "probe" else None
        for row in [*baseline.values(), *reference.values()]:
            row.pop(name, None)                     # read again, with the judge as it is now
        _judge(JUDGES[name](model, names), names, baseline, result["samples"], reference,
               progress)
        if name not in result["settings"]["judges"]:
            result["settings"]["judges"].append(name)
    return rejudge(result)


def _measured_margins(result: dict) -> dict[str, float]:
    """Margins of the judges that measure theirs (``chance_margin``): from the chance replies."""
    from .judges import chance_margin

    baseline = {b["scenario"]: b for b in result["baseline"]}
    out = {}
    for name in result["settings"]["judges"]:
        if not getattr(JUDGES[name], "chance_margin", False):
            continue
        deltas = [ref[name][e] - baseline[ref["scenario"]][name][e]
                  for ref in result.get("chance", [])
                  if ref.get(name) and baseline[ref["scenario"]].get(name)
                  for e in result["settings"]["emotions"]]
        out[name] = chance_margin(deltas)
    return out


def chat_summary(result: dict) -> dict:
    """What a chat user meets: per judge, success = moved beyond the judge's margin AND on task
    AND not collapsed (surgical); on-task rates steered and unsteered; identification = for each
    prompt and setting, is the target's own reply the one of the replies steered toward each
    emotion that scores highest for the target (top-1; chance 1 / number of emotions)."""
    samples = result["samples"]
    names = result["settings"]["emotions"]
    has_task = bool(samples) and all("on_task" in s for s in samples)
    refs = result.get("chance", [])
    out: dict = {
        "on_task": _rate([s["on_task"]["on_task"] for s in samples]) if has_task else None,
        "on_task_unsteered": _rate([r["on_task"]["on_task"] for r in refs if "on_task" in r])
        if has_task else None,
        "coherent": _rate([s["regime"] == "surgical" for s in samples]),
        "success": {}, "moved": {}, "identification": {}, "per_emotion": {}, "cells": {},
    }

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
        out["per_emotion"][judge] = {e: _rate([ok(s, judge) for s in samples if s["emotion"] == e])
                                     for e in names}
        if len(names) < 2 or not all(s["judges"][judge].get("scores") for s in samples):
            continue
        groups: dict[tuple, dict] = {}
        for s in samples:
            groups.setdefault((s["scenario"], _setting(s)), {})[s["emotion"]] = s
        hits = []
        for group in groups.values():
            for e, s in group.items():
                best = max(group.values(), key=lambda r: r["judges"][judge]["scores"][e])
                hits.append(best is s)
        out["identification"][judge] = {"top1": _rate(hits), "chance": round(1 / len(names), 4),
                                        "n": len(hits)}
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

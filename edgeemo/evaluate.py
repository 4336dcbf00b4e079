"""Steering evaluation: does a vector move the tone, does the text survive, does the language hold.

    from edgeemo.evaluate import evaluate
    from edgeemo.report import write_report
    result = evaluate(EmotionModel(), ["afraid", "happy"], [0.04, 0.08], stimuli.scenarios()[:6])
    write_report(result, "eval-report")       # result.json, report.md, regimes.png, success.png

For every scenario prompt the unsteered model answers once (the baseline), then the steered model
answers the same prompt with the same seed for each emotion × strength. Each steered reply is
compared with the baseline reply of its scenario by three independent checks:

  judges   did the emotion move? The lexicon judge and every judge's margin are in ``judges.py``;
           the probe judge needs the model, so it runs here (``_probe_judge``).
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

from . import emotions as emotions_mod
from .errors import EdgeemoError
from .judges import (EMPATH_MAP, LEXICON_MARGIN, PROBE_MARGIN, VALENCE_MARGIN, lexicon_judgement,
                     lexicon_scores)
from .regimes import (BLANK_EXPLOSIVE, DISTINCT2_REPETITIVE, NONWORD_EXPLOSIVE,
                      PPL_RATIO_EXPLOSIVE, REGIMES, REPEAT3_REPETITIVE, Scorer, language_drift,
                      regime, text_features)
from .report import strength_key, write_report

# write_report is imported for callers of the old single module (from edgeemo.evaluate import
# write_report); listing it here tells linters the import is meant.
__all__ = ["evaluate", "rejudge", "select_scenarios", "strength_key", "summarize", "write_report"]


# --- scenarios ------------------------------------------------------------------------------------

def select_scenarios(spec: int | str | Sequence[str] | None = None, *,
                     exclude: Sequence[str] = ()) -> list[dict]:
    """Scenarios by count or by id.

    ``None``: all of them. An int N (or "N"): N scenarios taken round-robin over the kinds in file
    order (4 -> one neutral, one opposite, one conversational, one story). A comma-separated string
    or list of ids: those, in the order given. Scenarios whose ids are in ``exclude`` are left out.
    """
    from . import stimuli

    every = [s for s in stimuli.scenarios() if s["id"] not in set(exclude)]
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
    from .steer import EmotionModel

    if isinstance(model, EmotionModel):
        return model
    return EmotionModel(model, seed=seed, threads=threads)


def evaluate(model, emotions: Sequence[str], strengths: Sequence[float],
             scenarios: Sequence[dict] | None = None, *, seed: int = 0, max_tokens: int = 60,
             temperature: float = 0.7, use_probe: bool = True, chance: bool = True,
             threads: int | None = None, baseline: Sequence[dict] | None = None,
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
    ``baseline``: the "baseline" rows of an earlier result for the same model, scenarios, seed
    and max_tokens, reused instead of answering the scenarios unsteered again.
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
    given = {b["scenario"]: b for b in baseline or []}
    if given and any(s["id"] not in given for s in scenarios):
        raise EdgeemoError("the baseline given to evaluate() lacks some of its scenarios")
    baseline: dict[str, dict] = {}
    generation_seconds, generated_tokens = 0.0, 0
    for i, scenario in enumerate(scenarios):
        if given:
            baseline[scenario["id"]] = {k: v for k, v in given[scenario["id"]].items()
                                        if k != "probe"}
            continue
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
    replies = len(samples) + (0 if given else len(baseline)) + len(reference)   # generated here
    result["timing"] = {
        "total_seconds": round(elapsed, 1), "generation_seconds": round(generation_seconds, 1),
        "probe_seconds": round(judge_seconds, 1),
        "replies": replies,
        "generated_tokens": generated_tokens,
        "tokens_per_second": round(generated_tokens / generation_seconds, 1)
        if generation_seconds else None,
        "seconds_per_reply": round(elapsed / replies, 3) if replies else None,
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
    """Apply the current margins (judges.py) and regime thresholds (regimes.py) to a result's
    stored scores and features.

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

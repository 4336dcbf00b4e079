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
from collections.abc import Callable, Sequence

from .. import emotions as emotions_mod
from .. import models
from ..errors import EdgeemoError
from ..steer import EmotionModel
from ..vectors import check_strength, recommended_strength
from .judges import EMPATH_MAP, JUDGES, MARGINS, chance_margin
from .ontask import ON_TASK_THRESHOLD, on_task_scores
from .prompts import select_scenarios
from .regimes import (BLANK_EXPLOSIVE, DISTINCT2_REPETITIVE, NONWORD_EXPLOSIVE,
                      PPL_RATIO_EXPLOSIVE, REPEAT3_REPETITIVE, Scorer, language_drift,
                      regime, text_features)
from .report import strength_key, write_report
from .summary import chat_summary, row_key, summarize

# write_report is here too so that one import gives the whole evaluation; listing it tells
# linters the import is meant.
__all__ = ["add_judges", "chat_summary", "evaluate", "rejudge",
           "strength_key", "summarize", "write_report"]


# --- the evaluation -------------------------------------------------------------------------------

def _load_runtime(model, seed: int, threads: int | None = None):
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
        reply = self.runtime.complete_ids(self.prompts[scenario["id"]],
                                          seed=self.seed if seed is None else seed,
                                          **self.options)
        self.seconds, self.tokens, self.count = self.seconds + reply.seconds, \
            self.tokens + reply.tokens, self.count + 1
        return {"text": reply.text, "tokens": reply.tokens, "seconds": round(reply.seconds, 3)}


def evaluate(model, emotions: Sequence[str], strengths: Sequence[float],
             scenarios: Sequence[dict] | None = None, *, seed: int = 0,
             seeds: Sequence[int] | None = None, margin_scenarios: Sequence[dict] | None = None,
             max_tokens: int = 60,
             temperature: float = 0.7, use_probe: bool = True, chance: bool = True,
             threads: int | None = None, baseline: Sequence[dict] | None = None,
             judges: Sequence[str] | None = None, on_task: bool = False,
             steer_prompt: bool = False, judge_options: dict[str, dict] | None = None,
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
    ``steer_prompt``: steer the prompt's tokens too, not only the reply's. ``judge_options``:
    keyword arguments for a judge by name (``{"llm": {"judge_model": ...}}``; None values are
    left out).
    ``seeds``: several runs, one per seed (each with its own baseline and chance replies; a
    reply is always compared with the baseline of its own run); ``seed`` alone is one run.
    ``margin_scenarios``: prompts (never the judged ones) answered twice unsteered per run
    (seeds s and s + 1); the measured margins of the judges that measure theirs come from these
    pairs instead of the judged prompts' chance replies, so no margin is fixed on the replies it
    judges. Returns one JSON-ready dict: settings, the baseline replies, the chance
    replies, the margin pairs, every sample, and a ``summary`` of the aggregates.
    """
    started = time.perf_counter()
    names = [emotions_mod.canonical(e) for e in emotions]
    strengths = [None if s is None else check_strength(s) for s in strengths]
    if not names or not strengths:
        raise EdgeemoError("give at least one emotion and one strength to evaluate")
    scenarios = list(scenarios) if scenarios is not None else select_scenarios()
    if not scenarios:
        raise EdgeemoError("give at least one scenario to evaluate on")
    runs = [seed] if seeds is None else list(dict.fromkeys(seeds))
    if not runs:
        raise EdgeemoError("give at least one seed")
    margin_scenarios = list(margin_scenarios or [])
    overlap = {s["id"] for s in margin_scenarios} & {s["id"] for s in scenarios}
    if overlap:
        raise EdgeemoError(f"the margin prompts must not be judged: {', '.join(sorted(overlap))} "
                           f"are in both")
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
    scorer = Scorer(runtime.model.path, threads=runtime.threads)   # same as the runtime's
    reply = _Replies(runtime, [*scenarios, *margin_scenarios], seed=seed, max_tokens=max_tokens,
                     temperature=temperature, steer_prompt=steer_prompt)

    runtime.clear()
    base = _baseline(reply, scenarios, runs, scorer, baseline, progress)
    reference = _chance(reply, scenarios, runs, progress) if chance else {}
    pairs = _margin_pairs(reply, margin_scenarios, runs, progress)
    samples, recommended = _steered(reply, names, strengths, scenarios, runs, base, scorer,
                                    progress)

    t0 = time.perf_counter()
    judge_notes = {}
    for judge_name in judge_names:
        options = {k: v for k, v in (judge_options or {}).get(judge_name, {}).items()
                   if v is not None}
        judge = JUDGES[judge_name](runtime.model, names, **options)
        if getattr(judge, "description", None):
            judge_notes[judge_name] = judge.description
        _judge(judge, names, base, samples, reference, progress)
        _judge_pairs(judge, pairs)
        if on_task and getattr(judge, "ask_on_task", False):
            _judge_on_task(judge, scenarios, samples, reference, progress)
        if getattr(judge, "ask_preferred", False):
            _judge_preferred(judge, scenarios, samples, base, progress)
    if on_task:
        _on_task(scenarios, base, samples, reference, progress)
    judge_seconds = time.perf_counter() - t0

    settings = {
        "model": runtime.model.name, "emotions": names,
        "strengths": strengths, "recommended_strengths": recommended,
        "scenarios": [s["id"] for s in scenarios], "seed": runs[0], "seeds": runs,
        "margin_scenarios": [s["id"] for s in margin_scenarios],
        "max_tokens": max_tokens, "temperature": temperature, "judges": judge_names,
        "threads": runtime.threads, "on_task": on_task, "steer_prompt": steer_prompt,
        "on_task_threshold": ON_TASK_THRESHOLD,
        "judges_sharing_data": shared, "judge_models": judge_notes,
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
              "chance": list(reference.values()), "margin_pairs": pairs, "samples": samples}
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


def _baseline(reply: _Replies, scenarios, runs, scorer, given, progress) -> dict[tuple, dict]:
    """Each scenario answered once per run, unsteered, with the run's seed (or an earlier
    result's baseline rows)."""
    given = {row_key(b): b for b in given or []}
    wanted = [(s, run) for run in runs for s in scenarios]
    if given and any((s["id"], run) not in given for s, run in wanted):
        raise EdgeemoError("the baseline given to evaluate() lacks some of its scenarios")
    out: dict[tuple, dict] = {}
    for i, (scenario, run) in enumerate(wanted):
        key = (scenario["id"], run)
        if given:        # judge scores other than the model-free lexicon are read again
            out[key] = {k: v for k, v in given[key].items() if k not in JUDGES or k == "lexicon"}
            continue
        r = reply(scenario, run)
        features = text_features(r["text"], r["text"], reply.prompts[scenario["id"]], scorer)
        out[key] = {
            "scenario": scenario["id"], "run": run, "kind": scenario["kind"],
            "prompt": scenario["prompt"], **r, "features": features, "regime": regime(features),
            "drift": language_drift(scenario["prompt"], r["text"]),
        }
        if progress:
            progress("baseline", i + 1, len(wanted))
    return out


def _chance(reply: _Replies, scenarios, runs, progress) -> dict[tuple, dict]:
    """A second unsteered reply (seed + 1) per scenario and run, judged later as if it had been
    steered: how often the judges "succeed" with no steering at all."""
    out = {}
    wanted = [(s, run) for run in runs for s in scenarios]
    for i, (scenario, run) in enumerate(wanted):
        r = reply(scenario, run + 1)
        out[scenario["id"], run] = {"scenario": scenario["id"], "run": run, "seed": run + 1,
                                    "text": r["text"], "tokens": r["tokens"]}
        if progress:
            progress("chance", i + 1, len(wanted))
    return out


def _margin_pairs(reply: _Replies, scenarios, runs, progress) -> list[dict]:
    """Two unsteered replies (seeds s and s + 1) to each margin prompt, per run."""
    out = []
    wanted = [(s, run) for run in runs for s in scenarios]
    for i, (scenario, run) in enumerate(wanted):
        a, b = reply(scenario, run), reply(scenario, run + 1)
        out.append({"scenario": scenario["id"], "run": run, "texts": [a["text"], b["text"]]})
        if progress:
            progress("margin pairs", i + 1, len(wanted))
    return out


def _judge_pairs(judge, pairs: list[dict]) -> None:
    """A judge's scores of both replies of each margin pair (judges that measure a margin)."""
    if not pairs or not getattr(judge, "chance_margin", False):
        return
    scores = judge.read([t for p in pairs for t in p["texts"]])
    for i, p in enumerate(pairs):
        p.setdefault("scores", {})[judge.name] = [judge.stored(scores[2 * i]),
                                                  judge.stored(scores[2 * i + 1])]


def _steered(reply: _Replies, names, strengths, scenarios, runs, base, scorer, progress):
    """Every emotion × strength × run × scenario reply, with its regime and drift (judged
    later)."""
    runtime, steer_prompt = reply.runtime, reply.options["steer_prompt"]
    samples: list[dict] = []
    recommended: dict[str, float | None] = {}
    try:
        for name in names:
            for strength in strengths:
                applied = runtime.steer({name: strength}, steer_prompt=steer_prompt)[name]
                recommended[name] = recommended_strength(runtime.vector(name),
                                                         whole_sequence=steer_prompt)
                label = f"{name} {strength_key(applied)}"
                wanted = [(s, run) for run in runs for s in scenarios]
                for i, (scenario, run) in enumerate(wanted):
                    r = reply(scenario, run)
                    features = text_features(r["text"], base[scenario["id"], run]["text"],
                                             reply.prompts[scenario["id"]], scorer)
                    samples.append({
                        "emotion": name, "strength": applied,
                        "setting": strength_key(strength), "scenario": scenario["id"],
                        "run": run, "kind": scenario["kind"], **r, "features": features,
                        "regime": regime(features),
                        "drift": language_drift(scenario["prompt"], r["text"]), "judges": {},
                    })
                    if progress:
                        progress(label, i + 1, len(wanted))
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
            sample["emotion"], scores, baseline[row_key(sample)][judge.name])
        if progress and judge.name != "lexicon":
            progress(judge.name, n + 1, len(samples))
    refs = list(reference)
    for sid, scores in zip(refs, judge.read([reference[sid]["text"] for sid in refs])):
        reference[sid][judge.name] = judge.stored(scores)


def _on_task(scenarios, baseline: dict, samples: list[dict], reference: dict, progress) -> None:
    """Does each reply still answer its prompt? (the unsteered reply is the reference)"""
    prompts = {s["id"]: s["prompt"] for s in scenarios}
    rows = [*samples, *reference.values()]
    if progress:
        progress("on-task", 0, len(rows))
    checked = on_task_scores([prompts[r["scenario"]] for r in rows], [r["text"] for r in rows],
                             [baseline[row_key(r)]["text"] for r in rows])
    for row, verdict in zip(rows, checked):
        row["on_task"] = {**row.get("on_task", {}), **verdict}
    if progress:
        progress("on-task", len(rows), len(rows))


def _judge_on_task(judge, scenarios, samples: list[dict], reference: dict, progress) -> None:
    """A judge that can say whether a reply answers its request (the LLM judge): its P(yes),
    kept beside the embedding check as ``on_task[<judge>]``."""
    prompts = {s["id"]: s["prompt"] for s in scenarios}
    rows = [*samples, *reference.values()]
    if progress:
        progress(f"on-task ({judge.name})", 0, len(rows))
    yes = judge.on_task([prompts[r["scenario"]] for r in rows], [r["text"] for r in rows])
    for row, p in zip(rows, yes):
        row.setdefault("on_task", {})[judge.name] = round(p, 4)
    if progress:
        progress(f"on-task ({judge.name})", len(rows), len(rows))


def _judge_preferred(judge, scenarios, samples: list[dict], baseline: dict, progress) -> None:
    """A judge that compares two replies (the LLM judge): ``P(steered)`` that the steered reply
    sounds more like its emotion than the unsteered reply to the same request, kept as
    ``preferred[<judge>]``."""
    prompts = {s["id"]: s["prompt"] for s in scenarios}
    if progress:
        progress(f"preferred ({judge.name})", 0, len(samples))
    p = judge.preferred([prompts[r["scenario"]] for r in samples], [r["text"] for r in samples],
                        [baseline[row_key(r)]["text"] for r in samples],
                        [r["emotion"] for r in samples])
    for row, value in zip(samples, p):
        row.setdefault("preferred", {})[judge.name] = round(value, 4)
    if progress:
        progress(f"preferred ({judge.name})", len(samples), len(samples))


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
    baseline = {row_key(b): b for b in result["baseline"]}
    for ref in result.get("chance", []):
        base = baseline[row_key(ref)]
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
    unknown = [j for j in judge_names if j not in JUDGES]
    if unknown:
        raise EdgeemoError(f"unknown judge {', '.join(unknown)}: choose from {', '.join(JUDGES)}")
    names = result["settings"]["emotions"]
    baseline = {row_key(b): b for b in result["baseline"]}
    reference = {row_key(c): c for c in result.get("chance", [])}
    for name in judge_names:
        model = models.resolve(result["settings"]["model"]) if name == "probe" else None
        for row in [*baseline.values(), *reference.values()]:
            row.pop(name, None)                     # read again, with the judge as it is now
        judge = JUDGES[name](model, names)
        _judge(judge, names, baseline, result["samples"], reference, progress)
        _judge_pairs(judge, result.get("margin_pairs", []))
        if name not in result["settings"]["judges"]:
            result["settings"]["judges"].append(name)
    return rejudge(result)


def _measured_margins(result: dict) -> dict[str, float]:
    """Margins of the judges that measure theirs (``chance_margin``): from the margin pairs when
    the result has them (prompts that are not judged), else from the judged prompts' chance
    replies."""
    baseline = {row_key(b): b for b in result["baseline"]}
    emotions = result["settings"]["emotions"]
    pairs = result.get("margin_pairs") or []
    out = {}
    for name in result["settings"]["judges"]:
        if not getattr(JUDGES[name], "chance_margin", False):
            continue
        if pairs:
            deltas = [b[e] - a[e] for p in pairs
                      for a, b in [p.get("scores", {}).get(name) or (None, None)]
                      if a and b for e in emotions]
        else:
            deltas = [ref[name][e] - baseline[row_key(ref)][name][e]
                      for ref in result.get("chance", [])
                      if ref.get(name) and baseline[row_key(ref)].get(name) for e in emotions]
        out[name] = chance_margin(deltas)
    return out

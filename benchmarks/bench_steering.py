"""Steering overhead: llama.cpp generation speed with a control vector, a mix of three, and none.

    python benchmarks/bench_steering.py                 # 128 tokens, 9 interleaved repetitions
    python benchmarks/bench_steering.py --quick         # 8 tokens, 2 repetitions
    python benchmarks/bench_steering.py --set tokens=64 --set reps=5

One EmotionModel (the default model) generates greedily from the same prompt with the same seed
under each condition in turn (none, one vector, a mix of three; the order rotates every round)
after an untimed warm-up round. Only generation is timed (the steer/clear call and the reset before it are not). Tokens are counted from
``stream_ids``. We report median tokens/s over the whole reply (prompt included) and over decoding
only (after the first token), and the slowdown of each steered condition against none: the ratio
of the medians, and in the note the median of the per-repetition ratios (each steered reply against
the unsteered one of the same round). A 2 % effect needs an idle machine: with another busy process
on a 2-core machine, llama.cpp's threads wait for each other and run-to-run spread reaches ±30 %.
"""

from __future__ import annotations

import time

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "tokens": 128, "reps": 9, "warmup": 1,
        "prompt": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "single": {"afraid": 0.08},
        "mix": {"afraid": 0.05, "calm": 0.03, "happy": 0.02}}
QUICK = {"tokens": 8, "reps": 2}


def generate_once(runtime, prompt_ids: list[int], mix: dict | None, tokens: int) -> dict:
    """Apply ``mix`` (None: unsteered), then time one greedy reply of up to ``tokens`` tokens."""
    if mix:
        runtime.steer(mix)
    else:
        runtime.clear()
    runtime.reset()                       # same cold start for every condition
    ids, stamps = [], []
    started = time.perf_counter()
    for token in runtime.stream_ids(prompt_ids, max_tokens=tokens, temperature=0.0, seed=0):
        stamps.append(time.perf_counter())
        ids.append(token)
    n = len(ids)
    total = (stamps[-1] - started) if stamps else None
    decode = (stamps[-1] - stamps[0]) if n > 1 else None
    return {"tokens": n, "ids": ids,
            "first_token_s": stamps[0] - started if stamps else None,
            "tok_s": n / total if total else None,
            "decode_tok_s": (n - 1) / decode if decode else None}


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("steering", "Steering overhead (llama.cpp, control vectors)",
                             quick=quick, settings={**settings, "threads": threads})
    runtime = None
    with report.part("load the model"):
        from edgeemo.steer import EmotionModel

        runtime = EmotionModel(settings["model"], seed=0, threads=threads)   # pulls if missing
    if runtime is None:
        return report.to_dict()

    conditions = {"none": None, "one vector": settings["single"], "mix of three": settings["mix"]}
    with report.part("interleaved generation"):
        prompt_ids = runtime.prompt_ids([{"role": "user", "content": settings["prompt"]}])
        for _ in range(settings["warmup"]):
            for mix in conditions.values():
                generate_once(runtime, prompt_ids, mix, settings["tokens"])
        runs = {name: (lambda mix=mix: generate_once(runtime, prompt_ids, mix, settings["tokens"]))
                for name, mix in conditions.items()}
        results = benchlib.interleaved(runs, settings["reps"])
        summarise(report, results, conditions, len(prompt_ids))
    runtime.clear()
    return report.to_dict()


def summarise(report: benchlib.Report, results: dict, conditions: dict, prompt_tokens: int) -> None:
    med = {name: {key: benchlib.median(r[key] for r in runs)
                  for key in ("tok_s", "decode_tok_s", "first_token_s", "tokens")}
           for name, runs in results.items()}
    base = med["none"]
    reference_ids = results["none"][0]["ids"]
    for name, m in med.items():
        report.row(f"{name}: tokens/s (whole reply)", m["tok_s"], "tok/s")
        report.row(f"{name}: tokens/s (decoding)", m["decode_tok_s"], "tok/s",
                   note=f"median of {len(results[name])}; {m['tokens']:.0f} tokens")
    for name in conditions:
        if name == "none":
            continue
        for key, label in (("tok_s", "whole reply"), ("decode_tok_s", "decoding")):
            ratio = benchlib.ratio(med[name][key], base[key])
            slowdown = None if ratio is None else (1 - ratio) * 100
            paired = benchlib.median(
                (1 - s[key] / n[key]) * 100 for s, n in zip(results[name], results["none"])
                if s[key] and n[key])
            note = "" if paired is None else f"median of per-repetition ratios: {paired:+.1f} %"
            report.row(f"{name}: slowdown ({label})", slowdown, "%", aim="≤ 2", note=note)
        changed = results[name][0]["ids"] != reference_ids
        report.row(f"{name}: reply differs from unsteered", "yes" if changed else "no",
                   note="checks that the vector was active")
    report.data = {"prompt_tokens": prompt_tokens,
                   "conditions": {k: v for k, v in conditions.items()},
                   "medians": benchlib.rounded(med),
                   "runs": {name: [benchlib.rounded({k: v for k, v in r.items() if k != "ids"})
                                   for r in runs] for name, runs in results.items()}}


if __name__ == "__main__":
    benchlib.main(run, __doc__)

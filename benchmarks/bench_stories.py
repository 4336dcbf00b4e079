"""Writing stories (the generation method): one at a time against several at once.

    python benchmarks/bench_stories.py                  # 16 stories of 160 tokens, 3 rounds
    python benchmarks/bench_stories.py --quick          # 4 stories of 24 tokens, 1 round
    python benchmarks/bench_stories.py --set model=qwen2.5-coder-0.5b-instruct

The same prompts (the generation method's own, the first emotions' first templates), the same
token budget, temperature 0.8, unsteered, on one EmotionModel:

* one at a time: ``EmotionModel.stream_ids`` per story, llama.cpp's own sampler (how stories were
  written before ``batched.write_many``);
* batched: ``batched.write_many`` with ``n_seq`` sequences decoded together (each in ``seqs``;
  ``--set seqs=8`` or ``--set seqs=4,8``).

The ways alternate within each round (one at a time, then each ``n_seq``; the next round in the
reverse order), so a busy machine slows them alike; tokens/s is the tokens written over the
median time of a round, and the ratio is taken between medians of the same run. Also reported:
the mean log-probability per token of each way's stories under the model itself (read once, in
one pass each), as a check that the batched sampler draws from the same distribution.
"""

from __future__ import annotations

import time

import numpy as np

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "stories": 16, "tokens": 160, "rounds": 3,
        "seqs": [4, 8, 16]}
QUICK = {"stories": 4, "tokens": 24, "rounds": 1, "seqs": [4]}


def prompts_for(runtime, n: int) -> list[list[int]]:
    from edgeemo import emotions, extract

    texts = []
    for i in range(n):
        label = emotions.EMOTIONS[i % len(emotions.EMOTIONS)]
        texts.append(extract.generation_prompts(label, i // len(emotions.EMOTIONS) + 1)[-1])
    return [runtime.prompt_ids([{"role": "user", "content": t}]) for t in texts]


def one_at_a_time(runtime, prompts, tokens: int) -> list[list[int]]:
    from edgeemo import extract

    return [list(runtime.stream_ids(p, max_tokens=tokens, seed=i,
                                    temperature=extract.STORY_TEMPERATURE))
            for i, p in enumerate(prompts)]


def batched_way(runtime, prompts, tokens: int, n_seq: int) -> list[list[int]]:
    from edgeemo import batched, extract

    return batched.write_many(runtime, prompts, seeds=list(range(len(prompts))),
                              max_tokens=tokens, temperature=extract.STORY_TEMPERATURE,
                              n_seq=n_seq)


def mean_logprob(scorer, prompts, stories, runtime) -> float:
    """Mean log-probability per token of the stories after their prompts, under the model."""
    values = []
    for prompt, ids in zip(prompts, stories):
        if ids:
            values.extend(scorer.logprobs(prompt, runtime.detokenize(ids, errors="replace")))
    return float(np.mean(values))


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("stories", "Writing stories: one at a time and batched", quick=quick,
                             settings={**settings, "threads": threads})
    from edgeemo.evaluation.regimes import Scorer
    from edgeemo.steer import EmotionModel

    runtime = EmotionModel(settings["model"], seed=0, threads=threads)
    prompts = prompts_for(runtime, settings["stories"])
    ways = ["one at a time"] + [f"batched, {n} sequences"
                                for n in benchlib.numbers(settings["seqs"])]
    times: dict[str, list[float]] = {w: [] for w in ways}
    written: dict[str, list[list[int]]] = {}
    report.note(f"load average at start: {benchlib.load_average()}")
    with report.part("write the stories"):
        for r in range(settings["rounds"]):
            for way in (ways if r % 2 == 0 else ways[::-1]):
                started = time.perf_counter()
                if way == "one at a time":
                    out = one_at_a_time(runtime, prompts, settings["tokens"])
                else:
                    out = batched_way(runtime, prompts, settings["tokens"],
                                      int(way.split(", ")[1].split()[0]))
                times[way].append(time.perf_counter() - started)
                written[way] = out
                benchlib.say(f"[stories] round {r + 1}, {way}: {times[way][-1]:.1f} s")
        base = benchlib.median(times["one at a time"])
        for way in ways:
            tokens = sum(map(len, written[way]))
            median = benchlib.median(times[way])
            ratio = base / median
            report.row(f"{way}: tokens/s", tokens / median, "tok/s", headline=way != ways[0],
                       note=f"{len(prompts)} stories, {tokens} tokens, median of "
                            f"{len(times[way])} rounds {median:.1f} s"
                            + ("" if way == ways[0] else f"; {ratio:.2f}x one at a time"))
            report.data[way] = {"seconds": benchlib.rounded(times[way], 3), "tokens": tokens,
                                "speedup": round(ratio, 3)}
    with report.part("the stories' likelihood under the model"):
        scorer = Scorer(runtime.model.path, threads=threads)
        for way in ways:
            lp = mean_logprob(scorer, prompts, written[way], runtime)
            report.row(f"{way}: mean log-probability per token", lp, "nats",
                       note="the same distribution drawn from gives about the same figure")
            report.data[way]["mean_logprob"] = round(lp, 4)
    report.note(f"load average at end: {benchlib.load_average()}")
    return report.to_dict()


if __name__ == "__main__":
    benchlib.main(run, __doc__)

"""Chat latency: time to first token, and the cost of switching emotion mid-conversation.

    python benchmarks/bench_latency.py                  # 9 repetitions of each
    python benchmarks/bench_latency.py --quick          # 2 repetitions

On the default model (llama.cpp through EmotionModel), with a short chat turn formatted by the
model's chat template:

* first token: from the messages to the first generated token (template, tokenization, prompt
  evaluation), with the prompt cache dropped before each repetition;
* switch: the ``steer`` call to another emotion (llama.cpp's control-vector buffer is rewritten
  and the cached prompt dropped; nothing is reloaded), then the first token of the same turn under
  the new emotion. The first use of each vector also reads its GGUF file; that cold switch is
  reported apart from the warm ones;
* the alternative to switching in place: loading the model again with another vector (as
  ``llama-cli --control-vector`` would), i.e. the model's load time.
"""

from __future__ import annotations

import gc
import time

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "reps": 9, "reload_reps": 3,
        "emotions": "afraid,happy,calm,sad,angry",
        "messages": [{"role": "system", "content": "You are a friendly assistant."},
                     {"role": "user", "content": "Hi! How was your day?"}]}
QUICK = {"reps": 2, "reload_reps": 1}


def first_token(runtime, messages: list[dict]) -> tuple[float, int]:
    """Seconds from the messages to the first token, and the prompt's length in tokens."""
    started = time.perf_counter()
    ids = runtime.prompt_ids(messages)
    stream = runtime.stream_ids(ids, max_tokens=1, temperature=0.0, seed=0)
    next(stream, None)
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed, len(ids)


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("latency", "Chat latency: first token and emotion switch",
                             quick=quick, settings={**settings, "threads": threads})
    from edgeemo.steer import EmotionModel

    runtime = None
    with report.part("load the model"):
        started = time.perf_counter()
        runtime = EmotionModel(settings["model"], seed=0, threads=threads)
        report.data["first_load_s"] = time.perf_counter() - started
    if runtime is None:
        return report.to_dict()
    messages = settings["messages"]
    names = settings["emotions"].split(",")

    with report.part("time to first token"):
        runtime.clear()
        first_token(runtime, messages)                              # warm-up
        times = []
        for _ in range(settings["reps"]):
            runtime.reset()
            elapsed, n_prompt = first_token(runtime, messages)
            times.append(elapsed)
        report.row("time to first token (chat turn)", 1000 * benchlib.median(times), "ms",
                   headline=True,
                   note=f"{n_prompt}-token prompt, median of {len(times)}")
        report.data["first_token_s"] = benchlib.rounded(times, 4)

    with report.part("emotion switch"):
        cold, warm = [], []
        for i in range(len(names) + settings["reps"]):
            name = names[i % len(names)]
            started = time.perf_counter()
            runtime.steer({name: None})                             # the vector's own strength
            switched = time.perf_counter()
            after, _ = first_token(runtime, messages)
            (cold if i < len(names) else warm).append((switched - started, after))
        for label, runs in (("cold (first use, reads the file)", cold), ("warm", warm)):
            steer_ms = 1000 * benchlib.median(r[0] for r in runs)
            after_ms = 1000 * benchlib.median(r[1] for r in runs)
            report.row(f"switch emotion, {label}: steer call", steer_ms, "ms",
                       headline=label == "warm")
            report.row(f"switch emotion, {label}: first token after", after_ms, "ms",
                       headline=label == "warm",
                       note=f"total {steer_ms + after_ms:.0f} ms; median of {len(runs)}")
        started = time.perf_counter()
        runtime.clear()
        report.row("clear steering: call", 1000 * (time.perf_counter() - started), "ms")
        report.data["switch_s"] = benchlib.rounded({"cold": cold, "warm": warm}, 5)

    with report.part("reload instead of switching"):
        runtime = None
        gc.collect()
        loads = []
        for _ in range(settings["reload_reps"]):
            started = time.perf_counter()
            other = EmotionModel(settings["model"], seed=0, threads=threads)
            loads.append(time.perf_counter() - started)
            del other
            gc.collect()
        report.row("reload the model (the alternative to switching)",
                   1000 * benchlib.median(loads), "ms", headline=True,
                   note=f"median of {len(loads)}, warm disk cache")
        report.data["reload_s"] = benchlib.rounded(loads, 4)
    return report.to_dict()


if __name__ == "__main__":
    benchlib.main(run, __doc__)

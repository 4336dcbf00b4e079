"""Dialogue vectors judged by tone readers that share no text with them (a cross-fit).

    python scripts/dialogue_crossfit.py --strengths 0.08 --threads 1
    python scripts/dialogue_crossfit.py --calibrate 0.03,0.045,0.06,0.08 --threads 2

The tone readers (``tone-smollm2``, ``tone-gemma3``) are made from ``dialogue.jsonl``, the data the
``--method dialogue`` vectors are made from, so on those vectors they are not independent. Here the
30 requests are split in two: the vectors are made from the replies to one half (A, even lines)
and the tone readers from the replies to the other half (B). Then the vectors are evaluated as
``edgeemo evaluate`` does, on the held-out everyday requests of ``requests.jsonl``, and judged by
the vignette readers and by the half-B tone readers.

With ``--calibrate``, each emotion's strength is first chosen as ``edgeemo calibrate --judge
tone`` does (on the 8 calibration requests, which the evaluation does not use; on task ≥ 90%,
coherent ≥ 95%, best tone-reader success), judged by the half-B tone readers; the choice goes to
``records/calibration-dialogue.json`` (``scripts/build_vectors.py --calibration`` applies it
to the prebuilt files) and the evaluation runs at those strengths. The record goes to ``--out``
(``settings.crossfit`` says which requests made what).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeemo import make, models, stimuli
    from edgeemo.cli_evaluate import use_vectors
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation import calibration
    from edgeemo.evaluation import evaluate as ev
    from edgeemo.evaluation import prompts
    from edgeemo.evaluation import judges
    from edgeemo.steer import EmotionModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--strengths", default="0.08")
    parser.add_argument("--calibrate", metavar="STRENGTHS",
                        help="choose each emotion's strength among these first")
    parser.add_argument("--scenarios", default="12")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or ROOT / "records" / ("chat-dialogue-crossfit-calibrated" if args.calibrate
                                             else "chat-dialogue-crossfit")

    rows = stimuli.dialogue()
    requests = list(dict.fromkeys(r["request"] for r in rows))
    half_a, half_b = requests[0::2], requests[1::2]
    model = models.ensure(args.model)
    progress = lambda label, done, total: print(label, done, total, flush=True) \
        if done == total else None                                            # noqa: E731
    with tempfile.TemporaryDirectory() as tmp, judges.tone_readers_from(half_b):
        data, vectors = Path(tmp) / "dialogue-a.jsonl", Path(tmp) / "vectors"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["request"] in half_a))
        make.make_vectors(model, None, method="dialogue", baseline="grand", stimuli_file=data,
                          output=vectors, say=print)
        runtime = EmotionModel(model, seed=0, threads=args.threads)
        use_vectors(runtime, list(EMOTIONS), vectors)
        strengths = [float(s) for s in args.strengths.split(",")]
        if args.calibrate:
            t0 = time.perf_counter()
            chosen = calibration.calibrate(
                runtime, list(EMOTIONS), [float(s) for s in args.calibrate.split(",")],
                prompts.calibration_prompts(), seed=0,
                readers=judges.TONE_READERS, progress=progress)
            seconds = round(time.perf_counter() - t0)
            for name, info in chosen.items():
                if info["strength"] is None:       # nothing keeps 90% on task: the gentlest tried
                    info["strength"] = min(info["per_strength"].values(),
                                           key=lambda r: (-r["on_task_share"], r["strength"])
                                           )["strength"]
                    info["fallback"] = "no strength in the window: the most on-task one"
                calibration.apply_calibration(vectors / f"{name}.gguf", info["strength"], info)
            record = {"vectors": "dialogue − grand mean, from half A of dialogue.jsonl",
                      "tone_readers_from": half_b, "seconds": seconds, "chosen": chosen}
            (ROOT / "records" / "calibration-dialogue.json").write_text(
                json.dumps(record, indent=1) + "\n")
            runtime.vectors.clear()
            use_vectors(runtime, list(EMOTIONS), vectors)
            strengths = [None]                      # each vector's calibrated strength
            print({n: i["strength"] for n, i in chosen.items()}, flush=True)
        t0 = time.perf_counter()
        result = ev.evaluate(runtime, list(EMOTIONS), strengths,
                             prompts.select_scenarios(args.scenarios, pool="requests"), seed=0,
                             max_tokens=60, judges=list(judges.READERS + judges.TONE_READERS),
                             on_task=True, progress=progress)
        result["settings"]["seconds"] = round(time.perf_counter() - t0)
    result["settings"]["crossfit"] = {"vectors_from": half_a, "tone_readers_from": half_b}
    ev.write_report(result, out)
    chat = ev.chat_summary(result)
    print(json.dumps({"on_task": chat["on_task"], "coherent": chat["coherent"],
                      "success": chat["success"],
                      "identification": {j: v["top1"] for j, v in
                                         chat["identification"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

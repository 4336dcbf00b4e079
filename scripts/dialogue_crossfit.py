"""Dialogue vectors judged by tone readers that share no text with them (a cross-fit).

    python scripts/dialogue_crossfit.py --strengths 0.08 --threads 1

The tone readers (``tone-smollm2``, ``tone-gemma3``) are made from ``dialogue.jsonl``, the data the
``--method dialogue`` vectors are made from, so on those vectors they are not independent. Here the
30 requests are split in two: the vectors are made from the replies to one half (A, even lines)
and the tone readers from the replies to the other half (B). Then the vectors are evaluated as
``edgeemo evaluate`` does, on the held-out everyday requests of ``requests.jsonl``, and judged by
the vignette readers and by the half-B tone readers. The record goes to
``evaluation/chat-dialogue-crossfit/`` (``settings.crossfit`` says which requests made what).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeemo import make, models, stimuli
    from edgeemo.cli_evaluate import use_vectors
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation import evaluate as ev
    from edgeemo.evaluation import judges
    from edgeemo.steer import EmotionModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--strengths", default="0.08")
    parser.add_argument("--scenarios", default="12")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "chat-dialogue-crossfit")
    args = parser.parse_args()

    rows = stimuli.dialogue()
    requests = list(dict.fromkeys(r["request"] for r in rows))
    half_a, half_b = requests[0::2], requests[1::2]
    model = models.ensure(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogue-a.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["request"] in half_a))
        make.make_vectors(model, None, method="dialogue", baseline="grand", stimuli_file=data,
                          output=Path(tmp) / "vectors", say=print)
        runtime = EmotionModel(model, seed=0, threads=args.threads)
        use_vectors(runtime, list(EMOTIONS), Path(tmp) / "vectors")
        result = ev.evaluate(runtime, list(EMOTIONS),
                             [float(s) for s in args.strengths.split(",")],
                             ev.select_scenarios(args.scenarios, pool="requests"), seed=0,
                             max_tokens=60, judges=list(judges.READERS), on_task=True,
                             progress=lambda label, done, total: print(label, done, total)
                             if done == total else None)

    def half_b_texts(cls):
        return {e: [r["text"] for r in rows if r["emotion"] == e and r["request"] in half_b]
                for e in EMOTIONS}

    judges.ToneReader.texts = classmethod(half_b_texts)     # this run's tone readers: half B
    ev.add_judges(result, list(judges.TONE_READERS))
    result["settings"]["crossfit"] = {"vectors_from": half_a, "tone_readers_from": half_b}
    ev.write_report(result, args.out)
    chat = ev.chat_summary(result)
    print(json.dumps({"on_task": chat["on_task"], "coherent": chat["coherent"],
                      "success": chat["success"],
                      "identification": {j: v["top1"] for j, v in
                                         chat["identification"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well can the chat judges see an emotion at all? Their ceiling, on replies written for it.

    python scripts/judge_ceiling.py                      # writes records/judge-ceiling.json

``edgeemo/data/dialogue.jsonl`` holds, for 30 everyday requests, one neutral reply and one reply in
each of the 20 emotions, with the same content and only the tone changed. That is what perfect
steering would produce. This script grades those replies as ``edgeemo evaluate`` grades steered
ones (the neutral reply plays the unsteered one):

- *moved*: the reader's score for the target rises over the neutral reply's by more than the
  reader's chance margin, measured as ``evaluate`` measures it (the 90th percentile of the score
  difference between two unsteered model replies) on a recorded evaluation's replies;
- *on task*: the all-MiniLM-L6-v2 check against the request and the neutral reply;
- *identification*: among the 20 emotional replies to one request, the target's own reply is the
  one the reader scores highest for the target (chance 5%).

The vignette readers (``reader-*``) are made from ``heldout.jsonl`` and share nothing with these
replies. The tone readers (``tone-*``) are made from the dialogue replies themselves, so here they
are cross-validated: made from half of the requests, graded on the other half, both ways round.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeemo import stimuli, writes
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation import judges, ontask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins-from", type=Path,
                        default=ROOT / "records" / "chat-prebuilt" / "result.json",
                        help="an evaluate result.json whose unsteered replies give the margins")
    parser.add_argument("--judges", default=",".join(judges.READERS + judges.TONE_READERS))
    parser.add_argument("--out", type=Path, default=ROOT / "records" / "judge-ceiling.json")
    args = parser.parse_args()

    record = json.loads(args.margins_from.read_text())
    rows = stimuli.dialogue()
    requests = list(dict.fromkeys(r["request"] for r in rows))
    text = {(r["request"], r["emotion"]): r["text"] for r in rows}

    checks = ontask.on_task_scores(
        [q for q in requests for e in EMOTIONS],
        [text[q, e] for q in requests for e in EMOTIONS],
        [text[q, "neutral"] for q in requests for e in EMOTIONS])
    result = json.loads(args.out.read_text()) if args.out.exists() else {"judges": {}}
    result.update({"requests": len(requests), "emotions": len(EMOTIONS),
                   "margins_from": str(args.margins_from.relative_to(ROOT)),
                   "on_task": round(float(np.mean([c["on_task"] for c in checks])), 4)})

    for name in args.judges.split(","):
        base = judges.JUDGES[name]
        tone = name in judges.TONE_READERS
        folds = [requests[0::2], requests[1::2]] if tone else [requests]
        moved, hits, margins = {e: [] for e in EMOTIONS}, {e: [] for e in EMOTIONS}, []
        for k, graded in enumerate(folds):
            made_from = set(requests) - set(graded) if tone else None

            class Fold(base):
                @classmethod
                def texts(cls):
                    if made_from is None:
                        return base.texts()
                    return {e: [text[q, e] for q in requests if q in made_from] for e in EMOTIONS}

            judge = Fold(None, EMOTIONS)
            margin = measured_margin(judge, record)
            margins.append(margin)
            for q in graded:
                neutral, *emotional = judge.read([text[q, "neutral"]] + [text[q, e] for e in EMOTIONS])
                for e, scores in zip(EMOTIONS, emotional):
                    moved[e].append(scores[e] - neutral[e] >= margin)
                    best = max(range(len(EMOTIONS)), key=lambda i: emotional[i][e])
                    hits[e].append(EMOTIONS[best] == e)
        entry = {
            "made_from": "half of the dialogue requests, graded on the other half (2 folds)"
                         if tone else "heldout.jsonl vignettes",
            "margin": [round(m, 4) for m in margins],
            "moved": round(float(np.mean([m for e in EMOTIONS for m in moved[e]])), 4),
            "identification": round(float(np.mean([h for e in EMOTIONS for h in hits[e]])), 4),
            "per_emotion": {e: {"moved": round(float(np.mean(moved[e])), 3),
                                "identification": round(float(np.mean(hits[e])), 3)}
                            for e in EMOTIONS}}
        result["judges"][name] = entry
        print(f"{name}: moved {entry['moved']:.2f}, identification {entry['identification']:.2f} "
              f"(margin {entry['margin']})", flush=True)
    print(f"on task: {result['on_task']:.2f}")
    writes.write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def measured_margin(judge, record: dict) -> float:
    """The judge's chance margin on a recorded evaluation's two unsteered replies per request."""
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation.judges import chance_margin

    base = {b["scenario"]: b["text"] for b in record["baseline"]}
    pairs = [(base[c["scenario"]], c["text"]) for c in record["chance"]]
    first = judge.read([a for a, _ in pairs])
    second = judge.read([b for _, b in pairs])
    return chance_margin([s[e] - f[e] for f, s in zip(first, second) if f and s for e in EMOTIONS])


if __name__ == "__main__":
    sys.exit(main())

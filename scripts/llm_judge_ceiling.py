"""The LLM judge's own ceiling: how well it reads tone on text written to carry it.

    python scripts/llm_judge_ceiling.py                  # writes records/judge-ceiling-llm.json
    python scripts/llm_judge_ceiling.py --judge-model qwen2.5-coder-0.5b-instruct

``edgeemo/data/dialogue.jsonl`` answers 30 everyday requests neutrally and in each of the 20
emotions, with the same content: what perfect steering would write. The judge grades them as
``edgeemo evaluate`` grades steered replies (the neutral reply plays the unsteered one):

- *moved*: the target's log-probability rises over the neutral reply's by more than a margin
  (reported at several margins, and at the margin measured on a recorded evaluation's unsteered
  reply pairs, ``--margins-from``);
- *identification*: among the 20 emotional replies to one request, the target's own reply is
  the one the judge rates highest for the target (chance 5%);
- *top-1*: the target is the judge's first choice among the 20 emotions (chance 5%), on these
  replies and on the held-out vignettes (``heldout.jsonl``); the confusion matrix of the replies
  is drawn to ``--plot``; *top-1 less prior*: the same after subtracting the judge's mean
  log-probabilities over the neutral replies to the other requests (its leaning toward "calm");
- *on task*: the judge's yes/no on whether a reply answers a request, for 60 of these replies
  given with their own request and with another one (the threshold ``summary.LLM_ON_TASK``).

The judge shares nothing with these texts: they are neither its training data nor its prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARGINS = (0.5, 1.0, 1.5, 2.5)


def main() -> int:
    from edgeemo import stimuli, writes
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation.judgebase import chance_margin
    from edgeemo.evaluation.llmjudge import JUDGE_MODELS, LLMJudge
    from edgeemo.evaluation.summary import LLM_ON_TASK, first_choice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge-model", default=JUDGE_MODELS[0])
    parser.add_argument("--margins-from", type=Path, action="append", default=[],
                        help="an evaluate result.json with margin pairs or chance replies "
                             "(repeatable): the judge's margin for that steered model")
    parser.add_argument("--out", type=Path, default=ROOT / "records" / "judge-ceiling-llm.json")
    parser.add_argument("--plot", type=Path,
                        default=ROOT / "records" / "judge-ceiling-llm-confusion.png")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    judge = LLMJudge(None, EMOTIONS, judge_model=args.judge_model, threads=args.threads)
    rows = stimuli.dialogue()
    requests = list(dict.fromkeys(r["request"] for r in rows))
    text = {(r["request"], r["emotion"]): r["text"] for r in rows}

    t0 = time.perf_counter()
    scores = {}
    for i, q in enumerate(requests):
        read = judge.read([text[q, e] for e in ("neutral", *EMOTIONS)])
        scores.update({(q, e): s for e, s in zip(("neutral", *EMOTIONS), read)})
        print(f"\r{i + 1}/{len(requests)} requests", end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    print(file=sys.stderr)
    deltas = {e: [scores[q, e][e] - scores[q, "neutral"][e] for q in requests] for e in EMOTIONS}
    ident = {e: [max(EMOTIONS, key=lambda o: scores[q, o][e]) == e for q in requests]
             for e in EMOTIONS}
    first = {e: [first_choice(scores[q, e]) for q in requests] for e in EMOTIONS}
    top1 = {e: [f == e for f in first[e]] for e in EMOTIONS}
    # the judge's leaning, from the neutral replies to the other requests, subtracted first
    prior = {q: {e: float(np.mean([scores[o, "neutral"][e] for o in requests if o != q]))
                 for e in EMOTIONS} for q in requests}
    top1_prior = [first_choice(scores[q, e], prior[q]) == e for q in requests for e in EMOTIONS]
    neutral_first = [max(scores[q, "neutral"], key=scores[q, "neutral"].get) for q in requests]

    vignettes = stimuli.heldout(EMOTIONS)
    v_hits = {e: [first_choice(s) == e for s in judge.read(vignettes[e])] for e in EMOTIONS}

    # the on-task question: two emotional replies per request, to their own request and to the
    # request seven further on (off task)
    picks = [(q, EMOTIONS[(3 * i) % 20]) for i, q in enumerate(requests)] + \
            [(q, EMOTIONS[(3 * i + 11) % 20]) for i, q in enumerate(requests)]
    own = judge.on_task([q for q, _ in picks], [text[q, e] for q, e in picks])
    other = judge.on_task([requests[(requests.index(q) + 7) % len(requests)] for q, _ in picks],
                          [text[q, e] for q, e in picks])

    margins = {}
    for path in args.margins_from:
        record = json.loads(path.read_text())
        pairs = _pairs(record)
        read = judge.read([t for pair in pairs for t in pair])
        margins[str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)] = \
            chance_margin([b[e] - a[e] for a, b in zip(read[0::2], read[1::2]) if a and b
                           for e in EMOTIONS])

    def share(flags):
        return round(float(np.mean(flags)), 4)

    every = [d for e in EMOTIONS for d in deltas[e]]
    result = {
        "judge_model": judge.judge_model.name, "requests": len(requests),
        "emotions": len(EMOTIONS), "seconds_per_text": round(seconds / len(scores), 3),
        "raised_over_neutral": share([d > 0 for d in every]),
        "moved_at_margin": {f"{m:g}": share([d >= m for d in every]) for m in MARGINS},
        "measured_margins": margins,
        "moved_at_measured_margin": {k: share([d >= m for d in every]) for k, m in margins.items()},
        "identification": share([h for e in EMOTIONS for h in ident[e]]),
        "top1": share([h for e in EMOTIONS for h in top1[e]]),
        "top1_less_prior": share(top1_prior),
        "neutral_read_as": {k: neutral_first.count(k) for k in sorted(set(neutral_first))},
        "heldout_vignettes_top1": share([h for e in EMOTIONS for h in v_hits[e]]),
        "on_task": {"threshold": LLM_ON_TASK, "replies": len(picks),
                    "own_request_p_yes": [round(float(np.min(own)), 3),
                                          round(float(np.median(own)), 3)],
                    "own_request_on_task": share([p >= LLM_ON_TASK for p in own]),
                    "other_request_on_task": share([p >= LLM_ON_TASK for p in other])},
        "per_emotion": {e: {"median_delta": round(float(np.median(deltas[e])), 3),
                            "identification": share(ident[e]), "top1": share(top1[e]),
                            "vignettes_top1": share(v_hits[e])} for e in EMOTIONS},
        "confusion": {e: {o: first[e].count(o) for o in sorted(set(first[e]))} for e in EMOTIONS},
    }
    result["scores"] = {f"{q}\t{e}": s for (q, e), s in scores.items()}   # for re-analysis
    writes.write_text(args.out, json.dumps(result, indent=1) + "\n")
    _plot(first, args.plot, judge.judge_model.name)
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("per_emotion", "confusion", "scores")}, indent=1))
    print(f"wrote {args.out} and {args.plot}")
    return 0


def _pairs(record: dict) -> list[tuple[str, str]]:
    """Two unsteered replies to the same prompt: the margin pairs, else baseline and chance."""
    if record.get("margin_pairs"):
        return [tuple(p["texts"]) for p in record["margin_pairs"]]
    base = {(b["scenario"], b.get("run", 0)): b["text"] for b in record["baseline"]}
    return [(base[c["scenario"], c.get("run", 0)], c["text"]) for c in record["chance"]]


def _plot(first: dict[str, list[str]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeemo.emotions import EMOTIONS

    labels = [*EMOTIONS]
    m = np.array([[first[e].count(o) for o in labels] for e in labels], dtype=float)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("the judge's first choice")
    ax.set_ylabel("the tone the reply was written in")
    ax.set_title(f"{name} on the hand-written tone replies (30 per emotion)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    sys.exit(main())

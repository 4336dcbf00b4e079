"""Assemble one evaluation record from runs of `edgeemo evaluate` with the same settings.

    python scripts/assemble_record.py FIRST/result.json MORE/result.json [...] --out DIR

Each run is the same model, vectors, strengths, seeds, judges and decoding; the later ones judged
held-out requests the first did not. The record holds the held-out requests judged by any of
them. From the first run the samples, unsteered and chance replies
of the held-out requests are kept; its unsteered replies (seed s) and chance replies (seed s + 1)
to the calibration requests are exactly the margin pairs (two unsteered replies per request and
seed), so they become the record's ``margin_pairs``. The later runs add the other held-out
requests. The summary is then rebuilt (``evaluate.rejudge``) and the report written.

``records/chat-prebuilt-llm/`` was made this way: the first run had judged the calibration
requests by mistake, and its held-out part and its replies to the calibration requests were kept
rather than generated again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    from edgeemo.evaluation import evaluate as ev
    from edgeemo.evaluation import prompts
    from edgeemo.evaluation.report import write_report
    from edgeemo.evaluation.summary import row_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("more", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    a = json.loads(args.first.read_text())
    parts = [json.loads(p.read_text()) for p in args.more]
    same = ("model", "emotions", "strengths", "seeds", "judges", "max_tokens", "temperature",
            "steer_prompt", "on_task")
    for part in parts:
        for key in same:
            if a["settings"].get(key) != part["settings"].get(key):
                raise SystemExit(f"the runs differ in {key}: {a['settings'].get(key)} vs "
                                 f"{part['settings'].get(key)}")
    b = {k: [row for part in parts for row in part[k]] for k in ("baseline", "chance", "samples")}
    b["settings"] = {"scenarios": [q for part in parts for q in part["settings"]["scenarios"]]}
    b["timing"] = {"parts": [part["timing"] for part in parts]}
    held_out = [s["id"] for s in prompts.prompt_sets("held-out")[0]]
    calibration = set(prompts.CALIBRATION_REQUESTS)
    from_b = set(b["settings"]["scenarios"])
    from_a = [q for q in held_out if q not in from_b and q in a["settings"]["scenarios"]]
    if not from_b <= set(held_out):
        raise SystemExit(f"the later runs judged requests that are not held out: "
                         f"{sorted(from_b - set(held_out))}")
    judged = [q for q in held_out if q in from_b or q in from_a]

    def kept(rows, ids):
        return [r for r in rows if r["scenario"] in ids]

    chance_a = {row_key(c): c for c in a["chance"]}
    judges = a["settings"]["judges"]
    pairs = [{"scenario": base["scenario"], "run": base["run"],
              "texts": [base["text"], chance_a[row_key(base)]["text"]],
              "scores": {j: [base[j], chance_a[row_key(base)][j]] for j in judges}}
             for base in a["baseline"] if base["scenario"] in calibration]
    result = {
        "settings": {**a["settings"], "scenarios": judged,
                     "margin_scenarios": sorted({p["scenario"] for p in pairs}),
                     "assembled_from": {"first": {"path": str(args.first), "requests": from_a},
                                        "more": [{"path": str(p), "requests": part["settings"][
                                            "scenarios"]} for p, part in zip(args.more, parts)]}},
        "baseline": kept(a["baseline"], set(from_a)) + b["baseline"],
        "chance": kept(a["chance"], set(from_a)) + b["chance"],
        "margin_pairs": pairs,
        "samples": kept(a["samples"], set(from_a)) + b["samples"],
        "timing": _timing([a["timing"], *b["timing"]["parts"]]),
    }
    ev.rejudge(result)
    write_report(result, args.out)
    print(f"wrote {args.out}: {len(result['samples'])} samples over {len(judged)} requests, "
          f"margin pairs from {len(pairs)} calibration replies pairs")
    return 0


def _timing(runs: list[dict]) -> dict:
    """The runs' times added up (each run is kept under "runs")."""
    total = sum(t["total_seconds"] for t in runs)
    replies = sum(t["replies"] for t in runs)
    tokens = sum(t["generated_tokens"] for t in runs)
    generating = sum(t["generation_seconds"] for t in runs)
    return {"total_seconds": round(total, 1), "replies": replies, "generated_tokens": tokens,
            "generation_seconds": round(generating, 1),
            "seconds_per_reply": round(total / replies, 3),
            "tokens_per_second": round(tokens / generating, 1), "runs": runs}


if __name__ == "__main__":
    sys.exit(main())

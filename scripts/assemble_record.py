"""Assemble one evaluation record from two runs of `edgeemo evaluate` with the same settings.

    python scripts/assemble_record.py FIRST/result.json SECOND/result.json --out DIR

Each run is the same model, vectors, strengths, seeds, judges and decoding; the second judged the
held-out requests the first did not. From the first run the samples, unsteered and chance replies
of the held-out requests are kept; its unsteered replies (seed s) and chance replies (seed s + 1)
to the calibration requests are exactly the margin pairs (two unsteered replies per request and
seed), so they become the record's ``margin_pairs``. The second run adds the other held-out
requests. The summary is then rebuilt (``evaluate.rejudge``) and the report written.

``evaluation/chat-prebuilt-llm/`` was made this way: the first run had judged the calibration
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
    from edgeemo.evaluation.report import write_report
    from edgeemo.evaluation.summary import row_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    a, b = (json.loads(p.read_text()) for p in (args.first, args.second))
    same = ("model", "emotions", "strengths", "seeds", "judges", "max_tokens", "temperature",
            "steer_prompt", "on_task")
    for key in same:
        if a["settings"].get(key) != b["settings"].get(key):
            raise SystemExit(f"the two runs differ in {key}: {a['settings'].get(key)} vs "
                             f"{b['settings'].get(key)}")
    held_out = [s["id"] for s in ev.prompt_sets("held-out")[0]]
    calibration = set(ev.CALIBRATION_REQUESTS)
    from_b = set(b["settings"]["scenarios"])
    from_a = [q for q in held_out if q not in from_b]
    if not set(from_a) <= set(a["settings"]["scenarios"]) or not from_b <= set(held_out):
        raise SystemExit("the two runs do not cover the held-out requests between them")

    def kept(rows, ids):
        return [r for r in rows if r["scenario"] in ids]

    chance_a = {row_key(c): c for c in a["chance"]}
    judges = a["settings"]["judges"]
    pairs = [{"scenario": base["scenario"], "run": base["run"],
              "texts": [base["text"], chance_a[row_key(base)]["text"]],
              "scores": {j: [base[j], chance_a[row_key(base)][j]] for j in judges}}
             for base in a["baseline"] if base["scenario"] in calibration]
    result = {
        "settings": {**a["settings"], "scenarios": held_out,
                     "margin_scenarios": sorted({p["scenario"] for p in pairs}),
                     "assembled_from": {"first": {"path": str(args.first), "requests": from_a},
                                        "second": {"path": str(args.second),
                                                   "requests": sorted(from_b)}}},
        "baseline": kept(a["baseline"], set(from_a)) + b["baseline"],
        "chance": kept(a["chance"], set(from_a)) + b["chance"],
        "margin_pairs": pairs,
        "samples": kept(a["samples"], set(from_a)) + b["samples"],
        "timing": {**b["timing"], "note": "the second run's; the first's is in 'first'",
                   "first": a["timing"]},
    }
    ev.rejudge(result)
    write_report(result, args.out)
    print(f"wrote {args.out}: {len(result['samples'])} samples over {len(held_out)} requests, "
          f"margin pairs from {len(pairs)} calibration replies pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

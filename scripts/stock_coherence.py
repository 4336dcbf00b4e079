"""Do the shipped vector files stay coherent the way stock llama.cpp applies them?

    python scripts/stock_coherence.py            # writes records/stock-coherence.json

Stock llama.cpp (``llama-cli --control-vector FILE``) steers the prompt too, at the file's own
strength (scale 1.0). This script answers 8 held-out requests (calibration never saw them) that way,
greedy, without a repetition penalty (llama.cpp's default), 160 tokens, for every shipped vector
and for no vector at all, and classifies each reply's regime (``regimes.classify_text``). The
unsteered row is the yardstick: a small model decoded greedily loops by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeemo import writes
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation import prompts
    from edgeemo.evaluation import regimes
    from edgeemo.steer import EmotionModel
    from edgeemo.vectors import recommended_strength

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--vectors", type=Path, help="a directory of <emotion>.gguf files "
                        "(default: the model's, as chat finds them)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "records" / "stock-coherence.json")
    args = parser.parse_args()

    runtime = EmotionModel(args.model, threads=args.threads, steer_prompt=True)
    if args.vectors:
        runtime.load_vectors(args.vectors, EMOTIONS)
    requests = prompts.select_scenarios(8, exclude=prompts.CALIBRATION_REQUESTS, pool="requests")
    rows = {}
    for name in (None, *EMOTIONS):
        runtime.steer(None if name is None else {name: None})
        replies = [runtime.generate(r["prompt"], max_tokens=args.max_tokens, temperature=0,
                                    repeat_penalty=1.0) for r in requests]
        labels = [regimes.classify_text(t) for t in replies]
        rows[name or "unsteered"] = {
            "strength": runtime.mix.get(name),
            "reply_strength": None if name is None else recommended_strength(runtime.vector(name)),
            "regimes": dict(zip((r["id"] for r in requests),
                                                                   labels)),
            "surgical": round(labels.count("surgical") / len(labels), 4),
            "replies": replies}
        print(f"{name or 'unsteered':14} {rows[name or 'unsteered']['surgical']:.2f} surgical",
              flush=True)
    result = {"model": args.model, "vectors": str(args.vectors or "the model's"),
              "requests": [r["id"] for r in requests],
              "max_tokens": args.max_tokens, "decoding": "greedy, repeat penalty 1.0, prompt "
              "steered too (stock llama.cpp)", "rows": rows}
    writes.write_text(args.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Give calibrated vector files the strength stock llama.cpp can take, keeping their own.

    python scripts/stock_strengths.py vectors/smollm2-135m-instruct
    python scripts/stock_strengths.py DIR --model qwen2.5-coder-0.5b-instruct --json out.json

What `edgeemo calibrate --stock` does after choosing the strengths, for files calibrated before
it existed (or with --no-stock): each file's reply strength (``vectors.recommended_strength``)
is kept for edgeemo's reply-only steering, and its tensors are set to the strength at which
stock llama.cpp's way of steering (prompt steered too, greedy, no repetition penalty) keeps the
replies to the calibration requests as often coherent as the unsteered model's
(``calibration.stock_strength``). ``scripts/stock_coherence.py`` then checks the files on
requests calibration never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    from edgeemo import writes
    from edgeemo.emotions import EMOTIONS
    from edgeemo.evaluation import calibration, prompts
    from edgeemo.steer import EmotionModel
    from edgeemo.vectors import recommended_strength

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vectors", type=Path, help="a directory of <emotion>.gguf files")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write what was found per emotion here")
    args = parser.parse_args()

    names = [e for e in EMOTIONS if (args.vectors / f"{e}.gguf").is_file()]
    runtime = EmotionModel(args.model, threads=args.threads)
    runtime.load_vectors(args.vectors, names)
    requests = prompts.calibration_prompts("requests")
    started, unsteered, found, files = time.perf_counter(), [], {}, {}
    for name in names:
        vec = runtime.vector(name)                      # the file loaded above
        reply = recommended_strength(vec)
        found[name] = {"reply_strength": reply, **calibration.stock_strength(
            runtime, name, reply, requests, unsteered=unsteered)}
        files[name] = calibration.with_stock(vec, reply, found[name])
        print(f"{name:14} reply {reply:g}  stock {found[name]['strength']:g}"
              f"{'' if found[name]['held'] else '  (still loops more than unsteered)'}",
              flush=True)
    with writes.transaction():
        for name, vec in files.items():
            vec.to_gguf(args.vectors / f"{name}.gguf")
    if args.json:
        record = {"model": args.model, "requests": [r["id"] for r in requests],
                  "unsteered": unsteered, "seconds": round(time.perf_counter() - started, 1),
                  "vectors": found}
        writes.write_text(args.json, json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(files)} files in {args.vectors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

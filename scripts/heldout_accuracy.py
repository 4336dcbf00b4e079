"""Held-out 20-way accuracy of comprehension and generation vectors, per model, into a record.

    python scripts/heldout_accuracy.py                    # the default model
    python scripts/heldout_accuracy.py --models smollm2-135m-instruct,gemma3-270m,\
qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct   # writes records/heldout-accuracy.json

For each model and method, the directions are made from all of that method's activations (the
store's cache; made if missing: for generation the stories are written first), at the band where
the emotions separate best. Each of the 120 vignettes of ``edgeemo/data/heldout.jsonl`` (6 per
emotion, never used to make a vector) is read by the model and given the emotion whose direction
it projects onto most (``analysis.heldout_accuracy``): top-1 and top-3 against chance 1/20.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("comprehension", "generation")


def measure(name: str, methods=METHODS) -> dict:
    from edgeemo import analysis, export, extract, models, stimuli
    from edgeemo.reader import HiddenStateReader

    model = models.ensure(name)
    reader = HiddenStateReader(export.export_model(model))
    out = {}
    for method in methods:
        started = time.perf_counter()
        acts = extract.activations(model, method)
        band = analysis.best_band(analysis.band_scores(acts), acts.layers)
        result = analysis.heldout_accuracy(acts, stimuli.heldout(), reader, band)
        out[method] = {"band": list(band), "n_layer": acts.info["n_layer"],
                       "seconds": round(time.perf_counter() - started, 1),
                       **{k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in result.items() if k != "per_emotion"},
                       "per_emotion": {k: round(v, 4) for k, v in result["per_emotion"].items()}}
        print(f"{name} {method}: top-1 {result['top1']:.3f}, top-3 {result['top3']:.3f} "
              f"(n={result['n']}, chance {result['chance']:.2f}), hidden states "
              f"{band[0]}-{band[1]}", flush=True)
    return out


def main() -> int:
    import edgeemo
    import onnxruntime

    from edgeemo import models, writes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=models.default_card().name,
                        help="comma-separated model names (default: the default model)")
    parser.add_argument("--out", type=Path, default=ROOT / "records" / "heldout-accuracy.json")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    record = {"command": "python scripts/heldout_accuracy.py --models " + ",".join(names),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000"),
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version(),
                          "edgeemo": edgeemo.__version__, "onnxruntime": onnxruntime.__version__},
              "models": {name: measure(name) for name in names}}
    writes.write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Set every vector of a model to one strength chosen from a strength sweep.

    edgeemo evaluate qwen2.5-coder-1.5b-instruct --emotions afraid,angry,happy,sad,calm,proud,\\
        nervous,loving,hopeful,gloomy --strengths 0.08,0.12,0.16,0.24,0.32 \\
        --scenarios r05,r08,r10,r14 --margin-prompts r16,r17,r18,r20 --threads 2 \\
        --report records/sweep-qwen2.5-coder-1.5b
    python scripts/apply_model_strength.py records/sweep-qwen2.5-coder-1.5b/result.json \\
        vectors/qwen2.5-coder-1.5b-instruct

The sweep runs on calibration requests only (never on the held-out ones an evaluation judges).
``calibration.model_strength`` picks the strength (on task >= 0.90 and coherent >= 0.95 over
the sampled emotions, then the best success by the LLM judge); every <emotion>.gguf in the
directory is rewritten at it (``calibration.apply_calibration``), and the choice, with the
sweep's per-strength figures, is written beside the sweep as chosen.json. `edgeemo calibrate`
does the same per emotion, at the cost of one sweep per emotion.
"""

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    from edgeemo import writes
    from edgeemo.evaluation import calibration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="an evaluate result.json over several strengths")
    parser.add_argument("vectors", type=Path, help="the directory of <emotion>.gguf files")
    parser.add_argument("--judge", default="llm")
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    choice = calibration.model_strength(result, args.judge)
    for key, row in choice["per_strength"].items():
        print(f"{key:>6}: success {row['success_rate']:.0%}, on task {row['on_task_share']:.0%}, "
              f"coherent {row['coherent_share']:.0%}, drift {row['drift_share']}")
    if choice["strength"] is None:
        print("no strength keeps the replies on task and coherent: nothing written",
              file=sys.stderr)
        return 1
    from edgeemo.evaluation.report import strength_key

    row = choice["per_strength"][strength_key(choice["strength"])]
    evidence = {**choice, **row, "surgical_share": row["coherent_share"]}
    files = sorted(args.vectors.glob("*.gguf"))
    for path in files:
        calibration.apply_calibration(path, choice["strength"], evidence)
    writes.write_text(args.result.parent / "chosen.json", json.dumps(choice, indent=2) + "\n")
    print(f"{len(files)} files in {args.vectors} at {choice['strength']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

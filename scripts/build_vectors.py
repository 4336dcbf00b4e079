"""Rebuild the prebuilt vectors shipped in vectors/ (all 20 emotions of the default model).

    python scripts/build_vectors.py                       # comprehension-based
    python scripts/build_vectors.py --method generation --seed 0

Comprehension is the default for the shipped vectors because on SmolLM2-135M it separates the
20 emotions far better (held-out accuracy 0.77 against 0.19 for generation-based vectors, see
the README); the 135M model's own stories are too alike to beat pre-written vignettes.

Runs ``edgeemo.make.make_vectors``, the same code as `edgeemo export-vector --all`, and writes
vectors/<model>/<emotion>.gguf at the default strength. Same inputs and seed give byte-identical
files. The shipped files are then calibrated, each at its own strength:

    edgeemo calibrate --emotions all --prebuilt --threads 1
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeemo import make, models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="comprehension", choices=make.extract.METHODS)
    parser.add_argument("--baseline", default="neutral", choices=make.BASELINES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = ROOT / "vectors" / args.model
    for path in make.make_vectors(models.ensure(args.model), None, method=args.method,
                                  baseline=args.baseline, seed=args.seed, output=out,
                                  say=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rebuild the prebuilt vectors shipped in vectors/ (all 20 emotions of the default model).

    python scripts/build_vectors.py                       # generation-based, seed 0
    python scripts/build_vectors.py --method comprehension

Runs the same pipeline as `edgeemo export-vector --all` and writes
vectors/<model>/<emotion>.gguf. Same inputs and seed give byte-identical files.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="generation", choices=["generation", "comprehension"])
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    out = ROOT / "vectors" / args.model
    command = [sys.executable, "-m", "edgeemo", "export-vector", "--all", "--model", args.model,
               "--method", args.method, "--seed", args.seed, "-o", str(out)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())

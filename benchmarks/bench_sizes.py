"""Sizes: export, reading and steered generation across model sizes, up to random 3B shapes.

    python benchmarks/bench_sizes.py                    # the default model and four random shapes
    python benchmarks/bench_sizes.py --quick            # the default model only, 4 texts, 8 tokens
    python benchmarks/bench_sizes.py --set size=tiny --set random=llama,gpt2 --set texts=4

Models: the default model (always), the real models named by ``real`` (cards pulled from PyPI:
Qwen2.5-Coder 0.5B and 1.5B Instruct) and the random-weight models named by ``random``, at ``size``
"full" (the shapes of GPT-2, Llama-3.2-1B, Qwen2.5-1.5B and Llama-3.2-3B, Q4_K_M) or "tiny"
(4 layers x 128, for a fast check); see ``edgeemo.testmodels``. A random model is made once and
kept in the store's ``cache/random-models`` (a 1B takes about 5 minutes); that time is reported
but is not part of any result.

Every stage runs in its own fresh process (peak memory is that process's own):

* export-model fp32, then int8 (each straight from the GGUF), in a temporary store holding
  only the model's GGUF, so the user's store gets no export of a random model; the int8 ONNX size
  as a fraction of the fp32 one. With ``export`` False (--quick), the default model's exports are
  taken from the store and not timed; a random or real model is always exported, and a real
  model's exports are then moved into the user's store when it has none (they are what
  ``edgeemo export-model`` would have made).
* parity: llama.cpp's final hidden state against the export's (``edgeemo check``'s measure), mean
  cosine over every token of a few texts, for each export.
* reading: the same texts at all steerable layers, from the fp32 and from the int8 export, as
  bench_scaling.py reads them; texts/s.
* llama.cpp: greedy replies unsteered and steered, interleaved (as bench_steering.py times
  them), and the emotion switch: the ``steer`` call that replaces one vector with another in
  place. The vectors are random directions (standard normal, as ``edgeemo check`` tests a model)
  over a band of 5 middle layers, the width of the band edgeemo steers; for the default model
  too, so every model is steered alike.

A stage that fails (an error, killed when memory runs out, ``timeout`` seconds) is recorded as
failed, with its reason and the peak memory it had reached, and the next stage runs; stages that
need its output are skipped. The trend is the least-squares slope of log(measure) against
log(parameters) over the models that have the measure, as in bench_scaling.py: 1.0 means the
measure grows in proportion to size, -1.0 that a rate falls in proportion.

Random weights prove mechanics, memory and time only, never emotions.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import benchlib
from bench_scaling import extract_stage, gguf_parameters, scaling_texts
from bench_steering import FULL as STEERING
from bench_steering import generate_once

FULL = {"real": "qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct",
        "random": "gpt2,llama3.2-1b,qwen2.5-1.5b,llama3.2-3b", "size": "full", "export": True,
        "texts": 32, "batch": 8, "tokens": 64, "reps": 3, "switches": 20, "timeout": 3600}
QUICK = {"real": None, "random": None, "export": False, "texts": 4, "tokens": 8, "reps": 1,
         "switches": 5, "timeout": 600}

# measure -> label, in the order of the rows; the trend is fitted for each
MEASURES = {"export_fp32_s": "export-model fp32: time",
            "export_fp32_mb": "export-model fp32: peak memory",
            "export_int8_s": "export-model int8: time",
            "export_int8_mb": "export-model int8: peak memory",
            "parity_fp32": "parity with llama.cpp, fp32 export: mean cosine",
            "parity_int8": "parity with llama.cpp, int8 export: mean cosine",
            "read_fp32_texts_s": "reading fp32: texts/s",
            "read_fp32_mb": "reading fp32: peak memory",
            "read_int8_texts_s": "reading int8: texts/s",
            "read_int8_mb": "reading int8: peak memory",
            "unsteered_tok_s": "llama.cpp unsteered: tokens/s",
            "steered_tok_s": "llama.cpp steered: tokens/s",
            "generate_mb": "llama.cpp: peak memory",
            "switch_ms": "switch emotion in place"}
HEADLINE = ("export_fp32_mb", "read_int8_texts_s", "steered_tok_s")


# --- stages (each in a fresh process) -------------------------------------------------------------

def make_stage(name: str, size: str, threads: int) -> dict:
    """Make (or reuse) the random model ``name`` at ``size`` in the store's cache."""
    from edgeemo import testmodels

    started = time.perf_counter()
    path = testmodels.make(name, size, testmodels.default_dir(), threads=threads,
                           progress=benchlib.say)
    return {"gguf": str(path), "seconds": time.perf_counter() - started}


def export_stage(model_ref: str, precision: str) -> dict:
    """``edgeemo export-model`` at one precision."""
    from edgeemo import export, models

    out = export.export_model(models.ensure(model_ref), precision)
    return {"dir": str(out)}


def parity_stage(model_ref: str, export_dir: str, threads: int) -> dict:
    """``edgeemo check``'s parity: llama.cpp's final hidden state against the export's."""
    from edgeemo import check, models

    cosines = check.parity_by_position(models.resolve(model_ref), Path(export_dir),
                                       threads=threads)
    return {"mean_cosine": cosines["all"], "after_first": cosines["after_first"],
            "first": cosines["first"]}


def keep_exports(model_ref: str, exports: dict) -> dict:
    """Move a real model's exports from the temporary store into the user's, where it has none;
    returns the directories they now live in."""
    from edgeemo import export, models, store

    model = models.resolve(model_ref)
    kept = {}
    for precision, directory in exports.items():
        target = export.cached_export(model, precision)
        if target is None:
            target = store.export_dir(model.sha256, precision)
            if target.exists():                          # an incomplete one: replaced
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(directory, target)
        kept[precision] = str(target)
    return kept


def random_vector(runtime, seed: int, out_dir: Path) -> str:
    """A control-vector file of the model's shape with random directions over a middle band."""
    from edgeemo import analysis, vectors

    layers = list(vectors.usable_layers(runtime.n_layer))
    width = min(analysis.BAND_WIDTH, len(layers))
    band = layers[(len(layers) - width) // 2:][:width]
    rng = np.random.default_rng(seed)
    vec = vectors.ControlVector(runtime.arch, runtime.n_embd,
                                {n: rng.standard_normal(runtime.n_embd) for n in band})
    return str(vec.to_gguf(out_dir / f"random-{seed}.gguf"))


def generate_stage(model_ref: str, prompt: str, tokens: int, reps: int, switches: int,
                   threads: int) -> dict:
    """Load the model in llama.cpp; time replies unsteered and steered (interleaved, after a
    warm-up), then the switch from one random vector to another."""
    from edgeemo.steer import EmotionModel

    started = time.perf_counter()
    runtime = EmotionModel(model_ref, seed=0, threads=threads)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="edgeemo-bench-vectors-") as tmp:
        a, b = (random_vector(runtime, seed, Path(tmp)) for seed in (1, 2))
        prompt_ids = runtime.prompt_ids([{"role": "user", "content": prompt}])
        conditions = {"unsteered": None, "steered": {a: None}}
        for mix in conditions.values():
            generate_once(runtime, prompt_ids, mix, tokens)               # warm-up
        runs = {name: (lambda mix=mix: generate_once(runtime, prompt_ids, mix, tokens))
                for name, mix in conditions.items()}
        results = benchlib.interleaved(runs, reps)
        runtime.steer({b: None})                    # the first use of b reads its file
        switch_s = []
        for i in range(switches):
            started = time.perf_counter()
            runtime.steer({(a, b)[i % 2]: None})
            switch_s.append(time.perf_counter() - started)
        layers = runtime.vector(a).layers
    runtime.close()
    out = {"load_s": load_s, "layers": [layers[0], layers[-1]], "n_layer": runtime.n_layer,
           "prompt_tokens": len(prompt_ids), "switch_s": switch_s,
           "steered_differs": results["steered"][0]["ids"] != results["unsteered"][0]["ids"]}
    for name, runs in results.items():
        for key in ("tok_s", "decode_tok_s", "tokens"):
            out[f"{name}_{key}"] = benchlib.median(r[key] for r in runs)
    return out


# --- the benchmark --------------------------------------------------------------------------------

def run_stage(report: benchlib.Report, what: str, fn, *args, env: dict, timeout: float) -> dict:
    """``benchlib.isolated``; a failed stage is recorded as a row saying so, with its reason and
    the peak memory it had reached, and the failure is raised on (``report.part`` records it)."""
    try:
        return benchlib.isolated(fn, *args, env=env, timeout=timeout)
    except benchlib.StageFailed as exc:
        reason = str(exc).splitlines()[0]
        peak = None if exc.peak_mb is None else round(exc.peak_mb, 1)
        report.row(what, "failed", note=f"{reason}; peak memory reached: "
                                        + ("unknown" if peak is None else f"{peak:.0f} MB"))
        report.data.setdefault("failures", []).append(
            {"stage": what, "reason": str(exc), "peak_mb": peak})
        raise


def measure(report: benchlib.Report, label: str, model_ref: str, gguf: str, quant: str,
            stored: dict, settings: dict, texts: list[str], threads: int, *,
            keep: bool = False) -> dict:
    """Every stage for one model; returns its point (parameters and the measures it got).
    ``stored``: the model's exports in the store, or {} to export it here (timed); ``keep``:
    move those exports into the user's store afterwards (a real model)."""
    from edgeemo import export

    params, body = gguf_parameters(gguf)
    point = {"parameters": params, "non_embedding_parameters": body,
             "gguf_mb": Path(gguf).stat().st_size / 1e6}
    report.row(f"{label}: parameters", params / 1e6, "M",
               note=f"{body / 1e6:.0f}M outside the token embedding; GGUF "
                    f"{point['gguf_mb']:.0f} MB, {quant}")
    timeout = settings["timeout"]
    exports = dict(stored)            # precision -> export directory
    home = None
    try:
        if not stored:
            home = benchlib.fresh_store(model_ref, gguf=gguf)
            for precision in ("fp32", "int8"):
                with report.part(f"{label}: export-model {precision}"):
                    stage = run_stage(report, f"{label}: export-model {precision}", export_stage,
                                      model_ref, precision, env={"EDGEEMO_HOME": str(home)},
                                      timeout=timeout)
                    exports[precision] = stage["value"]["dir"]
                    point[f"export_{precision}_s"] = stage["wall"]
                    point[f"export_{precision}_mb"] = stage["peak_mb"]
                    size_mb = export.onnx_size(Path(exports[precision])) / 1e6
                    report.row(f"{label}: {MEASURES[f'export_{precision}_s']}", stage["wall"], "s",
                               note=f"model.onnx {size_mb:.0f} MB")
                    report.row(f"{label}: {MEASURES[f'export_{precision}_mb']}",
                               stage["peak_mb"], "MB")
        if "fp32" in exports and "int8" in exports:
            fraction = (export.onnx_size(Path(exports["int8"]))
                        / export.onnx_size(Path(exports["fp32"])))
            point["int8_size_fraction"] = fraction
            report.row(f"{label}: int8 ONNX size / fp32", fraction, "",
                       note="exports from the store, not timed here" if stored else "")
        for precision in ("fp32", "int8"):
            with report.part(f"{label}: parity {precision}"):
                if precision not in exports:
                    raise benchlib.SkipPart(f"no {precision} export")
                stage = run_stage(report, f"{label}: parity {precision}", parity_stage,
                                  model_ref, exports[precision], threads,
                                  env={"EDGEEMO_HOME": str(home)} if home else benchlib.store_env(),
                                  timeout=timeout)
                point[f"parity_{precision}"] = stage["value"]["mean_cosine"]
                report.row(f"{label}: {MEASURES[f'parity_{precision}']}",
                           stage["value"]["mean_cosine"], "",
                           note=f"final hidden state, every token of check's parity texts; "
                                f"after the first position (what extraction pools) "
                                f"{stage['value']['after_first']:.4f}, the first alone "
                                f"{stage['value']['first']:.3f}")
        for precision in ("fp32", "int8"):
            with report.part(f"{label}: reading {precision}"):
                if precision not in exports:
                    raise benchlib.SkipPart(f"no {precision} export (its export failed or was "
                                            f"skipped)")
                stage = run_stage(report, f"{label}: reading {precision}", extract_stage,
                                  exports[precision], texts, settings["batch"], threads,
                                  env=benchlib.store_env(), timeout=timeout)
                v = stage["value"]
                point[f"read_{precision}_texts_s"] = len(texts) / v["extract_s"]
                point[f"read_{precision}_mb"] = stage["peak_mb"]
                report.row(f"{label}: {MEASURES[f'read_{precision}_texts_s']}",
                           len(texts) / v["extract_s"], "texts/s",
                           note=f"{len(texts)} texts ({v['mean_tokens']:.0f} tokens on average) "
                                f"at {v['layers']} layers × {v['n_embd']}; load "
                                f"{v['load_s']:.1f} s")
                report.row(f"{label}: {MEASURES[f'read_{precision}_mb']}", stage["peak_mb"], "MB")
        if keep and home is not None:
            exports = keep_exports(model_ref, exports)
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    with report.part(f"{label}: llama.cpp generation"):
        stage = run_stage(report, f"{label}: llama.cpp generation", generate_stage,
                          model_ref, STEERING["prompt"], settings["tokens"], settings["reps"],
                          settings["switches"], threads, env=benchlib.store_env(),
                          timeout=timeout)
        v = stage["value"]
        point.update({"unsteered_tok_s": v["unsteered_decode_tok_s"],
                      "steered_tok_s": v["steered_decode_tok_s"],
                      "generate_mb": stage["peak_mb"],
                      "switch_ms": 1000 * benchlib.median(v["switch_s"])})
        for name in ("unsteered", "steered"):
            note = (f"decoding, median of {settings['reps']}; {v[f'{name}_tokens']:.0f} tokens; "
                    f"whole reply {benchlib.format_value(v[f'{name}_tok_s'], 'tok/s')}")
            if name == "steered":
                note += (f"; random vector at layers {v['layers'][0]}–{v['layers'][1]} of "
                         f"{v['n_layer']}; reply differs from unsteered: "
                         f"{'yes' if v['steered_differs'] else 'no'}")
            report.row(f"{label}: {MEASURES[f'{name}_tok_s']}", point[f"{name}_tok_s"], "tok/s",
                       note=note)
        report.row(f"{label}: {MEASURES['switch_ms']}", point["switch_ms"], "ms",
                   note=f"the steer call, median of {len(v['switch_s'])}")
        report.row(f"{label}: {MEASURES['generate_mb']}", stage["peak_mb"], "MB",
                   note=f"load {v['load_s']:.1f} s")
        point["generate"] = v
    return point


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("sizes", "Sizes: export, reading and steering across model sizes",
                             quick=quick, settings={**settings, "threads": threads})
    texts = scaling_texts(settings["texts"])
    report.settings["n_texts"] = len(texts)
    points = {}

    name = benchlib.DEFAULT_MODEL
    with report.part(f"prepare {name}"):
        from edgeemo import models

        paths = benchlib.prepare(name, () if settings["export"] else ("fp32", "int8"))
        points[name] = measure(report, name, name, paths["gguf"],
                               models.resolve(name).card.quantization, paths["exports"],
                               settings, texts, threads)

    for real_name in str(settings["real"] or "").split(","):
        if not real_name:
            continue
        with report.part(f"prepare {real_name}"):
            from edgeemo import models

            paths = benchlib.prepare(real_name, ())                     # pulls the GGUF only
            points[real_name] = measure(report, real_name, real_name, paths["gguf"],
                                        models.resolve(real_name).card.quantization, {},
                                        settings, texts, threads, keep=True)

    from edgeemo import testmodels

    size = settings["size"]
    for random_name in str(settings["random"] or "").split(","):
        if not random_name:
            continue
        label = f"random {random_name}" + (" (tiny)" if size == "tiny" else "")
        with report.part(f"make {label}"):
            made = benchlib.isolated(make_stage, random_name, size, threads,
                                     env=benchlib.store_env(), timeout=settings["timeout"])
            report.data.setdefault("made", {})[label] = benchlib.rounded(made["value"])
            if made["value"]["seconds"] >= 1:
                report.note(f"{label} was made for this run in {made['value']['seconds']:.0f} s "
                            f"(once; kept in the store's cache/random-models), not part of any "
                            f"result.")
            gguf = made["value"]["gguf"]
            quant = "F32" if size == "tiny" else testmodels.FULL_QUANT
            points[label] = measure(report, label, gguf, gguf, quant, {}, settings, texts,
                                    threads)
    report.data["points"] = benchlib.rounded(points, 4)

    with report.part("trend"):
        if len(points) < 2:
            raise benchlib.SkipPart(f"needs two models, measured {len(points)}")
        for key, label in MEASURES.items():
            have = [pt for pt in points.values() if pt.get(key)]
            if len(have) < 2:
                report.row(f"log-log slope of {label} vs parameters", None,
                           note=f"measured on {len(have)} model(s)")
                continue
            slope, _ = np.polyfit(np.log([pt["parameters"] for pt in have]),
                                  np.log([pt[key] for pt in have]), 1)
            report.row(f"log-log slope of {label} vs parameters", float(slope), "",
                       headline=key in HEADLINE,
                       note=f"{len(have)} models" + ("; two points: a line through both, not a "
                                                     "fit" if len(have) == 2 else ""))
            report.data[f"slope_{key}"] = round(float(slope), 3)
    report.note("Random weights prove mechanics, memory and time only, never emotions: a random "
                "model runs the same arithmetic as a trained one of its shape, but there is "
                "nothing in it to steer, and its vectors (random directions) mean nothing.")
    report.note("The default model is steered with random directions too, so that every model "
                "is steered alike; the cost of a vector depends on its layers, not its values. "
                "llama.cpp's speed also depends on the GGUF's quantization, given beside each "
                "model's parameters.")
    return report.to_dict()


if __name__ == "__main__":
    benchlib.main(run, __doc__)

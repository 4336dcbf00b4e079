"""End to end: time and peak memory to make the emotion vectors, and to export the model.

    python benchmarks/bench_endtoend.py                 # all 20 emotions, both methods, export
    python benchmarks/bench_endtoend.py --quick         # 2 emotions, 1 story each, no export

Each stage runs in a fresh process on a fresh store (a temporary EDGEEMO_HOME) that holds only
the default model's GGUF and, for extraction, its fp32 ONNX export (symlinked from the current
store): no stories, activations or vectors are cached. A stage does what
``edgeemo export-vector --all --method M`` does: load, read (and for generation, first write the
stories with llama.cpp), choose the band, compute the directions and write one GGUF per emotion.

* dialogue (the default and the prebuilt recipe): the model reads the shipped assistant replies
  that differ only in tone (30 requests × 20 emotions and neutral), against the grand mean.
* comprehension: the model reads the shipped vignettes (all texts of every emotion, and neutral).
* generation: the model writes 6 stories per emotion and 12 neutral ones (160 tokens each), then
  reads them back; by far the longest stage (about 8 minutes on a quiet 2-core machine).
* the first vector: ``edgeemo export-vector --emotion fear`` with no other flag, in a store that
  holds only the GGUF (so the export is made first); skipped in --quick.
* export-model: GGUF -> ONNX fp32 (transformers + optimum) in a store with only the GGUF; then
  the int8 quantization of that export. Skipped in --quick.

Like the command, a stage reads only the layers of the prebuilt vectors' band when its recipe is
theirs (dialogue − grand mean, the shipped texts): ``make.prebuilt_band``. ``--set stages=first``
runs some stages only (of ``dialogue,comprehension,generation,first,export``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import benchlib

STAGES = "dialogue,comprehension,generation,first,export"
FULL = {"model": benchlib.DEFAULT_MODEL, "emotions": None, "texts_per_label": None,
        "stories": 6, "neutral_stories": 12, "story_tokens": 160, "export": True,
        "stages": STAGES, "timeout": 3600}
QUICK = {"emotions": "afraid,happy", "texts_per_label": 4, "stories": 1, "neutral_stories": 2,
         "story_tokens": 24, "export": False, "timeout": 600}


def make_vectors(model_name: str, method: str, emotion_names: list[str] | None,
                 texts_per_label: int | None, stories: int, neutral_stories: int,
                 story_tokens: int, threads: int) -> dict:
    """What ``edgeemo export-vector --all`` does (``make.make_vectors``), timed step by step (run
    in a fresh process): the reading is done here so that --quick can read fewer texts."""
    from edgeemo import emotions, export, extract, make, models, stimuli, store
    from edgeemo.reader import HiddenStateReader
    from edgeemo.steer import EmotionModel

    steps = {}
    mark = time.perf_counter()

    def step(name):
        nonlocal mark
        now = time.perf_counter()
        steps[name] = now - mark
        mark = now

    model = models.ensure(model_name)
    reader = HiddenStateReader(export.export_model(model), threads=threads)
    names = list(emotion_names or emotions.EMOTIONS)
    baseline = "grand" if method == "dialogue" else "neutral"
    band = make.prebuilt_band(model, method, baseline, "mean", 0) if not texts_per_label else None
    layers = None if band is None else make.hidden_states_of(band)
    step("load")
    if method == "comprehension":
        texts = stimuli.comprehension(names)
        if texts_per_label:
            texts = {k: v[:texts_per_label if k != "neutral" else 2 * texts_per_label]
                     for k, v in texts.items()}
        acts = extract.comprehension(reader, texts, layers=layers)
        n_items = sum(len(v) for v in texts.values())
        step("read")
    elif method == "dialogue":
        records = stimuli.dialogue(names)
        if texts_per_label:
            kept = list(dict.fromkeys(r["request"] for r in records))[:texts_per_label]
            records = [r for r in records if r["request"] in kept]
        acts = extract.dialogue(reader, records, layers=layers)
        n_items = len(records)
        step("read")
    else:
        runtime = EmotionModel(model, seed=0, threads=threads)
        step("load llama.cpp")
        acts = extract.generation(runtime, reader, names, stories=stories, layers=layers,
                                  neutral_stories=neutral_stories, max_tokens=story_tokens, seed=0)
        n_items = sum(len(v) for v in acts.by_label.values())
        step("write and read stories")
    out = store.vector_dir(model.sha256)
    vecs = make.vectors_from(acts, layers=band, baseline=baseline)
    for name, vec in vecs.items():
        vec.to_gguf(out / f"{name}.gguf")
    step("band, directions and vectors")
    band = next(iter(vecs.values())).metadata["hidden_states"].split("-")
    made = next(iter(vecs.values())).metadata["hidden_states"].split("-")
    return {"steps": steps, "vectors": len(vecs), "items": n_items,
            "band": [int(made[0]), int(made[1])], "prebuilt_band": band is not None}


def first_vector(model_name: str) -> dict:
    """``edgeemo export-vector --emotion fear`` as a newcomer types it (the CLI, no other flag,
    so every core is used), in a store that holds only the GGUF: the export, the reading and the
    file."""
    import os

    from edgeemo.cli import cli
    from edgeemo.vectors import ControlVector

    out = Path(os.environ["EDGEEMO_HOME"]) / "fear.gguf"
    cli.main(["export-vector", "--emotion", "fear", "--model", model_name, "-o", str(out)],
             standalone_mode=False)
    meta = ControlVector.from_gguf(out).metadata
    return {k: meta.get(k) for k in ("method", "baseline", "strength", "layers", "strength_from")}


def export_stage(model_name: str, precision: str) -> dict:
    from edgeemo import export, models

    out = export.export_model(models.ensure(model_name), precision)
    return {"onnx_mb": export.onnx_size(out) / 1e6}


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("endtoend", "End to end: vectors for every emotion, and the export",
                             quick=quick, settings={**settings, "threads": threads})
    names = settings["emotions"].split(",") if settings["emotions"] else None
    stages = [s.strip() for s in str(settings["stages"] or "").split(",") if s.strip()]
    unknown = set(stages) - set(STAGES.split(","))
    if unknown:
        raise SystemExit(f"unknown stage {sorted(unknown)[0]!r}; known: {STAGES}")
    label = f"{len(names)} emotions" if names else "all 20 emotions"
    paths = None
    with report.part("prepare the model and its export"):
        paths = benchlib.prepare(settings["model"], ("fp32",))
    if paths:
        for method in [m for m in ("dialogue", "comprehension", "generation") if m in stages]:
            with report.part(f"{method}-based vectors, {label}"):
                home = benchlib.fresh_store(settings["model"], gguf=paths["gguf"],
                                            exports={"fp32": paths["exports"]["fp32"]})
                try:
                    stage = benchlib.isolated(
                        make_vectors, settings["model"], method, names,
                        settings["texts_per_label"], settings["stories"],
                        settings["neutral_stories"], settings["story_tokens"], threads,
                        env={"EDGEEMO_HOME": str(home)}, timeout=settings["timeout"])
                finally:
                    shutil.rmtree(home, ignore_errors=True)
                value = stage["value"]
                read = (f"hidden states {value['band'][0]}-{value['band'][1]} read (the prebuilt "
                        f"band)" if value.get("prebuilt_band") else "every layer read")
                report.row(f"{method}: time, {label}", stage["wall"], "s", headline=True,
                           note=f"{value['vectors']} vectors from {value['items']} texts, {read}; "
                                + ", ".join(f"{k} {v:.1f} s" for k, v in value["steps"].items()))
                report.row(f"{method}: peak memory", stage["peak_mb"], "MB", headline=True)
                report.data[method] = benchlib.rounded(stage)

    if not settings["export"]:
        report.skip("export-model", "skipped in --quick (an export takes about 1.5 minutes); "
                                    "the full run measures it")
        return report.to_dict()
    for stage, part in (("first", first_vector_part), ("export", export_part)):
        if stage in stages:
            part(report, settings)
        else:
            report.skip(stage, "not among the stages asked for (--set stages=...)")
    return report.to_dict()


def first_vector_part(report, settings: dict) -> None:
    from edgeemo import models

    with report.part("the first vector on a fresh store"):
        home = benchlib.fresh_store(settings["model"], gguf=models.ensure(settings["model"]).path)
        try:
            stage = benchlib.isolated(first_vector, settings["model"],
                                      env={"EDGEEMO_HOME": str(home)}, timeout=settings["timeout"])
        finally:
            shutil.rmtree(home, ignore_errors=True)
        made = stage["value"]
        report.row("export-vector --emotion fear on a fresh store: time", stage["wall"], "s",
                   aim="≤ 120", note=f"export, reading and file, every core; {made['method']} − "
                                     f"{made['baseline']} mean, strength {made['strength']:g} "
                                     f"({made.get('strength_from') or 'default'}), llama.cpp "
                                     f"layers {made['layers']}")
        report.row("export-vector --emotion fear on a fresh store: peak memory",
                   stage["peak_mb"], "MB", headline=True)
        report.data["first_vector"] = benchlib.rounded(stage)


def export_part(report, settings: dict) -> None:
    from edgeemo import export, models

    with report.part("export-model (fp32, then int8)"):
        model = models.ensure(settings["model"])
        export.require_export_extra()
        home = benchlib.fresh_store(settings["model"], gguf=model.path)
        try:
            for precision in ("fp32", "int8"):
                stage = benchlib.isolated(export_stage, settings["model"], precision,
                                          env={"EDGEEMO_HOME": str(home)},
                                          timeout=settings["timeout"])
                what = "export-model" if precision == "fp32" else "int8 quantization of the export"
                report.row(f"{what}: time", stage["wall"], "s", headline=precision == "fp32",
                           note=f"model.onnx {stage['value']['onnx_mb']:.0f} MB")
                report.row(f"{what}: peak memory", stage["peak_mb"], "MB",
                           headline=precision == "fp32")
                report.data[f"export_{precision}"] = benchlib.rounded(stage)
        finally:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    benchlib.main(run, __doc__)

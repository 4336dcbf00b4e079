"""Hidden-state extraction engine: onnxruntime (fp32, int8) against transformers on torch.

    python benchmarks/bench_engine.py                   # 120 texts, 5 interleaved repetitions
    python benchmarks/bench_engine.py --quick           # 8 texts, 1 repetition
    python benchmarks/bench_engine.py --set texts=48 --set reps=3

All engines read the same comprehension texts, as the same token ids (``HiddenStateReader.tokenize``,
i.e. llama.cpp's tokenizer), in the same batches of 8, right-padded with the attention mask and
position ids counting real tokens, at the same hidden states (every steerable layer), with the same
number of threads, and pool each text the same way (``extract.pool``). Tokenization is not timed.

* speed: the three engines are loaded in one process and timed interleaved (ort fp32, ort int8,
  torch, ort int8, torch, ort fp32, …); texts/s is n_texts over the median time of a pass.
* memory: each engine loads and reads the texts once in its own fresh process (peak MB; 3
  processes per engine, alternating, median and range); the time of that first pass is reported
  too, as a second look at the ratio.
* agreement: the largest difference between onnxruntime fp32 and torch pooled states, relative to
  their norm (they should compute the same function).
* int8 drift: comprehension directions (emotion mean − neutral mean) from the fp32 and the int8
  export on the same texts; the cosine per layer and emotion, min and median.

The torch baseline is ``AutoModel.from_pretrained(gguf dir, gguf_file=…, dtype=float32)`` (the same
dequantized weights the ONNX export is made from) in eager mode (no torch.compile) with its default
attention implementation, under ``torch.inference_mode()``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "texts": 120, "batch": 8, "reps": 5, "warmup": 1,
        "drift_emotions": None, "drift_texts_per_label": None, "memory_reps": 3, "timeout": 1800}
QUICK = {"texts": 8, "reps": 1, "drift_emotions": 2, "drift_texts_per_label": 4, "memory_reps": 1,
         "timeout": 600}
ENGINES = ("onnxruntime fp32", "onnxruntime int8", "torch")


def engine_texts(n: int) -> list[str]:
    """``n`` comprehension texts, taken round-robin over the labels (neutral included)."""
    from edgeemo import stimuli

    by_label = stimuli.comprehension()
    out, i = [], 0
    while len(out) < n:
        row = [texts[i] for texts in by_label.values() if i < len(texts)]
        if not row:
            break
        out += row
        i += 1
    return out[:n]


def drift_texts(emotions: int | None, per_label: int | None) -> dict[str, list[str]]:
    from edgeemo import stimuli

    texts = stimuli.comprehension()
    names = [k for k in texts if k != "neutral"]
    keep = names[:emotions] if emotions else names
    out = {k: texts[k] for k in keep + ["neutral"]}
    if per_label:
        out = {k: v[:per_label if k != "neutral" else 2 * per_label] for k, v in out.items()}
    return out


# --- the engines ----------------------------------------------------------------------------------

class OrtEngine:
    def __init__(self, export_dir: str, threads: int):
        from edgeemo.reader import HiddenStateReader

        self.reader = HiddenStateReader(export_dir, threads=threads)

    def read(self, ids: list[list[int]], layers: list[int], batch: int) -> list[np.ndarray]:
        from edgeemo.extract import pool

        return [pool(states)[0] for states in self.reader.read(ids, layers, batch_size=batch)]


class TorchEngine:
    def __init__(self, gguf_path: str, threads: int):
        import warnings
        from pathlib import Path

        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        warnings.filterwarnings("ignore")
        torch.set_num_threads(threads)
        path = Path(gguf_path)
        self.torch = torch
        self.model = transformers.AutoModel.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        self.attention = getattr(self.model.config, "_attn_implementation", None)

    def read(self, ids: list[list[int]], layers: list[int], batch: int) -> list[np.ndarray]:
        """The same as HiddenStateReader.read + pool, with torch doing the forward pass."""
        from edgeemo.extract import pool

        torch = self.torch
        out = []
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            lengths = [len(x) for x in chunk]
            input_ids = np.zeros((len(chunk), max(lengths)), dtype=np.int64)
            mask = np.zeros_like(input_ids)
            for row, x in enumerate(chunk):
                input_ids[row, :len(x)] = x
                mask[row, :len(x)] = 1
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
            with torch.inference_mode():
                result = self.model(input_ids=torch.from_numpy(input_ids),
                                    attention_mask=torch.from_numpy(mask),
                                    position_ids=torch.from_numpy(positions),
                                    output_hidden_states=True)
            states = [result.hidden_states[k].numpy() for k in layers]
            for row, n in enumerate(lengths):
                out.append(pool(np.stack([s[row, :n] for s in states]))[0])
        return out


def make_engine(name: str, paths: dict, threads: int):
    if name == "torch":
        return TorchEngine(paths["gguf"], threads)
    return OrtEngine(paths["exports"][name.split()[-1]], threads)


# --- stages ----------------------------------------------------------------------------------------

def one_engine(name: str, paths: dict, ids: list[list[int]], layers: list[int], batch: int,
               threads: int) -> dict:
    """Load one engine and read every text once (run in a fresh process for its peak memory)."""
    started = time.perf_counter()
    engine = make_engine(name, paths, threads)
    loaded = time.perf_counter()
    engine.read(ids, layers, batch)
    done = time.perf_counter()
    return {"load_s": loaded - started, "read_s": done - loaded}


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("engine", "Hidden-state extraction engine (onnxruntime vs torch)",
                             quick=quick, settings={**settings, "threads": threads})
    paths = None
    with report.part("prepare the model and its exports"):
        paths = benchlib.prepare(settings["model"], ("fp32", "int8"))
        report.data["prepare"] = paths
    if paths is None:
        return report.to_dict()
    from edgeemo.extract import steerable_layers

    texts = engine_texts(settings["texts"])
    engines = {}
    with report.part("load onnxruntime fp32"):
        engines["onnxruntime fp32"] = make_engine("onnxruntime fp32", paths, threads)
    if not engines:
        return report.to_dict()
    reader = engines["onnxruntime fp32"].reader
    layers = steerable_layers(reader.n_layer)
    ids = [reader.tokenize(t) for t in texts]            # llama.cpp's token ids, for every engine
    report.settings.update(n_texts=len(texts), layers=f"{layers[0]}-{layers[-1]}",
                           mean_tokens=round(float(np.mean([len(x) for x in ids])), 1))

    with report.part("interleaved timing"):
        for name in ENGINES[1:]:
            engines[name] = make_engine(name, paths, threads)
        report.settings["torch_attention"] = engines["torch"].attention
        pooled = {name: e.read(ids, layers, settings["batch"]) for name, e in engines.items()}
        for _ in range(settings["warmup"] - 1):
            for e in engines.values():
                e.read(ids, layers, settings["batch"])

        def timed(engine):
            started = time.perf_counter()
            engine.read(ids, layers, settings["batch"])
            return time.perf_counter() - started

        times = benchlib.interleaved({n: (lambda e=e: timed(e)) for n, e in engines.items()},
                                     settings["reps"], pause=0.5)
        med = {n: benchlib.median(t) for n, t in times.items()}
        for name in ENGINES:
            report.row(f"{name}: texts/s", len(ids) / med[name], "texts/s",
                       note=f"median of {len(times[name])} passes over {len(ids)} texts")
        for name in ENGINES[:2]:
            report.row(f"{name} speed-up over torch", benchlib.ratio(med["torch"], med[name]), "×",
                       aim="≥ 1.5" if name.endswith("fp32") else "", headline=True)
        a = np.stack(pooled["onnxruntime fp32"])
        b = np.stack(pooled["torch"])
        rel = float(np.abs(a - b).max() / np.abs(b).max())
        report.row("onnxruntime fp32 vs torch: max |Δ| / max |x|", rel, "",
                   note="pooled states; ~1e-5 means the same computation")
        report.data["pass_seconds"] = benchlib.rounded(times, 4)

    with report.part("int8 drift of the directions"):
        if "onnxruntime int8" not in engines:
            raise benchlib.SkipPart("the int8 engine did not load")
        drift(report, engines, settings)
    engines.clear()

    with report.part("peak memory, one fresh process per engine"):
        memory = {name: [] for name in ENGINES}
        for _ in range(settings["memory_reps"]):           # alternating: A, B, C, A, B, C, …
            for name in ENGINES:
                try:
                    memory[name].append(benchlib.isolated(
                        one_engine, name, paths, ids, layers, settings["batch"], threads,
                        env=benchlib.store_env(), timeout=settings["timeout"]))
                except benchlib.StageFailed as exc:
                    report.errors.append({"part": f"peak memory: {name}", "error": str(exc),
                                          "traceback": ""})
        read_s = {}
        for name, runs in memory.items():
            if not runs:
                continue
            peaks = [m["peak_mb"] for m in runs]
            read_s[name] = benchlib.median(m["value"]["read_s"] for m in runs)
            load_s = benchlib.median(m["value"]["load_s"] for m in runs)
            spread = f", range {min(peaks):.0f}–{max(peaks):.0f}" if len(runs) > 1 else ""
            report.row(f"{name}: peak memory", benchlib.median(peaks), "MB", headline=True,
                       note=f"median of {len(runs)} processes{spread}; load {load_s:.1f} s + "
                            f"read {read_s[name]:.1f} s")
        for name in ENGINES[:2]:
            if "torch" in read_s and name in read_s:
                report.row(f"{name} speed-up over torch (separate processes)",
                           benchlib.ratio(read_s["torch"], read_s[name]), "×",
                           note="first pass after loading, median over processes; "
                                "the interleaved ratio above is the primary")
        report.data["memory"] = benchlib.rounded(memory)
    return report.to_dict()


def drift(report: benchlib.Report, engines: dict, settings: dict) -> None:
    """Cosine between fp32 and int8 comprehension directions, per layer and emotion."""
    from edgeemo import analysis, extract

    texts = drift_texts(settings["drift_emotions"], settings["drift_texts_per_label"])
    dirs = {}
    for precision in ("fp32", "int8"):
        reader = engines[f"onnxruntime {precision}"].reader
        acts = extract.comprehension(reader, texts, batch_size=settings["batch"])
        dirs[precision] = analysis.directions(acts)
        if precision == "fp32":
            band = analysis.best_band(analysis.band_scores(acts), acts.layers)
            fp32_acts = acts
    names = list(dirs["fp32"])
    cos = np.stack([(analysis.unit(dirs["fp32"][e]) * analysis.unit(dirs["int8"][e])).sum(-1)
                    for e in names])                                   # (E, L)
    report.row("int8 vs fp32 direction cosine: min", float(cos.min()), "", aim="≥ 0.98",
               note=f"over {len(names)} emotions × {cos.shape[1]} layers")
    report.row("int8 vs fp32 direction cosine: median", float(np.median(cos)), "", aim="≥ 0.98")
    in_band = [i for i, k in enumerate(acts.layers) if band[0] <= k <= band[1]]
    report.row("int8 vs fp32 direction cosine in the steering band: min",
               float(cos[:, in_band].min()), "",
               note=f"hidden states {band[0]}-{band[1]}, the band the fp32 vectors would use; "
                    f"median {float(np.median(cos[:, in_band])):.3f}")
    # context: how much the fp32 directions themselves move between two halves of the texts
    # (the fp32 activations already read, split by odd and even text)
    halves = [analysis.directions(dataclasses.replace(
        fp32_acts, by_label={k: v[part::2] for k, v in fp32_acts.by_label.items()}))
        for part in (0, 1)]
    split = np.stack([(analysis.unit(halves[0][e]) * analysis.unit(halves[1][e])).sum(-1)
                      for e in names])
    report.row("fp32 split-half direction cosine: median", float(np.median(split)), "",
               note="fp32 directions from the odd vs the even texts of each label: the sampling "
                    "noise of a vector, for scale against the int8 drift")
    worst = np.unravel_index(cos.argmin(), cos.shape)
    report.data["drift"] = {"layers": acts.layers, "emotions": names,
                            "per_layer_min": benchlib.rounded(cos.min(0).tolist(), 5),
                            "per_layer_median": benchlib.rounded(np.median(cos, 0).tolist(), 5),
                            "worst": {"emotion": names[worst[0]],
                                      "hidden_state": acts.layers[worst[1]]},
                            "band": [int(band[0]), int(band[1])],
                            "split_half_median": round(float(np.median(split)), 5),
                            "texts": sum(len(v) for v in texts.values())}


if __name__ == "__main__":
    benchlib.main(run, __doc__)

"""Is a model steerable, and how? The library side of ``edgeemo check``.

    from edgeemo import check, models
    report = check.check(models.ensure("smollm2-135m-instruct"))
    report["control_vector"]["steerable"]       # True: llama.cpp applies a vector at every layer

What it measures, in seconds and without exporting anything:

* the model as llama.cpp loads it: architecture, n_layer, n_embd, parameter count;
* whether llama.cpp applies a control vector at each layer N = 1 .. n_layer-1: one short prompt is
  evaluated once with the vector off, then, for each layer, a random vector (norm sqrt(n_embd),
  i.e. about 1 per component) is set at that layer alone and only the last prompt token is
  evaluated again (the earlier tokens stay in the cache, unsteered). The change in its logits
  against the zero vector is the layer's effect; an architecture whose llama.cpp graph has no
  control-vector hook changes nothing, bit for bit (``_llama.layer_effects``; steering itself
  tests the middle layer once per architecture, ``steer.require_steerable``);
* ONNX parity, only if an export is already in the store (``check`` never exports): mean cosine
  between llama.cpp's final hidden state and the ONNX ``hidden_states.{n_layer}`` on the same
  tokens;
* the layers the model's vectors (the store's and the prebuilt ones) steer, from their metadata;
* whether transformers can load the architecture from GGUF (so edgeemo can export it) and the
  memory the export needs, estimated as :data:`EXPORT_MEMORY_FORMULA`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import _llama, export, models
from .errors import EdgeemoError, ModelFileError
from .reader import HiddenStateReader
from .steer import vector_dirs
from .vectors import ControlVector, recommended_strength

PARITY_TEXTS = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "She read the letter twice, folded it, and put it back in the drawer.",
)
# The export's peak (peak resident, whole command), a line through two measured points of the
# streaming export (benchmarks/SIZES.md): random-weight Llama-3.2 shapes, 1.24B parameters 4.3 GB,
# 3.21B parameters 5.3 GB. Weights are written one tensor at a time, so memory grows with the
# largest tensor (the token embedding) and the graph, not with the whole model; most of the rest
# is Python, torch and transformers. A rough guide, not a bound (small models need less).
EXPORT_MEMORY_FORMULA = "3.6 GB + 0.55 bytes x n_params"


def export_memory(n_params: int) -> int:
    """Bytes the ONNX export needs at its peak (see :data:`EXPORT_MEMORY_FORMULA`)."""
    return 3_600_000_000 + int(0.55 * int(n_params))


def load(model: models.Model, *, threads: int = 1, n_ctx: int = 64, embedding: bool = False):
    """A quiet llama.cpp model for checks (``_llama.load_quiet``); ModelFileError if llama.cpp
    cannot load it."""
    try:
        return _llama.load_quiet(model.path, threads=threads, n_ctx=n_ctx, embedding=embedding)
    except ValueError as exc:
        raise ModelFileError(f"llama.cpp cannot load {model.path.name} ({exc}); it may use an "
                             f"architecture this llama.cpp does not know") from None


# --- ONNX parity, from a cached export only ----------------------------------------------------

def parity(model: models.Model, export_dir: Path, *, threads: int = 1,
           texts=PARITY_TEXTS) -> float:
    """Mean cosine, over every token of ``texts``, between llama.cpp's final hidden state and the
    export's ``hidden_states.{n_layer}`` on the same token ids."""
    return parity_by_position(model, export_dir, threads=threads, texts=texts)["all"]


def parity_by_position(model: models.Model, export_dir: Path, *, threads: int = 1,
                       texts=PARITY_TEXTS) -> dict[str, float]:
    """:func:`parity` over every token ("all"), at the first position alone ("first") and after
    it ("after_first": the positions extraction pools, which never pools position 0, the
    attention sink). On Qwen2.5-Coder-1.5B (Q4_K_M) the first position alone disagrees (cosine
    0.63; every later position agrees to 0.9996). The export is not the one that strays there:
    it matches transformers on torch at every position to 1e-7. Probably llama.cpp's 8-bit
    activations, quantized in blocks of 256 values for Q4_K weights, lose the small values of a
    sink token's outsized ones."""
    llm = load(model, threads=threads, n_ctx=256, embedding=True)
    reader = HiddenStateReader(export_dir, threads=threads)
    cosines = []
    for text in texts:
        ids = reader.tokenize(text)
        if ids != _llama.tokenize(llm, text, bos=True):
            raise EdgeemoError(f"the export of {model.name} tokenizes differently from llama.cpp")
        ours = next(reader.read([ids], [reader.n_layer]))[0]                  # (T, d)
        theirs = _llama.hidden_states(llm, text)                              # (T, d)
        cosines.append((ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1)
                                                  * np.linalg.norm(theirs, axis=1) + 1e-12))
    _llama.close(llm)
    return {"all": float(np.mean(np.concatenate(cosines))),
            "first": float(np.mean([c[0] for c in cosines])),
            "after_first": float(np.mean(np.concatenate([c[1:] for c in cosines])))}


# --- vectors already made ------------------------------------------------------------------------

def vector_bands(model: models.Model, arch: str, n_embd: int, n_layer: int) -> list[dict]:
    """Per directory of vectors for this model (store, prebuilt): count, layers, methods, fit."""
    found = []
    for directory in vector_dirs(model):
        files = sorted(directory.glob("*.gguf")) if directory.is_dir() else []
        if not files:
            continue
        layers, methods, strengths, unfit = set(), set(), [], 0
        for path in files:
            vec = ControlVector.from_gguf(path)
            layers |= set(vec.layers)
            methods.add(str(vec.metadata.get("method", "unknown")))
            strength = recommended_strength(vec)
            if strength is not None:
                strengths.append(strength)
            try:
                vec.check_compatible(arch, n_embd, n_layer, model.name)
            except EdgeemoError:
                unfit += 1
        found.append({"directory": str(directory), "vectors": len(files),
                      "layers": [min(layers), max(layers)],
                      "hidden_states": [min(layers) + 1, max(layers) + 1],
                      "depth": [round((min(layers) + 1) / n_layer, 2),
                                round((max(layers) + 1) / n_layer, 2)],
                      "methods": sorted(methods),
                      "strengths": [min(strengths), max(strengths)] if strengths else None,
                      "incompatible": unfit})
    return found


# --- the whole check -----------------------------------------------------------------------------

def exportable_architectures() -> list[str] | None:
    """The architectures transformers can load from GGUF; None without the export extra."""
    try:
        return export.supported_architectures()
    except ImportError:
        return None


def check(model: models.Model, *, threads: int = 1, prompt: str = _llama.PROBE_PROMPT,
          seed: int = 0, parity_check: bool = True) -> dict:
    """Everything ``edgeemo check`` reports, as one dict (see the module docstring)."""
    started = time.perf_counter()
    # importing transformers takes seconds: do it while llama.cpp works (which releases the GIL)
    pool = ThreadPoolExecutor(max_workers=1)
    exportable = pool.submit(exportable_architectures)
    pool.shutdown(wait=False)
    report: dict = {"model": model.name, "path": str(model.path)}
    llm = load(model, threads=threads)
    arch, n_embd, n_layer = _llama.model_shape(llm)
    n_params = _llama.n_params(llm)
    report.update(architecture=arch, n_layer=n_layer, n_embd=n_embd, n_params=n_params,
                  file_bytes=model.path.stat().st_size)

    tested = time.perf_counter()
    effects = _llama.layer_effects(llm, prompt=prompt, seed=seed)
    _llama.close(llm)
    tested = time.perf_counter() - tested
    applied = [n for n, e in effects.items() if e > _llama.MIN_CHANGE]
    report["control_vector"] = {
        "prompt": prompt,
        "layers_tested": [1, n_layer - 1],
        "logit_change": {str(n): round(e, 4) for n, e in effects.items()},
        "applied_layers": applied,
        "ignored_layers": [n for n in effects if n not in applied],
        "steerable": len(applied) == len(effects) > 0,
        "seconds": round(tested, 2),
    }

    cached = [p.name for p in export.exports(model)]
    report["parity"] = None
    if parity_check and cached:
        precision = "fp32" if "fp32" in cached else cached[0]
        measured = time.perf_counter()
        cosines = parity_by_position(model, export.cached_export(model, precision),
                                     threads=threads)
        report["parity"] = {"precision": precision, "mean_cosine": round(cosines["all"], 5),
                            "first_position": round(cosines["first"], 5),
                            "after_first": round(cosines["after_first"], 5),
                            "seconds": round(time.perf_counter() - measured, 2)}

    report["vectors"] = vector_bands(model, arch, n_embd, n_layer)
    supported = exportable.result()
    report["export"] = {"supported_by_transformers": None if supported is None
                        else arch in supported,
                        "cached": cached,
                        "memory_bytes": export_memory(n_params),
                        "memory_formula": EXPORT_MEMORY_FORMULA}
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def summary(report: dict) -> list[str]:
    """The report as a few lines for people."""
    cv = report["control_vector"]
    ex = report["export"]
    lines = [f"{report['model']}: {report['architecture']}, {report['n_layer']} layers, "
             f"n_embd {report['n_embd']}, {report['n_params'] / 1e6:.0f}M parameters"]
    if cv["steerable"]:
        largest = max(float(v) for v in cv["logit_change"].values())
        lines.append(f"control vectors: applied by llama.cpp at every layer "
                     f"1-{report['n_layer'] - 1} (largest logit change {largest:.3g})")
    elif cv["applied_layers"]:
        lines.append(f"control vectors: applied at layers {_ranges(cv['applied_layers'])}, "
                     f"ignored at {_ranges(cv['ignored_layers'])}")
    else:
        lines.append("control vectors: IGNORED by llama.cpp for this architecture (not steerable)")
    if report["parity"]:
        par = report["parity"]
        lines.append(f"ONNX parity ({par['precision']} export): mean cosine "
                     f"{par['mean_cosine']:.4f}; after the first position (what extraction "
                     f"pools) {par['after_first']:.4f}, the first alone {par['first_position']:.3f}")
    else:
        lines.append("ONNX parity: no export in the store (`edgeemo export-model` makes one)")
    for v in report["vectors"]:
        lines.append(f"vectors: {v['vectors']} in {v['directory']}: llama.cpp layers "
                     f"{v['layers'][0]}-{v['layers'][1]} (depth {v['depth'][0]:.2f}-"
                     f"{v['depth'][1]:.2f}), {', '.join(v['methods'])}"
                     + (f", {v['incompatible']} made for another model"
                        if v["incompatible"] else ""))
    if not report["vectors"]:
        lines.append("vectors: none yet (`edgeemo export-vector` makes them)")
    support = {True: "yes", False: "no (transformers cannot load this architecture from GGUF)",
               None: "unknown (the export extra is not installed)"}[ex["supported_by_transformers"]]
    lines.append(f"export to ONNX: {support}; needs about {ex['memory_bytes'] / 1e9:.1f} GB "
                 f"({ex['memory_formula']})")
    return lines


def _ranges(layers: list[int]) -> str:
    return f"{min(layers)}-{max(layers)}" if layers else "none"

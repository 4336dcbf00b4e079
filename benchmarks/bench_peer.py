"""A peer: the same emotion directions extracted with repeng, against edgeemo's.

    python benchmarks/bench_peer.py                     # 3 emotions, all their vignettes
    python benchmarks/bench_peer.py --quick             # 3 emotions, 3 pairs each
    python benchmarks/bench_peer.py --no-install        # do not pip-install repeng if missing

repeng (https://github.com/vgel/repeng) is only a benchmark peer, never a dependency of edgeemo.
If it is not importable, this script installs it into the running environment with
``pip install --no-deps repeng`` (its metadata pins numpy<2, which would downgrade numpy) plus
scikit-learn, its one missing runtime dependency here; if that fails the part is skipped with the
reason. repeng 0.4.0 annotates with ``np.float_``, gone in numpy 2, so when numpy has no
``float_`` we alias it to ``np.float64`` before the import (recorded in the results).

Both sides use the same model (repeng: transformers ``AutoModelForCausalLM`` loaded from the same
GGUF in float32, wrapped in repeng's ``ControlModel``; edgeemo: its fp32 ONNX export) and the same
texts: for each emotion, pairs (emotion vignette, neutral vignette). repeng trains with
``ControlVector.train(method="pca_center")`` (its methods are pca_diff, pca_center and umap; it has
no plain mean difference); edgeemo takes mean(emotion) − mean(neutral) of pooled states. Each side
runs in its own fresh process: time (load and extraction) and peak memory.

Layers: repeng's layer i reads ``hidden_states[i + 1]`` (``batched_get_hiddens`` uses
``layer + 1``), which is llama.cpp's ``direction.i`` and edgeemo's hidden-state index i + 1
(``vectors.hidden_state_index``). We align on that. repeng pools the last token; edgeemo pools the
mean over content tokens, so we also compare against edgeemo with last-token pooling. PCA has no
sign; repeng picks the one under which emotion texts project higher, but we report |cos| as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time

import numpy as np

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "emotions": "afraid,happy,angry", "pairs": None,
        "method": "pca_center", "repeng": "repeng==0.4.0", "install": True, "timeout": 1800}
QUICK = {"pairs": 3, "timeout": 600}


def pair_texts(emotion_names: list[str], pairs: int | None) -> dict[str, list[tuple[str, str]]]:
    """emotion -> [(emotion text, neutral text)], neutral texts taken in order."""
    from edgeemo import stimuli

    texts = stimuli.comprehension(emotion_names)
    neutral = texts["neutral"]
    out = {}
    for name in emotion_names:
        chosen = texts[name][:pairs] if pairs else texts[name]
        out[name] = [(t, neutral[i % len(neutral)]) for i, t in enumerate(chosen)]
    return out


# --- repeng ---------------------------------------------------------------------------------------

def import_repeng():
    """Import repeng, aliasing np.float_ for numpy 2 if needed. Returns (module, shim or None)."""
    shim = None
    if not hasattr(np, "float_"):
        np.float_ = np.float64
        shim = "np.float_ = np.float64 (repeng 0.4.0 annotations use a numpy<2 name)"
    return importlib.import_module("repeng"), shim


def ensure_repeng(requirement: str, install: bool) -> dict:
    """Make repeng importable (installing it if allowed); returns what was done."""
    done = {"installed": []}
    probe = [sys.executable, "-c", "import sklearn"]
    have_sklearn = subprocess.run(probe, capture_output=True).returncode == 0
    have_repeng = importlib.util.find_spec("repeng") is not None
    if not (have_sklearn and have_repeng):
        if not install:
            missing = [n for n, ok in (("repeng", have_repeng), ("scikit-learn", have_sklearn))
                       if not ok]
            raise benchlib.SkipPart(f"{', '.join(missing)} not installed and --no-install given")
        commands = []
        if not have_repeng:
            commands.append(["--no-deps", requirement])
        if not have_sklearn:
            commands.append(["scikit-learn"])
        for args in commands:
            benchlib.say(f"installing {' '.join(args)} for the peer benchmark")
            result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                                     "--disable-pip-version-check", *args],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise benchlib.SkipPart(f"could not install {' '.join(args)}: {last}")
            done["installed"].append(" ".join(args))
        importlib.invalidate_caches()
    check = subprocess.run([sys.executable, "-c",
                            "import numpy as np\n"
                            "if not hasattr(np, 'float_'): np.float_ = np.float64\n"
                            "import repeng, importlib.metadata as m; print(m.version('repeng'))"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["import failed"])[-1]
        raise benchlib.SkipPart(f"repeng cannot be imported: {last}")
    done["version"] = check.stdout.strip()
    return done


def load_for_repeng(gguf_path: str, threads: int):
    """repeng, whether numpy needed the ``float_`` shim, and the GGUF loaded by transformers in
    float32 with its tokenizer (padding with EOS when it has no pad token), as repeng wants."""
    import warnings
    from pathlib import Path

    import torch
    import transformers

    repeng, shim = import_repeng()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    path = Path(gguf_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return repeng, shim, model, tokenizer


def repeng_directions(gguf_path: str, pairs: dict, layer_ids: list[int], method: str,
                      threads: int) -> dict:
    """Train one repeng ControlVector per emotion (run in a fresh process)."""
    started = time.perf_counter()
    repeng, shim, model, tokenizer = load_for_repeng(gguf_path, threads)
    control = repeng.ControlModel(model, layer_ids)
    loaded = time.perf_counter()
    out = {}
    for emotion, items in pairs.items():
        dataset = [repeng.DatasetEntry(positive=a, negative=b) for a, b in items]
        vector = repeng.ControlVector.train(control, tokenizer, dataset, method=method,
                                            hidden_layers=layer_ids, batch_size=8)
        out[emotion] = {i: np.asarray(vector.directions[i], dtype=np.float32) for i in layer_ids}
    done = time.perf_counter()
    return {"directions": out, "load_s": loaded - started, "extract_s": done - loaded,
            "shim": shim, "padding_side": tokenizer.padding_side,
            "add_bos": bool(tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id)}


# --- edgeemo --------------------------------------------------------------------------------------

def edgeemo_directions(export_dir: str, pairs: dict, layers: list[int], threads: int) -> dict:
    """Emotion mean − neutral mean on the same texts, mean and last-token pooling (fresh process)."""
    from edgeemo import analysis, extract
    from edgeemo.reader import HiddenStateReader

    started = time.perf_counter()
    reader = HiddenStateReader(export_dir, threads=threads)
    loaded = time.perf_counter()
    texts = {e: [a for a, _ in items] for e, items in pairs.items()}
    texts["neutral"] = list(dict.fromkeys(b for items in pairs.values() for _, b in items))
    mean = analysis.directions(extract.comprehension(reader, texts, layers=layers))
    done = time.perf_counter()
    last = analysis.directions(extract.comprehension(reader, texts, layers=layers, pooling="last"))
    return {"mean": mean, "last": last, "load_s": loaded - started, "extract_s": done - loaded}


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None,
        install: bool | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    if install is not None:
        settings["install"] = install
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("peer", "A peer: repeng's directions against edgeemo's",
                             quick=quick, settings={**settings, "threads": threads})
    paths = setup = None
    with report.part("prepare the model and its export"):
        paths = benchlib.prepare(settings["model"], ("fp32",))
    with report.part("make repeng importable"):
        setup = ensure_repeng(settings["repeng"], settings["install"])
        report.settings["repeng_version"] = setup["version"]
        if setup["installed"]:
            report.note(f"installed for this benchmark: {'; '.join(setup['installed'])}")
    if not (paths and setup):
        return report.to_dict()

    from edgeemo import models
    from edgeemo.extract import steerable_layers
    from edgeemo.vectors import direction_layer

    n_layer = models.resolve(settings["model"]).card.n_layer
    layers = steerable_layers(n_layer)                           # hidden-state indices
    repeng_ids = [direction_layer(k, n_layer=n_layer) for k in layers]   # repeng i = hidden i + 1
    names = settings["emotions"].split(",")
    pairs = pair_texts(names, settings["pairs"])
    n_pairs = sum(len(v) for v in pairs.values())
    report.settings.update(n_pairs=n_pairs, layers=f"hidden states {layers[0]}-{layers[-1]}")

    stages = {}
    with report.part("edgeemo directions"):
        stages["edgeemo"] = benchlib.isolated(edgeemo_directions, paths["exports"]["fp32"], pairs,
                                              layers, threads, env=benchlib.store_env(),
                                              timeout=settings["timeout"])
    with report.part("repeng directions"):
        stages["repeng"] = benchlib.isolated(repeng_directions, paths["gguf"], pairs, repeng_ids,
                                             settings["method"], threads,
                                             timeout=settings["timeout"])
        if stages["repeng"]["value"]["shim"]:
            report.note(f"compatibility shim: {stages['repeng']['value']['shim']}")
    for side, stage in stages.items():
        v = stage["value"]
        report.row(f"{side}: time", stage["wall"], "s", headline=True,
                   note=f"load {v['load_s']:.1f} s + extract {v['extract_s']:.1f} s; {n_pairs} pairs")
        report.row(f"{side}: peak memory", stage["peak_mb"], "MB")
    if len(stages) < 2:
        return report.to_dict()

    with report.part("agreement"):
        agreement(report, stages, names, layers, repeng_ids, n_layer)
    return report.to_dict()


def agreement(report, stages, names, layers, repeng_ids, n_layer) -> None:
    """Cosine of repeng's direction with edgeemo's, per emotion and layer; middle-third summary."""
    ours = stages["edgeemo"]["value"]
    theirs = stages["repeng"]["value"]["directions"]
    middle = [i for i, k in enumerate(layers) if n_layer / 3 <= k <= 2 * n_layer / 3]
    per = {}
    for pooling in ("mean", "last"):
        cos = np.array([[float(np.dot(ours[pooling][e][j], theirs[e][i])
                               / (np.linalg.norm(ours[pooling][e][j]) * np.linalg.norm(theirs[e][i])
                                  + 1e-12))
                         for j, i in enumerate(repeng_ids)] for e in names])       # (E, L)
        per[pooling] = cos
        mid = cos[:, middle]
        report.row(f"|cos| repeng vs edgeemo ({pooling} pooling), middle layers: median",
                   float(np.median(np.abs(mid))), "", headline=True,
                   note=f"hidden states {layers[middle[0]]}-{layers[middle[-1]]}, "
                        f"{len(names)} emotions; signed median {float(np.median(mid)):+.3f}")
        report.row(f"|cos| repeng vs edgeemo ({pooling} pooling), middle layers: min",
                   float(np.abs(mid).min()), "")
    report.note("repeng pools the last token, edgeemo the mean over content tokens; the "
                "last-token row compares like with like. PCA directions have no intrinsic sign; "
                "|cos| is reported, the signed median shows whether repeng's sign rule agreed.")
    report.data["cosine"] = {"hidden_states": layers, "repeng_layers": repeng_ids,
                             "emotions": names,
                             **{p: benchlib.rounded(c.tolist(), 4) for p, c in per.items()}}
    report.data["repeng_tokenizer"] = {k: stages["repeng"]["value"][k]
                                       for k in ("padding_side", "add_bos")}


if __name__ == "__main__":
    if "--no-install" in sys.argv:
        sys.argv.remove("--no-install")
        sys.argv += ["--set", "install=false"]
    benchlib.main(run, __doc__)

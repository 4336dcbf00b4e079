"""Steering quality against the peers: edgeemo's vectors, llama.cpp's cvector-generator and repeng,
made for the same model and judged the same way.

    python benchmarks/run.py --only peers_quality             # the full run: hours (see README)
    python benchmarks/bench_peers_quality.py --threads 1      # the same, on its own
    python benchmarks/bench_peers_quality.py --quick --threads 1
    python benchmarks/bench_peers_quality.py --set model=qwen2.5-coder-0.5b-instruct

For one model (setting ``model``; the default model, or qwen2.5-coder-0.5b-instruct /
qwen2.5-coder-1.5b-instruct), vectors for the emotions (setting ``emotions``, default all 20) are
made four ways, each in a fresh process (time and peak memory):

* ``edgeemo``: the shipped recipe, dialogue against the grand mean of the emotions. The steps of
  ``edgeemo.make.make_vectors(model, names, method="dialogue", baseline="grand")``
  (``extract.dialogue`` over all 30 requests × 20 emotions and neutral of
  ``edgeemo/data/dialogue.jsonl``, ``make.vectors_from(baseline="grand")``,
  ``make.prebuilt_strength``, ``to_gguf``), run here so that the ONNX reader gets ``--threads``;
  on a fresh store (nothing cached) that holds the GGUF and its fp32 export.
* ``cvector-tone``: llama.cpp's ``llama-cvector-generator`` (built from the llama.cpp source in
  the sdist of the installed llama-cpp-python, see :func:`ensure_generator`), run once per
  emotion with its defaults (method pca, 1000 PCA iterations in batches of 100, the model's
  training context) and ``-t THREADS``, fed the tone data: for each of the 30 requests one line
  in ``--positive-file``, the request in the model's chat template (user turn, then the
  assistant header) followed by the emotion's reply, and the same line with the neutral reply
  in ``--negative-file``. Newlines and backslashes are escaped (``\\n``, ``\\\\``), as the tool
  unescapes each line; a BOS written by the template is dropped when the tool adds its own.
  The tool's ``--completions-file`` is not given: this version of the tool reads only the
  positive and negative files (``prepare_entries``).
* ``cvector-own``: the same tool fed its own example pattern. Its positive.txt / negative.txt
  hold 4 chat lines (Llama 3 template) whose system prompts are "Act like a person who is
  extremely happy", "You are in a very good mood", "You are the happiest person" (and the same
  with "sad"), with the user prompts "Who are you?", "Hello", "Hi", "What are you feeling?" and a
  short hand-written reply in that mood. Here, per emotion E, 4 lines in the model's own chat
  template with the same user prompts and the system prompts "Act like a person who is extremely
  E", "You are in a very E mood", "You are a very E person", "You feel extremely E" (positive)
  against "Act like a person who is emotionally neutral", "You are in a neutral mood", "You are
  an emotionally neutral person", "You feel neutral" (negative). No reply is written (there is
  no hand-written reply for the 20 emotions): each line ends with the assistant header.
* ``repeng``: repeng 0.4.0 (``ControlVector.train`` with its defaults: method pca_diff, every
  layer 1..n-1, batch size 32) on the transformers model loaded from the same GGUF (float32),
  with the same pairs as cvector-tone, written by repeng's ``export_gguf`` (llama.cpp's
  control-vector format: ``controlvector.model_hint``, ``direction.N`` tensors).

cvector-generator's PCA starts from a random vector seeded by the clock, and the sign of its
result is arbitrary: its source says so ("The output vector is randomly inverted", pca.hpp, with
a link to the fix: orient each layer by the mean difference). Used raw, a random share of its
layers pushes away from the emotion. The cvector sets are therefore oriented per layer by the
tool's own ``--method mean`` output on the same files (the mean of the same difference rows):
a layer whose PCA direction has a negative dot product with it is flipped. The raw files are
kept and can be judged too (``--set sets=...,cvector-tone-raw,cvector-own-raw``); the share of
flipped layers is reported.

Every set is then judged the same way, as ``edgeemo evaluate`` does it, with the LLM judge
(``judges=["llm"]``, the on-task check on, 60 tokens, temperature 0.7, only the reply steered):

1. a strength sweep on calibration requests (``sweep_requests``, margins from
   ``sweep_margins``; ``sweep_emotions``, seed ``sweep_seed``), and one strength per set from
   ``calibration.model_strength(result, "llm")``: the strengths at least 90% on task and 95%
   coherent form the window, the best LLM success wins. Strength units differ: edgeemo's files
   carry a calibrated strength, a fraction of each layer's residual norm (``edgeemo_strengths``;
   by default the grid ``edgeemo calibrate`` sweeps, 0.03-0.16, or for the Qwen models the grid
   their shipped strengths were chosen on, 0.08-0.32). A foreign file's number is llama.cpp's
   plain scale on its tensors (``foreign_strengths``). Both peers write a unit direction at
   every layer 1..n-1, edgeemo 5 layers of norm 3-6, where the residual norms are about 150-200
   (SmolLM2-135M), 18-20 (Qwen2.5-0.5B) and 38-43 (Qwen2.5-1.5B). On the default model, by hand
   (greedy, one request, afraid, both peers): scale 1-2 changes nothing, 4-8 changes the
   wording and tone, 16 breaks the text; so the grid is 2,4,6,8,12 there, and the same grid
   times the ratio of residual norms for the Qwen models (0.25-1.5 and 0.5-3; not tried by
   hand). edgeemo takes strengths up to 1 (a whole residual norm), so a foreign set whose grid
   goes beyond 1 is judged through copies of its files with the tensors multiplied by a power
   of two F (strength s on a copy is scale s × F on the original); reported strengths are
   llama.cpp scales on the tool's own file. An empty window is recorded, and the set is then
   judged at its smallest swept strength, flagged.
2. each set at its strength on the held-out requests (``held_out``: the 12 requests calibration
   never sees), seeds ``seeds``, margins from the calibration requests (``margins``): what
   ``edgeemo evaluate --strengths recommended --seeds 0,1,2 --judges llm`` does with the
   vectors at that strength. The rule breaks a tie toward the weaker strength, and a sweep cell
   is only (emotions × requests) replies, so each set is also judged the same way at the
   strongest strength of its window when that differs (setting ``strongest``): the most it can
   be pushed while staying on task, so that no set is compared only at a needlessly weak one.

Reported per set: success (moved beyond the judge's margin, on task and coherent),
identification (among the emotions' replies to one request, the target's is the one the judge
rates highest for it), on task and coherent, each with its 95% interval over requests, beside
the chance level (the unsteered second reply, judged as if steered; 1/emotions for
identification; the unsteered on-task rate) and the judge's ceiling, computed from the stored
scores of ``records/judge-ceiling-llm.json`` (the same judge on the 600 hand-written tone
replies of dialogue.jsonl): the share of hand-written replies that move beyond this run's
margin, identification among the evaluated emotions, and the judge's own on-task verdict on
them. The full evaluate results, every reply with its scores, go to ``records`` (default
``records/peers-<model>/<set>/``, none in the quick run; results.json keeps their summaries)
and, with the vectors, to ``workdir``
(a new temp directory unless set; a result found there is reused, so an interrupted run can
go on; the time and memory of making a set are kept beside it, in made.json). The quick run
(2 emotions, 2 requests, 1 strength, 1 seed, 24 tokens) means nothing; it skips the generator
unless it is already built, and prints an estimate of the full run's time from its per-reply
times.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import benchlib

SETS = ("edgeemo", "cvector-tone", "cvector-own", "repeng")
EXTRA_SETS = ("cvector-tone-raw", "cvector-own-raw")
LABELS = {"edgeemo": "edgeemo (dialogue − grand mean)",
          "cvector-tone": "llama.cpp cvector-generator, tone pairs",
          "cvector-own": "llama.cpp cvector-generator, its own prompt pattern",
          "repeng": "repeng, tone pairs",
          "cvector-tone-raw": "cvector-generator, tone pairs, not oriented",
          "cvector-own-raw": "cvector-generator, own pattern, not oriented"}
# the sample of emotions scripts/apply_model_strength.py sweeps (one strength per model)
SWEEP_EMOTIONS = "afraid,angry,happy,sad,calm,proud,nervous,loving,hopeful,gloomy"
# edgeemo's strength grid per model: `edgeemo calibrate`'s for the default model, the sweep the
# shipped Qwen strengths were chosen on (records/sweep-qwen2.5-coder-*) for those
EDGEEMO_GRIDS = {"qwen2.5-coder-0.5b-instruct": "0.08,0.12,0.16,0.24,0.32",
                 "qwen2.5-coder-1.5b-instruct": "0.08,0.12,0.16,0.24,0.32"}
EDGEEMO_GRID = "0.03,0.05,0.08,0.12,0.16"
# llama.cpp scales for the peers' unit directions (see the module doc): tried by hand on the
# default model, scaled by the residual norms of the middle layers for the Qwen models
FOREIGN_GRIDS = {"qwen2.5-coder-0.5b-instruct": "0.25,0.5,0.75,1,1.5",
                 "qwen2.5-coder-1.5b-instruct": "0.5,1,1.5,2,3"}
FOREIGN_GRID = "2,4,6,8,12"

FULL = {"model": benchlib.DEFAULT_MODEL, "emotions": "all",
        "sets": ",".join(SETS), "sweep_emotions": SWEEP_EMOTIONS,
        "sweep_requests": "r05,r08,r10,r14", "sweep_margins": "r16,r17,r18,r20", "sweep_seed": 0,
        "edgeemo_strengths": "auto", "foreign_strengths": "auto",
        "held_out": "held-out", "margins": "calibration", "seeds": "0,1,2", "tokens": 60,
        "strongest": True, "judge_model": None, "build": True, "install": True,
        "repeng": "repeng==0.4.0", "workdir": None, "records": "records/peers-{model}",
        "timeout": None}
QUICK = {"emotions": "afraid,happy", "sweep_requests": "r05,r08", "sweep_margins": "judged",
         "edgeemo_strengths": "0.08", "foreign_strengths": "6", "held_out": 2,
         "margins": "judged", "seeds": "0", "tokens": 24, "strongest": False, "build": False,
         "records": None, "timeout": 1800}

TOOLS = Path(os.environ.get("EDGEEMO_BENCH_TOOLS") or Path.home() / ".cache" / "edgeemo-bench")
GENERATOR = "llama-cvector-generator"
CEILING = benchlib.ROOT / "records" / "judge-ceiling-llm.json"

# cvector-generator's own example (tools/cvector-generator/positive.txt, negative.txt): three
# system prompts, four user prompts; "happy"/"sad" replaced by the emotion / by neutral
OWN_USER = ("Who are you?", "Hello", "Hi", "What are you feeling?")
OWN_POSITIVE = ("Act like a person who is extremely {e}", "You are in a very {e} mood",
                "You are a very {e} person", "You feel extremely {e}")
OWN_NEGATIVE = ("Act like a person who is emotionally neutral", "You are in a neutral mood",
                "You are an emotionally neutral person", "You feel neutral")


# --- the inputs both peers read -------------------------------------------------------------------

class ChatText:
    """The model's chat template as text (what chatformat.prompt_ids tokenizes), from the GGUF."""

    def __init__(self, gguf: str):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from edgeemo._llama import token_text

        self.llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        # the BOS a template writes is dropped when the tokenizer adds one itself (as both
        # tools do, like llama.cpp, when the model asks for it)
        self.bos = token_text(self.llm, self.llm.token_bos()) if self.llm._model.add_bos_token() \
            else ""
        self.formatter = Jinja2ChatFormatter(template, eos_token=token_text(
            self.llm, self.llm.token_eos()), bos_token=token_text(self.llm, self.llm.token_bos())) \
            if template else None

    def __call__(self, messages: list[dict]) -> str:
        """The conversation, ready for the assistant's reply; without a leading BOS (each tool
        adds the BOS itself when the model asks for one)."""
        if self.formatter is None:
            from edgeemo.chatformat import transcript

            return transcript(messages)
        text = self.formatter(messages=messages).prompt
        return text[len(self.bos):] if self.bos and text.startswith(self.bos) else text


def tone_pairs(gguf: str, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """emotion -> [(chat turn + emotional reply, chat turn + neutral reply)], one per request of
    dialogue.jsonl, in file order."""
    from edgeemo import stimuli

    chat = ChatText(gguf)
    rows = stimuli.dialogue()
    text = {(r["request"], r["emotion"]): r["text"] for r in rows}
    requests = list(dict.fromkeys(r["request"] for r in rows))
    turn = {q: chat([{"role": "user", "content": q}]) for q in requests}
    joiner = "" if chat.formatter else " "
    return {e: [(turn[q] + joiner + text[q, e], turn[q] + joiner + text[q, "neutral"])
                for q in requests if (q, e) in text] for e in names}


def own_pairs(gguf: str, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """emotion -> 4 (positive, negative) lines following cvector-generator's example files."""
    chat = ChatText(gguf)
    out = {}
    for e in names:
        out[e] = [(chat([{"role": "system", "content": p.format(e=e)},
                         {"role": "user", "content": u}]),
                   chat([{"role": "system", "content": n}, {"role": "user", "content": u}]))
                  for p, n, u in zip(OWN_POSITIVE, OWN_NEGATIVE, OWN_USER)]
    return out


def escape_line(text: str) -> str:
    """One prompt per line, as cvector-generator reads it (string_process_escapes undoes this)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


# --- making the vectors (each in a fresh process) -------------------------------------------------

def make_edgeemo(model_name: str, names: list[str], out_dir: str, threads: int) -> dict:
    """edgeemo's shipped recipe: what make.make_vectors(method="dialogue", baseline="grand")
    does, with the reader on ``threads`` threads."""
    from edgeemo import export, extract, make, models, stimuli
    from edgeemo.reader import HiddenStateReader

    t0 = time.perf_counter()
    model = models.ensure(model_name)
    reader = HiddenStateReader(export.export_model(model), threads=threads)
    t1 = time.perf_counter()
    records = stimuli.dialogue()
    acts = extract.dialogue(reader, records)
    t2 = time.perf_counter()
    vecs = make.vectors_from(acts, names, baseline="grand")
    out = Path(out_dir)
    for name, vec in vecs.items():
        make.prebuilt_strength(model, vec).to_gguf(out / f"{name}.gguf")
    t3 = time.perf_counter()
    return {"steps": {"load": t1 - t0, "read": t2 - t1, "vectors": t3 - t2},
            "texts": len(records), "vectors": len(vecs)}


def run_generator(binary: str, gguf: str, pairs: dict, out_dir: str, threads: int) -> dict:
    """cvector-generator once per emotion with its defaults (method pca), then with
    --method mean on the same files for the orientation; writes raw/, mean/ and the oriented
    <emotion>.gguf. Peak memory of the tool: the largest child's ru_maxrss."""
    import resource

    out = Path(out_dir)
    for sub in ("inputs", "raw", "mean", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    seconds = {"pca": 0.0, "mean": 0.0}
    flips, per_emotion = {}, {}
    for emotion, items in pairs.items():
        pos = out / "inputs" / f"{emotion}.positive.txt"
        neg = out / "inputs" / f"{emotion}.negative.txt"
        pos.write_text("".join(escape_line(p) + "\n" for p, _ in items))
        neg.write_text("".join(escape_line(n) + "\n" for _, n in items))
        for method in ("pca", "mean"):
            target = out / ("raw" if method == "pca" else "mean") / f"{emotion}.gguf"
            command = [binary, "-m", gguf, "--positive-file", str(pos), "--negative-file",
                       str(neg), "-o", str(target), "-t", str(threads)]
            if method == "mean":
                command += ["--method", "mean"]
            t0 = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            took = time.perf_counter() - t0
            (out / "logs" / f"{emotion}.{method}.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0 or not target.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"{GENERATOR} failed on {emotion} ({method}, exit "
                                   f"{proc.returncode}): {' | '.join(tail)}")
            seconds[method] += took
            per_emotion.setdefault(emotion, {})[method] = took
        flips[emotion] = orient(out / "raw" / f"{emotion}.gguf", out / "mean" / f"{emotion}.gguf",
                                out / f"{emotion}.gguf")
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "per_emotion": per_emotion, "flipped_layers": flips,
            "tool_peak_mb": round(child_mb, 1), "pairs": {e: len(v) for e, v in pairs.items()}}


def orient(raw: Path, mean: Path, target: Path) -> list[int]:
    """Write ``raw`` with each layer's sign set so it agrees with ``mean`` (positive dot
    product); return the layers flipped."""
    import numpy as np

    from edgeemo.vectors import ControlVector

    a, b = ControlVector.from_gguf(raw), ControlVector.from_gguf(mean)
    flipped = [layer for layer, d in a.directions.items()
               if float(np.dot(d, b.directions[layer])) < 0]
    write_foreign(target, a.model_hint,
                  {k: (-d if k in flipped else d) for k, d in a.directions.items()})
    return flipped


def write_foreign(path: Path, model_hint: str, directions: dict) -> None:
    """A control vector in llama.cpp's format, as its tools write it (no edgeemo metadata)."""
    from edgeemo import vectorfile

    vectorfile.write(path, model_hint or "", directions, {})


def make_repeng(gguf_path: str, pairs: dict, out_dir: str, threads: int) -> dict:
    """repeng's ControlVector.train with its defaults, one per emotion, exported with
    export_gguf (run in a fresh process)."""
    os.environ.setdefault("TQDM_DISABLE", "1")       # repeng's progress bars, per batch and layer
    from bench_peer import load_for_repeng

    t0 = time.perf_counter()
    repeng, shim, model, tokenizer = load_for_repeng(gguf_path, threads)
    t1 = time.perf_counter()
    layers = None
    for emotion, items in pairs.items():
        dataset = [repeng.DatasetEntry(positive=a, negative=b) for a, b in items]
        vector = repeng.ControlVector.train(model, tokenizer, dataset)
        vector.export_gguf(str(Path(out_dir) / f"{emotion}.gguf"))
        layers = sorted(vector.directions)
    t2 = time.perf_counter()
    return {"steps": {"load": t1 - t0, "train and export": t2 - t1}, "shim": shim,
            "layers": [layers[0], layers[-1]] if layers else None,
            "padding_side": tokenizer.padding_side}


# --- llama.cpp's cvector-generator, built once ----------------------------------------------------

def generator_binary(version: str) -> Path:
    return TOOLS / f"build-{version}" / "bin" / GENERATOR


def cmake_args() -> list[str]:
    """The flags scripts/llama-cmake-args prints (no AMX kernels on x86-64), and the tool only."""
    import shlex

    script = benchlib.ROOT / "scripts" / "llama-cmake-args"
    printed = subprocess.run(["sh", str(script)], capture_output=True, text=True,
                             check=True).stdout
    # the script prints -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=…: one flag per word
    return [*shlex.split(printed), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF"]


def ensure_generator(version: str | None, *, build: bool, jobs: int) -> dict:
    """The path of llama-cvector-generator for llama-cpp-python ``version``, built from the
    llama.cpp source in its sdist under TOOLS (~/.cache/edgeemo-bench, or $EDGEEMO_BENCH_TOOLS)
    if missing and ``build`` is allowed. Returns {"binary", "built": seconds or None,
    "commands"}."""
    if not version:
        raise benchlib.SkipPart("llama-cpp-python is not installed")
    binary = generator_binary(version)
    if binary.is_file():
        return {"binary": str(binary), "built": None, "commands": []}
    if not build:
        raise benchlib.SkipPart(f"{GENERATOR} is not built ({binary} is missing) and building "
                                f"it takes a compile of 10+ minutes, not done in --quick; run "
                                f"without --quick once, or with --set build=true")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise benchlib.SkipPart(f"cannot build {GENERATOR}: no {tool} on PATH")
    TOOLS.mkdir(parents=True, exist_ok=True)
    src_root = TOOLS / "src"
    source = src_root / f"llama_cpp_python-{version}"
    build_dir = TOOLS / f"build-{version}"
    log = TOOLS / f"build-{version}.log"
    commands = []

    def run(command: list[str]) -> None:
        commands.append(" ".join(command))
        benchlib.say(" ".join(command))
        with open(log, "a") as f:
            proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise benchlib.SkipPart(f"could not build {GENERATOR}: `{' '.join(command)}` exited "
                                    f"{proc.returncode} (log: {log})")

    started = time.perf_counter()
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        archive = src_root / f"llama_cpp_python-{version}.tar.gz"
        if not archive.is_file():
            run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
                 "--no-deps", "--no-binary", ":all:", "-d", str(src_root)])
        with tarfile.open(archive) as tar:
            tar.extractall(src_root, filter="data")
    run(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build_dir),
         *cmake_args()])
    run(["cmake", "--build", str(build_dir), "--target", GENERATOR, f"-j{jobs}"])
    if not binary.is_file():
        raise benchlib.SkipPart(f"the build ended without {binary} (log: {log})")
    return {"binary": str(binary), "built": time.perf_counter() - started, "commands": commands}


# --- judging a set (in a fresh process) -----------------------------------------------------------

def judge_set(model_name: str, vector_dir: str, names: list[str], sweep: dict, held: dict,
              threads: int, tokens: int, judge_model: str | None, cache: str) -> dict:
    """The strength sweep, the choice of one strength, and the held-out evaluation of one
    vector set; each evaluate result is also written to ``cache`` (and read from there when
    present)."""
    from edgeemo.evaluation import calibration
    from edgeemo.evaluation.evaluate import evaluate, summarize
    from edgeemo.evaluation.prompts import prompt_sets
    from edgeemo.evaluation.llmjudge import LLMJudge
    from edgeemo.steer import EmotionModel

    cache_dir = Path(cache)
    cache_dir.mkdir(parents=True, exist_ok=True)
    runtime = EmotionModel(model_name, seed=held["seeds"][0], threads=threads)
    for name in names:
        runtime.vectors[name] = runtime.vector(str(Path(vector_dir) / f"{name}.gguf"))
    options = {"llm": {"judge_model": judge_model, "threads": threads}}
    # the judge and the on-task model loaded first, so that the evaluations' timings are the
    # per-reply work alone (evaluate reuses both)
    from edgeemo.evaluation.ontask import embedder

    t0 = time.perf_counter()
    LLMJudge(runtime.model, names, **options["llm"])
    embedder()
    load_seconds = time.perf_counter() - t0

    files = hashlib.sha256(b"".join((Path(vector_dir) / f"{n}.gguf").read_bytes()
                                    for n in names)).hexdigest()

    def run(label: str, emotions, strengths, scenarios, margin_scenarios, seeds):
        # the same vector files and the same call: the result of an interrupted run is reused
        key = json.dumps([files, model_name, emotions, strengths, [s["id"] for s in scenarios],
                          [s["id"] for s in margin_scenarios], seeds, tokens, judge_model])
        path = cache_dir / f"{label}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
        if path.is_file():             # summarized again, by the code of this run
            result = json.loads(path.read_text())
            return {**result, "summary": summarize(result)}, True
        result = evaluate(runtime, emotions, strengths, scenarios, seeds=seeds,
                          margin_scenarios=margin_scenarios, max_tokens=tokens, judges=["llm"],
                          on_task=True, judge_options=options)
        path.write_text(json.dumps(result) + "\n")
        return result, False

    scenarios, margins = prompt_sets(sweep["requests"], sweep["margins"])
    swept, reused_sweep = run("sweep", sweep["emotions"], sweep["strengths"], scenarios, margins,
                              [sweep["seed"]])
    choice = calibration.model_strength(swept, "llm")
    strength, flagged = choice["strength"], None
    if strength is None:
        strength = min(sweep["strengths"])
        flagged = (f"no swept strength kept the replies {calibration.ON_TASK_MIN:.0%} on task and "
                   f"{calibration.COHERENT_MIN:.0%} coherent; judged at the smallest swept one")
    spec = held["requests"]
    scenarios, margins = prompt_sets("held-out" if isinstance(spec, int) else spec,
                                     held["margins"])
    if isinstance(spec, int):                 # the first N held-out requests
        scenarios = scenarios[:spec]
    evaluated, reused_held = run(f"held-out-{strength:g}", names, [strength], scenarios, margins,
                                 held["seeds"])
    # the rule breaks ties toward the weaker strength, and a sweep cell is a few replies: each set
    # is also judged at the strongest strength of its window (the most it can be pushed while
    # staying on task), when that differs, so that no set is compared at a needlessly weak one
    strongest, reused_strongest = None, False
    top = max(choice["window"], default=None)
    if held.get("strongest") and top is not None and top != strength:
        strongest, reused_strongest = run(f"held-out-{top:g}", names, [top], scenarios, margins,
                                          held["seeds"])
    LLMJudge.release()
    return {"sweep": swept, "choice": choice, "strength": strength, "flagged": flagged,
            "judge_load_seconds": load_seconds, "held_out": evaluated,
            "strongest": None if strongest is None else {"strength": top, "held_out": strongest},
            "reused": {"sweep": reused_sweep, "held_out": reused_held,
                       "strongest": reused_strongest}}


# --- the judge's ceiling --------------------------------------------------------------------------

def judge_ceiling(names: list[str], margin: float, judge_model: str) -> dict:
    """The LLM judge on the hand-written tone replies (records/judge-ceiling-llm.json), read
    at this run's margin and among this run's emotions."""
    import numpy as np

    record = json.loads(CEILING.read_text())
    if record["judge_model"] != judge_model:
        raise benchlib.SkipPart(f"{CEILING.name} holds the ceiling of {record['judge_model']}, "
                                f"and this run's judge is {judge_model}")
    scores = {tuple(k.split("\t")): v for k, v in record["scores"].items()}
    requests = list(dict.fromkeys(q for q, _ in scores))
    deltas = [scores[q, e][e] - scores[q, "neutral"][e] for q in requests for e in names
              if (q, e) in scores]
    ident = [max(names, key=lambda o: scores[q, o][e]) == e for q in requests for e in names]
    return {"judge_model": record["judge_model"], "replies": len(deltas), "margin": margin,
            "success": round(float(np.mean([d >= margin for d in deltas])), 4),
            "identification": round(float(np.mean(ident)), 4) if len(names) > 1 else None,
            "identification_all_20": record.get("identification"),
            "on_task": record.get("on_task", {}).get("own_request_on_task"),
            "on_task_how": "the judge's own yes/no on hand-written replies to their request"}


# --- the benchmark --------------------------------------------------------------------------------

def strengths_of(spec, model: str, foreign: bool) -> list[float]:
    spec = str(spec)
    if spec == "auto":
        spec = FOREIGN_GRIDS.get(model, FOREIGN_GRID) if foreign else \
            EDGEEMO_GRIDS.get(model, EDGEEMO_GRID)
    return sorted(float(x) for x in spec.split(",") if x.strip())


def scaled_copies(source: Path, target: Path, names: list[str], factor: float) -> Path:
    """The foreign files with their tensors × ``factor``: steering a copy at s is llama.cpp's
    scale s × factor on the original (edgeemo takes strengths up to 1 only)."""
    from edgeemo.vectors import ControlVector

    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        vec = ControlVector.from_gguf(source / f"{name}.gguf")
        write_foreign(target / f"{name}.gguf", vec.model_hint,
                      {k: d * factor for k, d in vec.directions.items()})
    return target


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def ci(pair) -> str:
    return "" if not pair else f" [{100 * pair[0]:.0f}–{100 * pair[1]:.0f}]"


def run(quick: bool = False, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)             # numpy's BLAS here and in every child
    report = benchlib.Report("peers_quality", "Steering quality: edgeemo, llama.cpp's "
                             "cvector-generator and repeng, judged alike", quick=quick,
                             settings={**settings, "threads": threads})
    from edgeemo import emotions

    model = settings["model"]
    spec = str(settings["emotions"])
    names = list(emotions.EMOTIONS) if spec == "all" else [emotions.canonical(e)
                                                             for e in spec.split(",")]
    wanted = [s.strip() for s in str(settings["sets"]).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in (*SETS, *EXTRA_SETS)]
    if unknown:
        raise SystemExit(f"unknown set {', '.join(unknown)}; choose from "
                         f"{', '.join((*SETS, *EXTRA_SETS))}")
    work = Path(settings["workdir"] or tempfile.mkdtemp(prefix="edgeemo-bench-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    report.settings["workdir"] = str(work)
    report.note(f"vectors, tool inputs and logs, and every evaluate result: {work}")

    paths = None
    with report.part("prepare the model and its export"):
        paths = benchlib.prepare(model, ("fp32",))
    if not paths:
        return report.to_dict()
    dirs: dict[str, Path] = {}
    made: dict[str, dict] = {}
    timeout = settings["timeout"]

    def already_made(key: str, out: Path) -> bool:
        """A set already in the given workdir (an earlier, interrupted run) is used again, with
        the time and memory that run measured when it kept them (made.json)."""
        if settings["workdir"] and all((out / f"{n}.gguf").is_file() for n in names):
            kept = out / "made.json"
            if kept.is_file():
                saved = json.loads(kept.read_text())
                report.rows.extend({**r, "note": (r["note"] + "; " if r["note"] else "")
                                    + "measured by an earlier run in this work directory"}
                                   for r in saved["rows"])
                made[key] = saved["made"]
            else:
                report.skip(f"{key}: make the vectors", f"the vectors are already in {out}: "
                            f"used again, not made or timed in this run")
            dirs[key] = out
            if key.startswith("cvector"):
                dirs[f"{key}-raw"] = out / "raw"
            return True
        return False

    def maker_rows(key: str, stage: dict, note: str, peak_mb=None) -> None:
        report.row(f"{LABELS[key]}: time to make {len(names)} vectors", stage["wall"], "s",
                   headline=True, note=note)
        report.row(f"{LABELS[key]}: peak memory", peak_mb or stage["peak_mb"], "MB",
                   headline=True)
        made[key] = benchlib.rounded({k: v for k, v in stage.items() if k != "memory"})

    def keep_made(key: str, out: Path, first_row: int) -> None:
        """What making ``key`` measured, kept beside its vectors for a later run (already_made)."""
        (out / "made.json").write_text(json.dumps({"rows": report.rows[first_row:],
                                                   "made": made[key]}) + "\n")

    if "edgeemo" in wanted and not already_made("edgeemo", work / "edgeemo"):
        with report.part("edgeemo: make the vectors"):
            out = work / "edgeemo"
            out.mkdir(exist_ok=True)
            home = benchlib.fresh_store(model, gguf=paths["gguf"],
                                        exports={"fp32": paths["exports"]["fp32"]})
            try:
                stage = benchlib.isolated(make_edgeemo, model, names, str(out), threads,
                                          env={"EDGEEMO_HOME": str(home)}, timeout=timeout)
            finally:
                shutil.rmtree(home, ignore_errors=True)
            v = stage["value"]
            first = len(report.rows)
            maker_rows("edgeemo", stage, f"reads {v['texts']} replies once (all emotions and "
                       f"neutral: the grand mean needs them); " + ", ".join(
                           f"{k} {s:.1f} s" for k, s in v["steps"].items())
                       + "; the ONNX export it reads is made once per model, not counted")
            keep_made("edgeemo", out, first)
            dirs["edgeemo"] = out

    pairs = {}
    if {"cvector-tone", "repeng", "cvector-tone-raw"} & set(wanted) or \
            {"cvector-own", "cvector-own-raw"} & set(wanted):
        with report.part("format the pairs"):
            pairs["tone"] = tone_pairs(paths["gguf"], names)
            pairs["own"] = own_pairs(paths["gguf"], names)
            first = names[0]
            report.data["example_lines"] = {
                "tone": {"positive": escape_line(pairs["tone"][first][0][0]),
                         "negative": escape_line(pairs["tone"][first][0][1])},
                "own": {"positive": escape_line(pairs["own"][first][0][0]),
                        "negative": escape_line(pairs["own"][first][0][1])}}

    cvector_sets = [s for s in wanted if s.startswith("cvector")]
    generator = None
    if cvector_sets and pairs and not all(
            settings["workdir"] and (work / s.removesuffix("-raw") / f"{n}.gguf").is_file()
            for s in cvector_sets for n in names):
        with report.part(f"build {GENERATOR}"):
            generator = ensure_generator(benchlib.package_version("llama_cpp_python"),
                                         build=bool(settings["build"]), jobs=threads)
            report.settings["generator"] = generator["binary"]
            if generator["built"] is not None:
                report.note(f"{GENERATOR} was built for this run in {generator['built']:.0f} s "
                            f"(not part of any result): " + "; ".join(generator["commands"]))
    for kind in ("tone", "own"):
        if not ({f"cvector-{kind}", f"cvector-{kind}-raw"} & set(wanted)) \
                or already_made(f"cvector-{kind}", work / f"cvector-{kind}") or generator is None:
            continue
        with report.part(f"cvector-generator: make the vectors ({kind})"):
            out = work / f"cvector-{kind}"
            stage = benchlib.isolated(run_generator, generator["binary"], paths["gguf"],
                                      pairs[kind], str(out), threads, timeout=timeout)
            v = stage["value"]
            flips = {e: len(f) for e, f in v["flipped_layers"].items()}
            first = len(report.rows)
            stage["wall"] = v["seconds"]["pca"]        # the tool's own runs, as a user runs it
            maker_rows(f"cvector-{kind}", stage,
                       f"{sum(v['pairs'].values())} pairs, one run per emotion, method pca "
                       f"(the tool's wall time; orienting by --method mean took "
                       f"{v['seconds']['mean']:.0f} s more)", peak_mb=v["tool_peak_mb"])
            made[f"cvector-{kind}"]["flipped_layers"] = v["flipped_layers"]
            made[f"cvector-{kind}"]["orient_seconds"] = round(v["seconds"]["mean"], 1)
            report.row(f"{LABELS[f'cvector-{kind}']}: layers flipped by the orientation",
                       round(sum(flips.values()) / max(1, len(flips)), 1), "layers",
                       note=f"per emotion, of the file's layers: "
                            + ", ".join(f"{e} {n}" for e, n in flips.items()))
            keep_made(f"cvector-{kind}", out, first)
            dirs[f"cvector-{kind}"] = out
            dirs[f"cvector-{kind}-raw"] = out / "raw"

    if "repeng" in wanted and pairs and not already_made("repeng", work / "repeng"):
        setup = None
        with report.part("repeng: make importable"):
            from bench_peer import ensure_repeng

            setup = ensure_repeng(settings["repeng"], settings["install"])
            report.settings["repeng_version"] = setup["version"]
            if setup["installed"]:
                report.note(f"installed for this benchmark: {'; '.join(setup['installed'])}")
        if setup:
            with report.part("repeng: make the vectors"):
                out = work / "repeng"
                out.mkdir(exist_ok=True)
                stage = benchlib.isolated(make_repeng, paths["gguf"], pairs["tone"], str(out),
                                          threads, timeout=timeout)
                v = stage["value"]
                first = len(report.rows)
                maker_rows("repeng", stage, f"{sum(len(p) for p in pairs['tone'].values())} "
                           f"pairs, ControlVector.train defaults (pca_diff, layers "
                           f"{v['layers'][0]}-{v['layers'][1]}); " + ", ".join(
                               f"{k} {s:.1f} s" for k, s in v["steps"].items()))
                if v["shim"]:
                    report.note(f"compatibility shim for repeng: {v['shim']}")
                keep_made("repeng", out, first)
                dirs["repeng"] = out
    report.data["making"] = made
    with report.part("norms of the vector files"):
        report.data["norms"] = norms(dirs, names)

    sweep_names = [e for e in str(settings["sweep_emotions"]).split(",") if e in names] or names
    seeds = [int(s) for s in str(settings["seeds"]).split(",") if s.strip()]
    held = {"requests": settings["held_out"], "margins": str(settings["margins"]),
            "seeds": seeds, "strongest": bool(settings["strongest"])}
    results = {}
    for key in [s for s in wanted if s in dirs]:
        foreign = key != "edgeemo"
        grid = strengths_of(settings["foreign_strengths"] if foreign
                            else settings["edgeemo_strengths"], model, foreign)
        # a foreign file's scale goes through a scaled copy (see scaled_copies)
        factor = float(2 ** math.ceil(math.log2(max(grid)))) if foreign and max(grid) > 1 \
            else 1.0
        sweep = {"emotions": sweep_names, "strengths": [g / factor for g in grid],
                 "requests": str(settings["sweep_requests"]),
                 "margins": str(settings["sweep_margins"]), "seed": int(settings["sweep_seed"])}
        with report.part(f"{key}: sweep, strength, held-out evaluation"):
            vector_dir = dirs[key] if factor == 1 else scaled_copies(
                dirs[key], work / "scaled" / f"{key}-x{factor:g}", names, factor)
            stage = benchlib.isolated(judge_set, model, str(vector_dir), names, sweep, held,
                                      threads, int(settings["tokens"]), settings["judge_model"],
                                      str(work / "results" / key), env=benchlib.store_env(),
                                      timeout=timeout)
            results[key] = stage["value"]
            results[key]["wall"] = stage["wall"]
            results[key]["peak_mb"] = stage["peak_mb"]
            results[key]["scale_factor"] = factor
            quality_rows(report, key, results[key], foreign)
    if not results:
        return report.to_dict()
    with report.part("the judge's ceiling"):
        any_result = next(iter(results.values()))["held_out"]
        judge = any_result["settings"]["judge_models"]["llm"].split(" ")[0]
        ceiling = judge_ceiling(names, any_result["settings"]["margins"]["llm"], judge)
        report.data["ceiling"] = ceiling
        report.row("the judge's ceiling: success (hand-written tone replies)",
                   100 * ceiling["success"], "%", headline=True,
                   note=f"{ceiling['replies']} hand-written replies moved beyond this run's "
                        f"margin ({ceiling['margin']:.3g}) by {ceiling['judge_model']}, read from "
                        f"{CEILING.name}; on task and coherent by construction")
        if ceiling["identification"] is not None:
            report.row("the judge's ceiling: identification", 100 * ceiling["identification"],
                       "%", headline=True,
                       note=f"among the {len(names)} emotions' hand-written replies to each "
                            f"request (all 20: {pct(ceiling['identification_all_20'])})")
        report.row("the judge's ceiling: on task", None if ceiling["on_task"] is None
                   else 100 * ceiling["on_task"], "%", note=ceiling["on_task_how"])
    with report.part("estimate of the full run"):
        estimate(report, results, made, names, quick)
    report.data["results"] = {key: slim(value) for key, value in results.items()}
    if settings["records"]:
        with report.part("keep every reply and score"):
            where = keep_records(results, benchlib.ROOT / str(settings["records"]).format(
                model=model))
            report.note(f"every steered reply and its scores (the evaluate results of each "
                        f"set): {os.path.relpath(where, benchlib.ROOT)}")
    return report.to_dict()


BULKY = ("samples", "baseline", "chance", "margin_pairs")


def slim(value: dict) -> dict:
    """A set's results without the replies themselves (kept by keep_records), for results.json."""
    def lean(result):
        return None if result is None else {k: v for k, v in result.items() if k not in BULKY}

    out = {**value, "sweep": lean(value["sweep"]), "held_out": lean(value["held_out"])}
    if value.get("strongest"):
        out["strongest"] = {**value["strongest"], "held_out": lean(value["strongest"]["held_out"])}
    return out


def evaluations(value: dict) -> dict:
    """A set's evaluate results by name: sweep, held-out-S (S in the set's own units: a
    llama.cpp scale for the peers) at the chosen strength and, if judged, the strongest."""
    factor = value.get("scale_factor", 1.0)
    runs = {"sweep": value["sweep"],
            f"held-out-{value['strength'] * factor:g}": value["held_out"]}
    if value.get("strongest"):
        top = value["strongest"]
        runs[f"held-out-{top['strength'] * factor:g}"] = top["held_out"]
    return runs


def keep_records(results: dict, directory: Path) -> Path:
    """Each set's evaluate results, replies included, as <set>/<name>.json (see evaluations)."""
    for key, value in results.items():
        (directory / key).mkdir(parents=True, exist_ok=True)
        for name, result in evaluations(value).items():
            target = directory / key / f"{name}.json"
            part = target.with_suffix(".json.part")
            part.write_text(json.dumps(result) + "\n")
            part.replace(target)
    return directory


def norms(dirs: dict, names: list[str]) -> dict:
    """Per set: the layers of its files and the median per-layer tensor norm (for the grids)."""
    import numpy as np

    from edgeemo.vectors import ControlVector

    out = {}
    for key, d in dirs.items():
        vecs = [ControlVector.from_gguf(Path(d) / f"{n}.gguf") for n in names
                if (Path(d) / f"{n}.gguf").is_file()]
        if not vecs:
            continue
        layer_norms = [float(np.linalg.norm(x)) for v in vecs for x in v.directions.values()]
        out[key] = {"layers": [min(vecs[0].layers), max(vecs[0].layers)],
                    "n_layers": len(vecs[0].layers),
                    "median_norm": round(float(np.median(layer_norms)), 3),
                    "strength_in_file": vecs[0].metadata.get("strength")}
    return out


def quality_rows(report, key: str, value: dict, foreign: bool) -> None:
    label = LABELS[key]
    choice, result = value["choice"], value["held_out"]
    sm = result["summary"]
    chat = sm["chat"]
    iv = chat["intervals"]
    unit = "× (llama.cpp scale)" if foreign else "(fraction of the residual norm)"
    factor = value.get("scale_factor", 1.0)
    per = ", ".join(f"{float(k) * factor:g}: success {pct(r['success_rate'])}, on task "
                    f"{pct(r['on_task_share'])}, coherent {pct(r['coherent_share'])}"
                    for k, r in choice["per_strength"].items())
    window = ",".join(f"{w * factor:g}" for w in choice["window"]) or "empty"
    report.row(f"{label}: strength chosen", value["strength"] * factor, unit,
               note=(value["flagged"] + "; " if value["flagged"] else "")
               + f"window {window}; sweep on "
                 f"{', '.join(choice['scenarios'])}, {len(choice['emotions_sampled'])} emotions: "
               + per)
    chance = sm.get("chance", {}).get("llm", {}).get("overall")
    ident = chat["identification"].get("llm") or {}
    n = (f"{chat['prompts']} requests × {len(chat['seeds'])} seed(s) × "
         f"{len(result['settings']['emotions'])} emotions")
    report.row(f"{label}: success", None if chat["success"].get("llm") is None
               else 100 * chat["success"]["llm"], "%", headline=True,
               note=f"95% interval{ci(iv.get('success llm'))}; chance {pct(chance)} (the "
                    f"unsteered second reply judged as steered); {n}; moved "
                    f"{pct(chat['moved'].get('llm'))}; margin "
                    f"{result['settings']['margins']['llm']:.3g}")
    report.row(f"{label}: identification", None if ident.get("top1") is None
               else 100 * ident["top1"], "%", headline=True,
               note=f"95% interval{ci(iv.get('identification llm'))}; chance "
                    f"{pct(ident.get('chance'))}")
    report.row(f"{label}: on task", None if chat["on_task"] is None else 100 * chat["on_task"],
               "%", note=f"95% interval{ci(iv.get('on_task'))}; unsteered "
                         f"{pct(chat['on_task_unsteered'])}")
    report.row(f"{label}: coherent", 100 * chat["coherent"], "%",
               note=f"95% interval{ci(iv.get('coherent'))}; unsteered replies "
                    f"{pct(sm['regimes']['baseline'].get('surgical'))} surgical")
    if value.get("strongest"):
        top = value["strongest"]
        tc = top["held_out"]["summary"]["chat"]
        tid = tc["identification"].get("llm") or {}
        tiv = tc["intervals"]
        report.row(f"{label}: at the strongest strength of its window "
                   f"({top['strength'] * factor:g})", None if tc["success"].get("llm") is None
                   else 100 * tc["success"]["llm"], "%", headline=True,
                   note=f"success, 95% interval{ci(tiv.get('success llm'))}; identification "
                        f"{pct(tid.get('top1'))}{ci(tiv.get('identification llm'))}; on task "
                        f"{pct(tc['on_task'])}{ci(tiv.get('on_task'))}; coherent "
                        f"{pct(tc['coherent'])}; moved {pct(tc['moved'].get('llm'))}; the same "
                        f"requests, seeds and margin as the row above")
    timing = [r["timing"] for r in evaluations(value).values()]
    replies = sum(t["replies"] for t in timing)
    seconds = sum(t["total_seconds"] for t in timing)
    report.row(f"{label}: evaluation time", seconds, "s",
               note=f"{replies} replies (sweep and held-out) generated and judged, "
                    f"{seconds / max(1, replies):.2f} s per reply, as timed when each was made "
                    f"(the models' loading not counted)"
                    + (f"; some read from the work directory by this run, peak "
                       f"{value['peak_mb']:.0f} MB" if any(value["reused"].values())
                       else f"; peak {value['peak_mb']:.0f} MB"))


def replies_in(emotions: int, strengths: int, prompts: int, margin_prompts: int, seeds: int,
               ) -> tuple[int, int]:
    """(generated replies, judged texts) of one evaluate call: baseline, chance and margin
    pairs per seed, then the steered ones."""
    generated = seeds * (2 * prompts + 2 * margin_prompts + emotions * strengths * prompts)
    return generated, generated


def estimate(report, results: dict, made: dict, names: list[str], quick: bool) -> None:
    """The full run's time per model from this run's per-reply times (generation per token and
    judging per reply), at the full settings."""
    gen_s, gen_tok, rest_s, judged, loads = 0.0, 0, 0.0, 0, []
    for value in results.values():
        loads.append(value["judge_load_seconds"])
        # each result's own timing, also for one read from the work directory (timed when made)
        for r in evaluations(value).values():
            t = r["timing"]
            gen_s += t["generation_seconds"]
            gen_tok += t["generated_tokens"]
            rest_s += t["total_seconds"] - t["generation_seconds"]   # judging, on-task, scoring
            judged += t["replies"]
    if not gen_tok or not judged:
        raise benchlib.SkipPart("no reply was generated in this run")
    per_token, per_judged = gen_s / gen_tok, rest_s / judged
    full = FULL
    sweep = replies_in(len(full["sweep_emotions"].split(",")), 5, 4, 4, 1)
    held = replies_in(20, 1, 12, 8, 3)
    # at most twice the held-out replies: the strongest strength of the window, when it differs
    per_set_replies = sweep[0] + held[0] * (2 if full["strongest"] else 1)
    tokens = full["tokens"]
    per_set = per_set_replies * (per_token * tokens + per_judged) + 2 * max(loads)
    # edgeemo reads every emotion's replies whatever the number of vectors; the peers run once
    # (cvector-generator, and again to orient) or train once (repeng) per emotion: scaled up,
    # an upper bound (repeng's model load is counted 20 / emotions times)
    making = sum((v["wall"] + v.get("orient_seconds", 0)) * (1 if k == "edgeemo"
                                                             else 20 / len(names))
                 for k, v in made.items())
    total = len(SETS) * per_set + making
    report.data["estimate"] = {
        "seconds_per_token": round(per_token, 4), "judge_seconds_per_reply": round(per_judged, 3),
        "replies_per_set": per_set_replies, "seconds_per_set": round(per_set),
        "making_seconds": round(making), "total_hours": round(total / 3600, 2)}
    report.row("estimated full run", total / 3600, "h",
               note=f"this model, full settings: {len(SETS)} sets × {per_set_replies} replies "
                    f"each ({per_token * tokens:.2f} s to generate {tokens} tokens + "
                    f"{per_judged:.2f} s to judge, check and score a reply, measured here; "
                    f"judge loads {max(loads):.0f} s) + making the 20 vectors "
                    f"(~{making / 60:.0f} min); replies that stop early take less")


if __name__ == "__main__":
    benchlib.main(run, __doc__)

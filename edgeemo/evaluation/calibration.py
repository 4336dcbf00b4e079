"""Calibration: per emotion, the strength at which steering works and the text survives.

    from edgeemo.evaluation.calibration import calibrate, apply_calibration, calibrate_vectors
    chosen = calibrate(EmotionModel(), ["afraid"])            # evaluate 5 strengths x 8 scenarios
    apply_calibration("afraid.gguf", chosen["afraid"]["strength"], chosen["afraid"])

:func:`calibrate` runs ``evaluate.evaluate`` over candidate strengths and picks, per emotion, the
one with the best success rate among those whose replies stay surgical; :func:`apply_calibration`
rewrites the vector file so stock llama.cpp at scale 1.0 steers at that strength.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import models, store, writes
from ..errors import EdgeemoError
from ..steer import find_vector
from ..vectors import ControlVector, at_strength, recommended_strength
from .evaluate import _load_runtime, evaluate
from .prompts import calibration_prompts, select_scenarios
from .regimes import classify_text
from .judges import READERS, TONE_READERS
from .report import strength_key

CALIBRATION_STRENGTHS = (0.03, 0.05, 0.08, 0.12, 0.16)
SURGICAL_WINDOW = 0.8              # a strength is usable when at least this share is surgical
VERIFY_SCENARIOS = 8               # other scenarios the chosen strength must also stay surgical on
# judge="readers": a strength is usable when at least these shares of its replies still answer
# the request and stay coherent (surgical); the best success among those wins
ON_TASK_MIN = 0.90
COHERENT_MIN = 0.95
JUDGE_CHOICES = ("readers", "tone", "llm", "both", "lexicon", "probe")
# stock llama.cpp steers the prompt too; the file's tensors are set to the largest of the chosen
# strength times these factors at which such replies stay coherent (see stock_strength)
STOCK_FACTORS = (1.0, 0.75, 0.5, 0.35, 0.25)
STOCK_TOKENS = 160


def calibrate(model, emotions: Sequence[str], strengths: Sequence[float] = CALIBRATION_STRENGTHS,
              scenarios: Sequence[dict] | None = None, *, seed: int = 0,
              seeds: Sequence[int] | None = None, max_tokens: int = 48, judge: str = "readers",
              use_probe: bool = True, threads: int | None = None,
              verify: Sequence[dict] | None = None, readers: Sequence[str] | None = None,
              stock: bool = False,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Per emotion, the strength to recommend, with the evidence.

    ``judge="readers"`` (the default; ``"tone"``: the same with the tone readers; ``"llm"``: with
    the LLM judge, ``llmjudge.py``) judges replies
    to everyday requests (``scenarios`` default to ``prompts.CALIBRATION_REQUESTS``) with the held-out
    readers and the on-task check: the window is
    the strengths whose replies are at least :data:`ON_TASK_MIN` on task and :data:`COHERENT_MIN`
    coherent, and the success is the readers' mean of "moved, on task and coherent". The other
    judges keep the older rule below. ``readers`` replaces the held-out vignette readers (for
    example ``judges.TONE_READERS``, within :func:`judges.tone_readers_from` for dialogue vectors).
    ``seeds`` (these judges only): one run per seed, pooled in every cell; with 8 requests and
    one seed a single reply off task already drops a strength out of the window (7 of 8 is
    below 90%), with two seeds one reply in 16 may miss.
    ``stock`` (these judges only): each chosen strength then gets the strength for stock
    llama.cpp too (:func:`stock_strength`, on the same requests), as ``info["stock"]``.

    The window is the strengths whose replies are at least :data:`SURGICAL_WINDOW` surgical;
    within it the strength with the best success rate wins, the smaller one on a tie. The
    success rate is the ``judge``'s ("lexicon", "probe", or "both": the mean of the two).
    An emotion with an empty window gets ``strength`` None: no strength is safe, nothing to apply.

    With ``verify`` (scenarios not used above), the chosen strength is tried on them too and,
    while fewer than :data:`SURGICAL_WINDOW` of those replies are surgical, replaced by the next
    smaller strength of the window. Eight scenarios estimate a surgical share coarsely: on the
    default model three emotions chosen at 0.12 with 7-8 of 8 surgical replies were only 68-75%
    surgical over all 44 scenarios.
    """
    if judge not in JUDGE_CHOICES:
        raise EdgeemoError(f"unknown judge '{judge}': use {', '.join(JUDGE_CHOICES)}")
    if judge == "probe" and not use_probe:
        raise EdgeemoError("the probe judge needs use_probe=True")
    if seeds is not None and judge not in ("readers", "tone", "llm"):
        raise EdgeemoError(f"several seeds need --judge readers, tone or llm, not '{judge}'")
    strengths = sorted(float(s) for s in strengths)
    seed = seed if seeds is None else seeds[0]
    model = _load_runtime(model, seed, threads)            # one model for every evaluation below
    if judge == "tone":
        judge, readers = "readers", readers or TONE_READERS
    elif judge == "llm":                   # the LLM judge in place of the readers
        judge, readers = "readers", ("llm",)
    if judge == "readers":
        scenarios = list(scenarios) if scenarios is not None else calibration_prompts("requests")
        chosen = _calibrate_readers(model, emotions, strengths, scenarios, seed=seed,
                                    seeds=seeds, max_tokens=max_tokens, verify=verify,
                                    progress=progress, readers=readers)
        unsteered: list = []                 # the unsteered stock replies, made once for all
        for name, info in chosen.items():
            if stock and info["strength"] is not None:
                info["stock"] = stock_strength(model, name, info["strength"], scenarios,
                                               unsteered=unsteered, progress=progress)
        return chosen
    if stock:
        raise EdgeemoError(f"the stock check needs --judge readers, tone or llm, not '{judge}'")
    scenarios = list(scenarios) if scenarios is not None else calibration_prompts("scenarios")
    result = evaluate(model, emotions, strengths, scenarios, seed=seed, max_tokens=max_tokens,
                      use_probe=use_probe, chance=False, threads=threads, progress=progress)
    sm = result["summary"]
    used = [j for j in ("lexicon", "probe") if j in result["settings"]["judges"]
            and judge in (j, "both")]
    out, unsteered = {}, []       # the verify prompts' unsteered replies, made once for all
    for name in result["settings"]["emotions"]:
        rows = {}
        for s in strengths:
            k = strength_key(s)
            rates = {j: sm["success"][j]["cells"][name][k] for j in used}
            rows[k] = {"strength": s, "surgical_share": sm["regimes"]["cells"][name][k]["surgical"],
                       "success_rate": round(float(np.mean(list(rates.values()))), 4),
                       **{f"success_{j}": r for j, r in rates.items()},
                       "regimes": sm["regimes"]["cells"][name][k]}
        window = [r for r in rows.values() if r["surgical_share"] >= SURGICAL_WINDOW]
        best = min(window, key=lambda r: (-r["success_rate"], r["strength"]), default=None)
        out[name] = {
            "strength": None if best is None else best["strength"],
            "success_rate": None if best is None else best["success_rate"],
            "surgical_share": None if best is None else best["surgical_share"],
            "window": [r["strength"] for r in window],
            "judge": judge, "per_strength": rows, "seed": seed, "max_tokens": max_tokens,
            "scenarios": [s["id"] for s in scenarios], "model": result["settings"]["model"],
        }
        if verify and best is not None:
            _verify(model, name, out[name], rows, verify, seed=seed, max_tokens=max_tokens,
                    threads=threads, progress=progress, baseline=unsteered)
    return out


def _calibrate_readers(model, emotions, strengths, scenarios, *, seed, max_tokens, verify,
                       progress, readers=None, seeds=None) -> dict[str, dict]:
    readers = list(readers or READERS)
    result = evaluate(model, emotions, strengths, scenarios, seed=seed, seeds=seeds,
                      max_tokens=max_tokens, judges=readers, on_task=True, chance=True, progress=progress)
    cells = result["summary"]["chat"]["cells"]
    out, unsteered = {}, []       # the verify prompts' unsteered replies, made once for all
    for name in result["settings"]["emotions"]:
        rows = {}
        for s in strengths:
            cell = cells[name][strength_key(s)]
            rows[strength_key(s)] = {
                "strength": s, "success_rate": round(float(np.mean(list(cell["success"].values()))), 4),
                **{f"success_{j}": r for j, r in cell["success"].items()},
                "on_task_share": cell["on_task"], "coherent_share": cell["coherent"],
                "surgical_share": cell["coherent"]}
        window = [r for r in rows.values() if _usable(r)]
        best = min(window, key=lambda r: (-r["success_rate"], r["strength"]), default=None)
        out[name] = {
            "strength": None if best is None else best["strength"],
            "success_rate": None if best is None else best["success_rate"],
            "surgical_share": None if best is None else best["surgical_share"],
            "on_task_share": None if best is None else best["on_task_share"],
            "window": [r["strength"] for r in window], "judge": ",".join(readers),
            "per_strength": rows, "seed": result["settings"]["seed"],
            "seeds": result["settings"]["seeds"], "max_tokens": max_tokens,
            "scenarios": [s["id"] for s in scenarios],
            "model": result["settings"]["model"],
            "margins": {j: result["settings"]["margins"][j] for j in readers},
        }
        if verify and best is not None:
            _verify_readers(model, name, out[name], rows, verify, seed=seed,
                            max_tokens=max_tokens, progress=progress, baseline=unsteered)
    return out


def model_strength(result: dict, judge: str = "llm") -> dict:
    """One strength for every vector of a model, from an ``evaluate`` result over several
    strengths (a sample of emotions on the calibration requests): the strengths whose replies,
    over all the sampled emotions, are at least :data:`ON_TASK_MIN` on task and
    :data:`COHERENT_MIN` coherent form the window, and the one with the best ``judge`` success
    wins (the smaller on a tie). Cheaper than :func:`calibrate` per emotion (one sweep instead
    of one per emotion), and coarser: every emotion gets the same strength. ``strength`` is None
    when the window is empty."""
    chat = result["summary"]["chat"]
    drift = result["summary"]["drift"].get("per_strength", {})
    rows = {}
    for s in result["settings"]["strengths"]:
        k = strength_key(s)
        cells = [chat["cells"][e][k] for e in result["settings"]["emotions"]]
        rows[k] = {"strength": s,
                   "success_rate": round(float(np.mean([c["success"][judge] for c in cells])), 4),
                   "on_task_share": round(float(np.mean([c["on_task"] for c in cells])), 4),
                   "coherent_share": round(float(np.mean([c["coherent"] for c in cells])), 4),
                   "drift_share": drift.get(k)}
    window = [r for r in rows.values() if _usable(r)]
    best = min(window, key=lambda r: (-r["success_rate"], r["strength"]), default=None)
    return {"strength": None if best is None else best["strength"],
            "window": [r["strength"] for r in window], "per_strength": rows, "judge": judge,
            "rule": f"on task >= {ON_TASK_MIN}, coherent >= {COHERENT_MIN}, best success",
            "emotions_sampled": result["settings"]["emotions"],
            "scenarios": result["settings"]["scenarios"], "model": result["settings"]["model"]}


def stock_strength(model, name: str, strength: float, scenarios: Sequence[dict], *,
                   max_tokens: int = STOCK_TOKENS, unsteered: list | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The strength at which a file steers safely the way stock llama.cpp applies it.

    Stock llama.cpp (``--control-vector FILE``, scale 1.0) steers the prompt's tokens as well
    as the reply's, at the file's tensors' strength, and is often run greedy without a
    repetition penalty: a strength chosen for edgeemo's reply-only steering can then loop ("I'm
    not sure. I'm not sure. ..."). Each of ``strength`` × :data:`STOCK_FACTORS` is tried in
    turn, answering ``scenarios`` that way (``max_tokens``), and the first whose replies are
    surgical (``regimes.classify_text``) at least as often as the unsteered model's own greedy
    replies wins (a small model decoded greedily loops by itself); if none does, the smallest,
    with ``held`` False. ``unsteered``: their regimes, filled by the first call and reused.
    Returns ``strength``, ``held``, ``unsteered_surgical`` and the ``tried`` counts."""
    options = dict(max_tokens=max_tokens, temperature=0, repeat_penalty=1.0, steer_prompt=True,
                   seed=0)
    if not unsteered:
        model.clear()
        unsteered[:] = [classify_text(model.generate(s["prompt"], **options)) for s in scenarios]
    allowed = len(scenarios) - unsteered.count("surgical")      # loops the model makes anyway
    tried = {}
    for factor in STOCK_FACTORS:
        candidate = round(strength * factor, 4)
        model.steer({name: candidate}, steer_prompt=True)
        failed = 0
        for i, scenario in enumerate(scenarios):
            failed += classify_text(model.generate(scenario["prompt"], **options)) != "surgical"
            if progress:
                progress(f"{name} {candidate:g} stock", i + 1, len(scenarios))
            if failed > allowed:                     # cannot hold any more: stop early
                break
        tried[strength_key(candidate)] = {"failed": failed, "answered": i + 1}
        if failed <= allowed:
            break
    model.clear()
    return {"strength": candidate, "held": failed <= allowed, "tried": tried,
            "unsteered_surgical": len(scenarios) - allowed, "requests": len(scenarios),
            "max_tokens": max_tokens}


def _usable(row: dict) -> bool:
    return (row["on_task_share"] is not None and row["on_task_share"] >= ON_TASK_MIN
            and row["coherent_share"] >= COHERENT_MIN)


def _verify_readers(model, name, info, rows, scenarios, *, seed, max_tokens, progress,
                    baseline: list) -> None:
    """Step the chosen strength down the window until it stays on task and coherent on
    ``scenarios`` (other requests) too. ``baseline``: their unsteered replies, filled by the
    first call and reused by the others (they depend on neither emotion nor strength)."""
    checked = {}
    for strength in sorted((s for s in info["window"] if s <= info["strength"]), reverse=True):
        result = evaluate(model, [name], [strength], scenarios, seed=seed, max_tokens=max_tokens,
                          judges=[], on_task=True, chance=False, baseline=baseline or None,
                          progress=progress)
        baseline[:] = result["baseline"]
        chat = result["summary"]["chat"]
        checked[strength_key(strength)] = {"on_task": chat["on_task"], "coherent": chat["coherent"]}
        if _usable({"on_task_share": chat["on_task"], "coherent_share": chat["coherent"]}):
            row = rows[strength_key(strength)]
            info.update(strength=strength, success_rate=row["success_rate"],
                        surgical_share=row["surgical_share"], on_task_share=row["on_task_share"])
            break
    else:
        info.update(strength=None, success_rate=None, surgical_share=None, on_task_share=None)
    info["verified"] = {"scenarios": [s["id"] for s in scenarios], "shares": checked}


def other_scenarios(used: Sequence[str], n: int | None = VERIFY_SCENARIOS, *,
                    pool: str = "scenarios") -> list[dict]:
    """``n`` prompts (all when None) not among the ``used`` ids, round-robin over the kinds."""
    return select_scenarios(n, exclude=used, pool=pool)


def _verify(model, name: str, info: dict, rows: dict, scenarios: Sequence[dict], *, seed: int,
            max_tokens: int, threads: int | None, progress, baseline: list) -> None:
    """Step the chosen strength down the window until it stays surgical on ``scenarios``
    (``baseline`` as in :func:`_verify_readers`)."""
    checked = {}
    for strength in sorted((s for s in info["window"] if s <= info["strength"]), reverse=True):
        result = evaluate(model, [name], [strength], scenarios, seed=seed, max_tokens=max_tokens,
                          use_probe=False, chance=False, threads=threads,
                          baseline=baseline or None, progress=progress)
        baseline[:] = result["baseline"]           # answered once, whatever emotion and strength
        share = result["summary"]["regimes"]["overall"]["surgical"]
        checked[strength_key(strength)] = share
        if share >= SURGICAL_WINDOW:
            row = rows[strength_key(strength)]
            info.update(strength=strength, success_rate=row["success_rate"],
                        surgical_share=row["surgical_share"])
            break
    else:
        info.update(strength=None, success_rate=None, surgical_share=None)
    info["verified"] = {"scenarios": [s["id"] for s in scenarios], "surgical_share": checked}


def apply_calibration(vector_path: Path | str, strength: float, info: dict | None = None, *,
                      output: Path | str | None = None) -> Path:
    """Rewrite a vector file so its tensors sit at ``strength``; return the path written.

    Each tensor becomes its unit direction × ``strength`` × that layer's ``residual_norm``, so
    stock llama.cpp at scale 1.0 steers at the new strength. Metadata ``strength`` and
    ``direction_scale`` follow; ``calibrated`` = true and ``calibration_*`` keys record the
    evidence from ``info`` (a :func:`calibrate` entry). When ``info`` has a ``stock`` strength
    below ``strength`` (:func:`stock_strength`), the tensors sit at that one and ``strength``
    becomes the file's ``reply_strength``, the one edgeemo's reply-only steering uses. All other
    metadata, the layers and the model hint stay as they were. Writes ``output`` if given, else
    the file itself (atomically).
    """
    vec = ControlVector.from_gguf(vector_path)
    previous = recommended_strength(vec)
    info = info or {}
    extra = {
        "calibration_previous_strength": previous,
        "calibration_success_rate": info.get("success_rate"),
        "calibration_surgical_share": info.get("surgical_share"),
        "calibration_on_task_share": info.get("on_task_share"),
        "calibration_judge": info.get("judge"),
        "calibration_window": info.get("window") or None,
        "calibration_strengths": [float(r["strength"]) for r in info["per_strength"].values()]
        if info.get("per_strength") else None,
        "calibration_scenarios": len(info["scenarios"]) if info.get("scenarios") else None,
        "calibration_seed": info.get("seed"),
        "calibration_seeds": info.get("seeds") if len(info.get("seeds") or ()) > 1 else None,
        "calibration_verify_scenarios": len(info["verified"]["scenarios"])
        if info.get("verified") else None,
    }
    extra = {k: (float(v) if isinstance(v, float) else v) for k, v in extra.items() if v is not None}
    return with_stock(vec, strength, info.get("stock"), calibrated=True,
                      **extra).to_gguf(output or vector_path)


def with_stock(vec: ControlVector, strength: float, stock: dict | None,
               **metadata) -> ControlVector:
    """``vec`` steering replies at ``strength``, its tensors at ``stock["strength"]`` (a
    :func:`stock_strength` result) when that is lower, with ``calibration_stock_held`` (dropped
    without ``stock``: it spoke of another strength)."""
    if not stock:
        vec = dataclasses.replace(vec, metadata={k: v for k, v in vec.metadata.items()
                                                 if k != "calibration_stock_held"})
        return at_strength(vec, strength, **metadata)
    return at_strength(vec, min(strength, stock["strength"]), reply_strength=strength,
                       calibration_stock_held=stock["held"], **metadata)


def vector_sources(runtime, names: Sequence[str], *, prebuilt: bool = False,
                   vector_dir: Path | str | None = None) -> dict[str, Path]:
    """The files a calibration reads (and rewrites, for ``prebuilt`` and ``vector_dir``), loaded
    into ``runtime`` so that the very files to be rewritten are the ones evaluated: the
    directory's ``<emotion>.gguf``, the repository's prebuilt ones, or the store's (else the
    prebuilt ones, as ``chat`` finds them)."""
    if vector_dir:
        return runtime.load_vectors(vector_dir, names)
    sources = {}
    for name in names:
        if prebuilt:
            if runtime.model.card is None:
                raise EdgeemoError(f"{runtime.model.name} is a local file: it has no prebuilt "
                                   f"vectors; calibrate the store's without --prebuilt")
            path = models.shipped_dir("vectors") / runtime.model.card.name / f"{name}.gguf"
            if not path.is_file():
                raise EdgeemoError(f"no prebuilt '{name}' vector at {path}: build them with "
                                   f"scripts/build_vectors.py")
        else:
            path = find_vector(runtime.model, name)
            if path is None:
                raise EdgeemoError(f"no '{name}' vector for {runtime.model.name}: make one with "
                                   f"`edgeemo export-vector --emotion {name}`")
        sources[name] = path
        runtime.vectors[name] = runtime.vector(str(path))
    return sources


def calibrate_vectors(runtime, names: Sequence[str], strengths: Sequence[float],
                      scenarios: Sequence[dict], *, prebuilt: bool = False,
                      vector_dir: Path | str | None = None, dry_run: bool = False,
                      sources: dict[str, Path] | None = None, **options) -> dict:
    """Calibrate the vectors of ``names`` (:func:`calibrate`, with ``options``) and write each
    chosen strength into its file (:func:`apply_calibration`): in place for ``prebuilt`` and
    ``vector_dir``, else into the store, where ``chat`` finds it first. Every file is written,
    or (interrupted) none; nothing with ``dry_run``. ``sources``: what :func:`vector_sources`
    returned, when the caller looked at the vectors first. Returns calibrate's entries with
    ``source`` and ``written`` (None when nothing was written)."""
    if sources is None:
        sources = vector_sources(runtime, names, prebuilt=prebuilt, vector_dir=vector_dir)
    chosen = calibrate(runtime, names, strengths, scenarios, **options)
    store_dir = store.vector_dir(runtime.model.sha256)
    with writes.transaction():
        for name, info in chosen.items():
            info["source"] = str(sources[name])
            if info["strength"] is None or dry_run:
                info["written"] = None
                continue
            target = sources[name] if (prebuilt or vector_dir) else store_dir / f"{name}.gguf"
            info["written"] = str(apply_calibration(sources[name], info["strength"], info,
                                                    output=target))
    return chosen

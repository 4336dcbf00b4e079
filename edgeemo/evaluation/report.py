"""The report of an evaluation: ``result.json``, ``report.md``, ``regimes.png``, ``success.png``.

    from edgeemo.evaluation.report import write_report
    write_report(result, "eval-report")        # result: what evaluate.evaluate() returns

Everything here reads a finished result and nothing else (no model), so a stored result.json can be
reported again. :func:`strength_key`, how a strength is written as a JSON key and in reports, lives
here too: evaluate.py keys its summary with it, and the report then needs nothing from evaluate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import writes
from ..errors import require
from .regimes import REGIMES

RECOMMENDED = "recommended"      # the strength key of "each vector's own recommended strength"


def strength_key(strength: float | None) -> str:
    """How a strength is written as a JSON key and in reports: 0.08 -> "0.08"; None (each
    vector's recommended strength) -> "recommended"."""
    return RECOMMENDED if strength is None else f"{float(strength):g}"


def write_report(result: dict, directory: Path | str) -> dict[str, Path]:
    """Write ``result.json``, ``report.md``, ``regimes.png`` and ``success.png`` into ``directory``.

    Every file is written under a temporary name and renamed, so a report is whole or absent.
    Returns the paths by kind.
    """
    directory = Path(directory)
    paths = {"json": directory / "result.json", "markdown": directory / "report.md",
             "regimes": directory / "regimes.png", "success": directory / "success.png"}
    writes.write_text(paths["json"], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot_regimes(result, paths["regimes"])
    plot_success(result, paths["success"])
    writes.write_text(paths["markdown"], markdown_report(result))
    return paths


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def markdown_report(result: dict) -> str:
    st, sm = result["settings"], result["summary"]
    judges = st["judges"]
    lines = [
        f"# Steering evaluation: {st['model']}", "",
        f"{len(st['emotions'])} emotions × {len(st['strengths'])} strengths × "
        f"{len(st['scenarios'])} scenarios = {sm['n_samples']} steered replies "
        f"(+ {len(result['baseline'])} unsteered baseline replies"
        f"{', + %d chance replies' % len(result['chance']) if result.get('chance') else ''}); "
        f"seed {st['seed']}, "
        f"{st['max_tokens']} tokens, temperature {st['temperature']}.", "",
        "## Judges", "",
        f"- **lexicon**: Empath categories mapped onto the emotions; success when the target's "
        f"share of words rises by ≥ {st['margins']['lexicon']} over the baseline reply. "
        f"Judged by VADER valence instead (≥ {st['margins']['valence']} in the emotion's "
        f"direction): {', '.join(st['lexicon_valence_only']) or 'none'}.",
    ]
    if "probe" in judges:
        lines.append(f"- **probe** (diagnostic: it reads the reply with the vector that steered "
                     f"it): the unsteered model's readout of the steered reply; moved when the "
                     f"target's cosine rises by ≥ {st['margins']['probe']}.")
    for judge in (j for j in judges if j.startswith("reader-")):
        lines.append(f"- **{judge}**: a held-out reader (directions from texts no vector is made "
                     f"from, read by {judge.split('-', 1)[1]}); moved when the target's score "
                     f"rises by ≥ {st['margins'].get(judge)}, the 90th percentile of two "
                     f"unsteered replies' difference on this run.")
    if st.get("on_task"):
        lines.append("- **on task**: the reply's embedding (all-MiniLM-L6-v2) is close enough to "
                     "the prompt's or the unsteered reply's; success needs it, and a surgical "
                     "regime. Prompts were " + ("steered too" if st.get("steer_prompt") else
                                                "not steered (reply-only)") + ".")
    th = st["thresholds"]
    lines += [
        f"- **regimes**: explosive if empty, > {_pct(th.get('blank_explosive', 0.5))} whitespace, "
        f"> {_pct(th['nonword_explosive'])} non-words, or "
        f"perplexity > {th['ppl_ratio_explosive']}× the baseline reply's (under the unsteered "
        f"model); repetitive if ≥ {_pct(th['repeat3_repetitive'])} repeated 3-grams or distinct-2 "
        f"< {th['distinct2_repetitive']}; otherwise surgical.", "",
        "## Overall", "",
        "| measure | value |", "| --- | --- |",
    ]
    for judge in judges:
        j = sm["success"][judge]
        lines.append(f"| success ({judge}) | {_pct(j['overall'])} (chance: "
                     f"{_pct(sm.get('chance', {}).get(judge, {}).get('overall'))}) |")
        lines.append(f"| surgical among {judge} successes | "
                     f"{_pct(j['surgical_among_successes'])} |")
    for r in REGIMES:
        lines.append(f"| {r} | {_pct(sm['regimes']['overall'][r])} "
                     f"(baseline {_pct(sm['regimes']['baseline'][r])}) |")
    by_strength = sm["drift"].get("per_strength") or {}
    lines.append(f"| language drift | {sm['drift']['steered']} steered replies "
                 f"(baseline {sm['drift']['baseline']})"
                 + ("; per strength " + ", ".join(f"{k}: {_pct(v)}" for k, v in by_strength.items())
                    if len(by_strength) > 1 else "") + " |")
    t = result.get("timing", {})
    if t:
        lines.append(f"| time | {t['total_seconds']:.0f} s, {t['seconds_per_reply']:.2f} s per "
                     f"reply, {t['tokens_per_second']} tokens/s generating |")
    lines += chat_section(result)
    lines += ["", "## Per emotion", ""]
    if None in st["strengths"] and st.get("recommended_strengths"):
        lines += ["Recommended strengths (each vector's own): " + ", ".join(
            f"{e} {strength_key(v) if v is not None else '–'}"
            for e, v in st["recommended_strengths"].items()) + ".", ""]
    lines += [
              "| emotion | " + " | ".join(f"success ({j})" for j in judges)
              + " | surgical | repetitive | explosive |",
              "| --- |" + " --- |" * (len(judges) + 3)]
    for e in st["emotions"]:
        reg = sm["regimes"]["per_emotion"][e]
        lines.append(f"| {e} | " + " | ".join(_pct(sm["success"][j]["per_emotion"][e])
                                               for j in judges)
                     + " | " + " | ".join(_pct(reg[r]) for r in REGIMES) + " |")
    lines += ["", "## Per strength", "",
              "| strength | " + " | ".join(f"success ({j})" for j in judges)
              + " | surgical | repetitive | explosive |",
              "| --- |" + " --- |" * (len(judges) + 3)]
    for k in (strength_key(s) for s in st["strengths"]):
        reg = sm["regimes"]["per_strength"][k]
        lines.append(f"| {k} | " + " | ".join(_pct(sm["success"][j]["per_strength"][k])
                                              for j in judges)
                     + " | " + " | ".join(_pct(reg[r]) for r in REGIMES) + " |")
    if sm["drift"]["examples"]:
        lines += ["", "## Language drift", ""]
        for ex in sm["drift"]["examples"]:
            lines.append(f"- {ex['emotion']} {strength_key(ex['strength'])} on {ex['scenario']}: "
                         + ", ".join(f"`{tok}`" for tok in ex["tokens"]))
    lines += ["", "## Examples", "", "One reply per regime where there is one (first found).", ""]
    for r in REGIMES:
        sample = next((s for s in result["samples"] if s["regime"] == r), None)
        if sample is None:
            continue
        text = " ".join(sample["text"].split())[:300] or "(empty)"
        base = " ".join(result_baseline(result, sample["scenario"])["text"].split())[:300]
        lines += [f"**{r}** — {sample['emotion']} {strength_key(sample['strength'])} on "
                  f"{sample['scenario']}:", "", f"> {text}", "", f"baseline: {base}", ""]
    lines += ["Plots: `regimes.png` (regime shares per emotion × strength), `success.png` "
              "(success rate per emotion and judge).", ""]
    return "\n".join(lines)


def chat_section(result: dict) -> list[str]:
    """Success as a chat user meets it: moved, on task and coherent, per judge and emotion."""
    st, chat = result["settings"], result["summary"].get("chat") or {}
    if not chat.get("success"):
        return []
    judges = list(chat["success"])
    lines = ["", "## Steered chat: moved, on task and coherent", "",
             f"On task {_pct(chat['on_task'])} (unsteered {_pct(chat['on_task_unsteered'])}), "
             f"coherent {_pct(chat['coherent'])}.", "",
             "| judge | moved | success | identification (chance) |", "| --- | --- | --- | --- |"]
    for j in judges:
        ident = chat["identification"].get(j)
        lines.append(f"| {j} | {_pct(chat['moved'][j])} | {_pct(chat['success'][j])} | "
                     + (f"{_pct(ident['top1'])} ({_pct(ident['chance'])})" if ident else "–")
                     + " |")
    for j, rate in chat.get("preferred", {}).items():
        lines += ["", f"Preferred by {j} over the unsteered reply (both orders; chance 50%): "
                      f"{_pct(rate)}."]
    keys = [strength_key(x) for x in st["strengths"]]
    lines += ["", "| emotion | strength | on task | coherent | "
              + " | ".join(f"success ({j})" for j in judges) + " |",
              "| --- | --- | --- | --- |" + " --- |" * len(judges)]
    for e in st["emotions"]:
        for k in keys:
            c = chat["cells"][e][k]
            lines.append(f"| {e} | {k} | {_pct(c['on_task'])} | {_pct(c['coherent'])} | "
                         + " | ".join(_pct(c["success"][j]) for j in judges) + " |")
    return lines


def result_baseline(result: dict, scenario_id: str) -> dict:
    return next(b for b in result["baseline"] if b["scenario"] == scenario_id)


REGIME_COLOURS = {"surgical": "#4c9f70", "repetitive": "#e0a030", "explosive": "#c8453c"}


def plot_regimes(result: dict, path: Path | str) -> Path:
    """Regime map: one cell per emotion × strength, coloured by its most common regime, with the
    surgical / repetitive / explosive shares written in it."""
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    st, cells = result["settings"], result["summary"]["regimes"]["cells"]
    names, keys = st["emotions"], [strength_key(s) for s in st["strengths"]]
    image = np.ones((len(names), len(keys), 3))
    fig, ax = plt.subplots(figsize=(max(6.5, 3.5 + 1.1 * len(keys)), 1.4 + 0.38 * len(names)))
    for i, e in enumerate(names):
        for j, k in enumerate(keys):
            shares = cells[e][k]
            top = max(REGIMES, key=lambda r: shares[r])
            colour = np.array(to_rgb(REGIME_COLOURS[top]))
            image[i, j] = 1 - shares[top] * (1 - colour)        # paler when less dominant
            ax.text(j, i, "/".join(f"{100 * shares[r]:.0f}" for r in REGIMES), ha="center",
                    va="center", fontsize=7)
    ax.imshow(image, aspect="auto")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("strength (fraction of residual norm)")
    ax.set_title(f"{st['model']}: regimes\n"
                 "% surgical / repetitive / explosive; colour: most common", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in REGIME_COLOURS.values()]
    ax.legend(handles, REGIMES, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_success(result: dict, path: Path | str) -> Path:
    """Success rate per emotion (all strengths pooled), one bar per judge."""
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st, success = result["settings"], result["summary"]["success"]
    names, judges = st["emotions"], st["judges"]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.35 * len(names)))
    height = 0.8 / len(judges)
    y = np.arange(len(names))
    for n, judge in enumerate(judges):
        values = [success[judge]["per_emotion"][e] or 0.0 for e in names]
        ax.barh(y + n * height, values, height, label=judge)
    ax.set_yticks(y + height * (len(judges) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate (steered reply beats the baseline reply by the judge's margin)")
    strengths = ", ".join(strength_key(s) for s in st["strengths"])
    ax.set_title(f"{st['model']}: success per emotion (strengths {strengths})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path | str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with writes.atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path

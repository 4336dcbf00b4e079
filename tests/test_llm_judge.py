"""The LLM judge and the statistics around it: label probabilities, margins fixed on prompts that
are not judged, several seeds, intervals over prompts (fast, on constructed results); then the real
judge (Qwen2.5-Coder-1.5B-Instruct from PyPI) reading hand-written tone, and steering of the real
default model judged by it: a steered reply moves toward its emotion, a negated vector away from
it, and two swapped vector files are caught."""

from __future__ import annotations

import numpy as np
import pytest

from edgeemo.emotions import EMOTIONS
from edgeemo.errors import EdgeemoError
from edgeemo.evaluation import evaluate as ev
from edgeemo.evaluation import prompts
from edgeemo.evaluation import llmjudge, summary

# --- fast: no model -------------------------------------------------------------------------------


def test_label_logprobs_pool_first_tokens_and_normalise_over_the_labels():
    logits = np.full(10, -5.0)
    logits[[1, 2]] = np.log([1.0, 3.0])          # "a" begins with token 1 or 2: 1 + 3 = 4
    logits[3] = np.log(4.0)                      # "b": 4
    logits[4] = np.log(8.0)                      # "c": 8
    out = llmjudge.label_logprobs(logits, {"a": [1, 2], "b": [3], "c": [4]}, ("a", "b", "c"))
    assert out["a"] == pytest.approx(np.log(0.25), abs=1e-4)
    assert out["b"] == pytest.approx(np.log(0.25), abs=1e-4)
    assert out["c"] == pytest.approx(np.log(0.5), abs=1e-4)


def test_held_out_prompts_and_margin_prompts_never_overlap():
    judged, margins = prompts.prompt_sets("held-out", "calibration")
    assert len(judged) == 12 and len(margins) == 8
    assert not {s["id"] for s in judged} & {s["id"] for s in margins}
    assert {s["id"] for s in margins} == set(prompts.CALIBRATION_REQUESTS)
    every, left = prompts.prompt_sets("all", "calibration")       # every request judged: none left
    assert len(every) == 20 and left == []
    assert prompts.prompt_sets("held-out", "judged")[1] == []
    with pytest.raises(EdgeemoError, match="must not be judged"):
        ev.evaluate(None, ["afraid"], [0.05], judged[:2], margin_scenarios=judged[1:3])


def test_interval_resamples_prompts_not_replies():
    rows = [("r1", True)] * 10 + [("r2", False)] * 10
    lo, hi = summary.interval(rows, lambda r: r[1], lambda r: r[0])
    # two prompts: a resample holds r1 twice (1.0), r2 twice (0.0) or both (0.5)
    assert lo == 0.0 and hi == 1.0
    many = [(f"r{i}", i % 2 == 0) for i in range(40)]
    lo, hi = summary.interval(many, lambda r: r[1], lambda r: r[0])
    assert lo < 0.5 < hi and hi - lo < 0.4
    assert summary.interval([("r1", True)] * 3, lambda r: r[1], lambda r: r[0]) == [1.0, 1.0]


def _sample(emotion, scenario, run, scores, success=True):
    return {"emotion": emotion, "scenario": scenario, "run": run, "setting": "0.05",
            "strength": 0.05, "regime": "surgical", "on_task": {"on_task": True, "llm": 0.9},
            "features": {"empty": False},
            "judges": {"llm": {"success": success, "delta": 1.0, "scores": scores}}}


def test_replies_are_grouped_by_run_for_identification_and_the_first_choice():
    def scores(**kv):
        return {**dict.fromkeys([*EMOTIONS, "neutral"], -9.0), **kv}

    # run 0: each reply is highest for its own emotion; run 1: both replies favour "happy"
    result = {"settings": {"emotions": ["afraid", "happy"], "strengths": [0.05], "judges": ["llm"],
                           "seeds": [0, 1]},
              "samples": [_sample("afraid", "r01", 0, scores(afraid=-0.1, happy=-3.0)),
                          _sample("happy", "r01", 0, scores(afraid=-4.0, happy=-0.2)),
                          _sample("afraid", "r01", 1, scores(afraid=-2.0, happy=-0.5)),
                          _sample("happy", "r01", 1, scores(afraid=-3.0, happy=-0.1))]}
    chat = summary.chat_summary(result)
    # run 0: both hits; run 1: afraid's reply -2.0 beats happy's -3.0 for afraid (hit), happy's
    # reply -0.1 beats -0.5 (hit). Grouped without runs, the four would fight over two places.
    assert chat["identification"]["llm"]["top1"] == 1.0 and chat["identification"]["llm"]["n"] == 4
    # first choice among the 20: afraid, happy, happy, happy -> 3 of 4 are the target
    assert chat["top_emotion"]["llm"]["top1"] == 0.75
    assert chat["on_task_by"]["llm"]["on_task"] == 1.0
    assert chat["seeds"] == [0, 1]
    assert set(chat["intervals"]) >= {"success llm", "identification llm", "top_emotion llm"}


def test_a_reply_the_judge_could_not_read_is_a_miss_not_the_end_of_identification():
    def scores(**kv):
        return {**dict.fromkeys([*EMOTIONS, "neutral"], -9.0), **kv}

    # one request, three emotions; the reply steered toward happy came out empty (no scores)
    result = {"settings": {"emotions": ["afraid", "happy", "sad"], "strengths": [0.05],
                           "judges": ["llm"], "seeds": [0]},
              "samples": [_sample("afraid", "r01", 0, scores(afraid=-0.1, happy=-3.0)),
                          _sample("happy", "r01", 0, None, success=False),
                          _sample("sad", "r01", 0, scores(afraid=-4.0, sad=-0.2))]}
    chat = summary.chat_summary(result)
    # afraid and sad are the best-rated replies for their emotions; happy's cannot be
    assert chat["identification"]["llm"]["top1"] == pytest.approx(2 / 3, abs=1e-4)
    assert chat["identification"]["llm"]["n"] == 3
    assert chat["top_emotion"]["llm"]["top1"] == pytest.approx(2 / 3, abs=1e-4)


def test_margins_come_from_the_margin_pairs_when_there_are_some():
    base = {e: 0.0 for e in ["afraid"]}
    result = {"settings": {"emotions": ["afraid"], "strengths": [0.05], "judges": ["llm"]},
              "baseline": [{"scenario": "r01", "run": 0, "llm": base, "features": {}}],
              "chance": [{"scenario": "r01", "run": 0, "text": "x", "llm": {"afraid": 5.0}}],
              "margin_pairs": [{"scenario": "r05", "run": 0, "texts": ["a", "b"],
                                "scores": {"llm": [{"afraid": 0.0}, {"afraid": d}]}}
                               for d in np.arange(1, 11) / 10],
              "samples": []}
    assert ev._measured_margins(result) == {"llm": pytest.approx(0.91)}
    result["margin_pairs"] = []                       # none: the judged prompts' chance replies
    assert ev._measured_margins(result) == {"llm": 5.0}


# --- the real judge -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge(default_gguf):
    from edgeemo import models

    return llmjudge.LLMJudge(models.resolve("smollm2-135m-instruct"), EMOTIONS, threads=2)


@pytest.mark.slow
def test_the_judge_is_never_the_steered_model(judge):
    from edgeemo import models

    assert judge.judge_model.name == "qwen2.5-coder-1.5b-instruct"
    steered = models.resolve("qwen2.5-coder-1.5b-instruct")
    assert llmjudge.pick_judge_model(steered, None, llmjudge.JUDGE_MODELS).name \
        == "qwen2.5-coder-0.5b-instruct"
    with pytest.raises(EdgeemoError, match="cannot judge its own steering"):
        llmjudge.pick_judge_model(steered, "qwen2.5-coder-1.5b-instruct", llmjudge.JUDGE_MODELS)


@pytest.mark.slow
def test_the_judge_reads_tone_from_hand_written_replies(judge):
    from edgeemo import stimuli

    rows = stimuli.dialogue()
    text = {(r["request"], r["emotion"]): r["text"] for r in rows}
    requests = list(dict.fromkeys(r["request"] for r in rows))[:3]
    emotions = ("afraid", "angry", "happy", "sad")
    deltas, hits, gaps = [], [], []
    for q in requests:
        neutral, *scored = judge.read([text[q, "neutral"]] + [text[q, e] for e in emotions])
        assert all(abs(sum(np.exp(list(s.values()))) - 1) < 1e-3 for s in scored)
        for i, (e, s) in enumerate(zip(emotions, scored)):
            deltas.append(s[e] - neutral[e])
            hits.append(max(range(len(emotions)), key=lambda k: scored[k][e]) == i)
            gaps.append(s[e] - np.mean([o[e] for k, o in enumerate(scored) if k != i]))
    # each emotion's reply raises that emotion over the neutral reply, by a clear amount
    # (measured: all 12 raised, median 2.8 nats)
    assert np.mean([d > 0 for d in deltas]) >= 0.9 and np.median(deltas) > 1.0
    # among the 4 replies to a request (chance 0.25) the target's own is rated highest for it in
    # 6 of 12, and above the others' mean by 2.4 nats on average: a judge of direction more than
    # of fine labels (it reads afraid and sad replies as "calm")
    assert np.mean(hits) >= 0.4 and np.mean(gaps) > 1.0
    on = judge.on_task([requests[0]], [text[requests[0], "afraid"]])[0]
    off = judge.on_task([requests[0]], [text[requests[1], "afraid"]])[0]
    assert on >= summary.LLM_ON_TASK > off
    # shown the emotional and the neutral reply to a request (both orders), it prefers the
    # emotional one for its emotion, weakly: measured 7 of 8, mean P(steered) 0.55
    pairs = [(q, e) for q in requests[:2] for e in emotions]
    p = judge.preferred([q for q, _ in pairs], [text[q, e] for q, e in pairs],
                        [text[q, "neutral"] for q, _ in pairs], [e for _, e in pairs])
    assert np.mean(np.array(p) > 0.5) >= 0.75 and np.mean(p) > 0.52, p
    same = judge.preferred([requests[0]], [text[requests[0], "angry"]],
                           [text[requests[0], "angry"]], ["angry"])[0]
    # both orders cancel a position bias; the second reading reuses the first one's cache, so
    # llama.cpp's sums differ a little (measured 0.004)
    assert abs(same - 0.5) < 0.01


@pytest.mark.slow
def test_prompts_read_in_a_row_share_their_tokens_and_not_their_verdicts(judge, monkeypatch):
    """The judge asks about pairs that begin alike in a row and does not read their common
    beginning again (the same request; the same plain reply shown first); each verdict is the
    one the prompt gets read from scratch."""
    from edgeemo import _llama, stimuli

    rows = stimuli.dialogue()
    text = {(r["request"], r["emotion"]): r["text"] for r in rows}
    requests = list(dict.fromkeys(r["request"] for r in rows))[3:5]
    pairs = [(q, e) for q in requests for e in ("afraid", "happy", "angry")]
    asked = ([q for q, _ in pairs], [text[q, e] for q, e in pairs],
             [text[q, "neutral"] for q, _ in pairs], [e for _, e in pairs])
    evaluate, read = _llama.evaluate, []

    def counting(llm, ids, *, cached=0):
        read.append(len(ids) - cached)
        evaluate(llm, ids, cached=cached)

    monkeypatch.setattr(_llama, "evaluate", counting)
    together = judge.preferred(*asked)
    on_task = judge.on_task(asked[0], asked[1])
    shared = sum(read)
    reader = judge.reader

    def alone(method, *args):
        _llama.reset(reader.llm)
        return method(*args)

    read.clear()
    expected = [(alone(reader.prefers, q, s, n, e) + 1 - alone(reader.prefers, q, n, s, e)) / 2
                for q, s, n, e in zip(*asked)]
    expected_on_task = [alone(reader.answers, q, s) for q, s in zip(*asked[:2])]
    assert shared < 0.85 * sum(read), (shared, sum(read))
    # llama.cpp's sums depend a little on how a prompt is cut into batches: over 60 recorded
    # pairs, P(steered) moved by 0.007 on average, 0.022 at most
    np.testing.assert_allclose(together, expected, atol=0.03)
    np.testing.assert_allclose(on_task, expected_on_task, atol=0.03)


# --- steering of the real default model, judged -----------------------------------------------------

STEERED = ("afraid", "angry", "enthusiastic")       # three distinct tones of the prebuilt vectors
PROMPTS = ("How was your day?", "Can you recommend a book for a long weekend?",
           "Explain what a black hole is.", "Give me some ideas for a rainy afternoon.")


@pytest.fixture(scope="module")
def steered_scores(judge):
    """The judge's scores of unsteered, steered and negated replies (seed 0, 40 tokens)."""
    from edgeemo.steer import EmotionModel
    from edgeemo.vectors import recommended_strength

    runtime = EmotionModel("smollm2-135m-instruct", seed=0, threads=2)
    texts = {}
    for p in PROMPTS:
        runtime.clear()
        texts["none", p] = runtime.generate(p, max_tokens=40, seed=0)
    for e in STEERED:
        strength = recommended_strength(runtime.vector(e))      # as chat steers replies
        for sign, label in ((1, "steered"), (-1, "negated")):
            runtime.steer({e: sign * strength})
            for p in PROMPTS:
                texts[(label, e), p] = runtime.generate(p, max_tokens=40, seed=0)
    runtime.close()
    keys = list(texts)
    return dict(zip(keys, judge.read([texts[k] for k in keys])))


@pytest.mark.slow
def test_steering_moves_the_judge_toward_the_emotion_and_negation_away(steered_scores):
    s = steered_scores
    toward = {e: np.mean([s[("steered", e), p][e] - s["none", p][e] for p in PROMPTS])
              for e in STEERED}
    away = {e: np.mean([s[("negated", e), p][e] - s["none", p][e] for p in PROMPTS])
            for e in STEERED}
    assert np.mean(list(toward.values())) > 1.0, toward
    assert all(v > 0 for v in toward.values()), toward
    assert all(away[e] < toward[e] - 1.0 for e in STEERED), (toward, away)
    assert np.mean(list(away.values())) < 0.0, away


@pytest.mark.slow
def test_two_swapped_vector_files_are_caught(steered_scores):
    """For every pair of emotions, each one's reply must be rated higher for it than the other's
    reply is. Swapping the pair's files (e's name steering with o's vector and back) turns that
    sum of two gaps negative: the test that catches a swap."""
    s = steered_scores

    def gap(files: dict[str, str], e: str, o: str) -> float:
        """How much higher the reply steered by e's file is rated for e than o's reply."""
        return float(np.mean([s[("steered", files[e]), p][e] - s[("steered", files[o]), p][e]
                              for p in PROMPTS]))

    right = {e: e for e in STEERED}
    for i, e in enumerate(STEERED):
        for o in STEERED[i + 1:]:
            swapped = {**right, e: o, o: e}
            assert gap(right, e, o) + gap(right, o, e) > 1.0, (e, o)
            assert gap(swapped, e, o) + gap(swapped, o, e) < -1.0, (e, o)


@pytest.mark.slow
def test_evaluate_command_with_the_llm_judge_over_two_seeds(judge):
    import json

    from click.testing import CliRunner

    from edgeemo.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "--emotions", "afraid,angry", "--strengths",
                                      "recommended", "--scenarios", "r03,r09",
                                      "--margin-prompts", "r05", "--seeds", "0,1",
                                      "--max-tokens", "24", "--threads", "2", "--llm-on-task",
                                      "--llm-preferred", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    st, chat = data["settings"], data["summary"]["chat"]
    assert st["judges"] == ["llm"] and st["seeds"] == [0, 1] and st["margin_scenarios"] == ["r05"]
    assert "qwen2.5-coder-1.5b-instruct" in st["judge_models"]["llm"]
    # the margin is measured on r05's pairs (one per seed), never on the judged r03 and r09
    assert [(p["scenario"], p["run"]) for p in data["margin_pairs"]] == [("r05", 0), ("r05", 1)]
    assert st["margins"]["llm"] > 0
    assert sorted((s["emotion"], s["scenario"], s["run"]) for s in data["samples"]) == sorted(
        (e, q, r) for e in ("afraid", "angry") for q in ("r03", "r09") for r in (0, 1))
    assert {(b["scenario"], b["run"]) for b in data["baseline"]} == {
        (q, r) for q in ("r03", "r09") for r in (0, 1)}
    assert chat["identification"]["llm"]["n"] == 8
    lo, hi = chat["intervals"]["success llm"]
    assert 0 <= lo <= chat["success"]["llm"] <= hi <= 1
    assert chat["on_task_by"]["llm"]["agreement"] is not None
    assert all(0 <= s["on_task"]["llm"] <= 1 for s in data["samples"])
    preferred = [s["preferred"]["llm"] for s in data["samples"]]
    assert len(preferred) == 8 and len(set(preferred)) > 1
    assert chat["preferred"]["llm"] == np.mean([p > 0.5 for p in preferred])


def test_the_first_choice_is_read_after_the_judges_leaning_is_taken_off():
    def scores(**kv):
        return {**dict.fromkeys([*EMOTIONS, "neutral"], -9.0), **kv}

    leaning = scores(calm=-0.5, neutral=-1.0)                      # how it reads plain replies
    result = {"margin_pairs": [{"scores": {"llm": [leaning, leaning]}}]}
    prior = summary.label_prior(result, "llm")
    assert prior["calm"] == -0.5 and prior["afraid"] == -9.0
    reply = scores(calm=-0.7, afraid=-2.0)                         # calm a little less, afraid up
    assert summary.first_choice(reply) == "calm"
    assert summary.first_choice(reply, prior) == "afraid"
    assert summary.label_prior({"margin_pairs": []}, "llm") == {}


def test_one_strength_for_a_model_is_the_best_success_inside_the_on_task_window():
    from edgeemo.evaluation.calibration import model_strength
    from edgeemo.evaluation.report import strength_key

    strengths = [0.08, 0.16, 0.32]
    # per emotion and strength: (success, on task, coherent)
    table = {"afraid": {0.08: (0.25, 1.0, 1.0), 0.16: (0.5, 1.0, 1.0), 0.32: (1.0, 0.5, 0.5)},
             "angry": {0.08: (0.25, 1.0, 1.0), 0.16: (0.25, 0.9, 1.0), 0.32: (1.0, 0.75, 1.0)}}
    def result():
        cells = {e: {strength_key(s): {"success": {"llm": v[0]}, "on_task": v[1], "coherent": v[2]}
                     for s, v in row.items()} for e, row in table.items()}
        return {"settings": {"strengths": strengths, "emotions": list(table),
                             "scenarios": ["r05"], "model": "m"},
                "summary": {"chat": {"cells": cells},
                            "drift": {"per_strength": {strength_key(0.32): 0.25}}}}

    choice = model_strength(result())
    # 0.32 moves most but leaves the window (on task 62%); 0.16 beats 0.08 inside it
    assert choice["window"] == [0.08, 0.16] and choice["strength"] == 0.16
    assert choice["per_strength"][strength_key(0.16)]["on_task_share"] == 0.95
    assert choice["per_strength"][strength_key(0.32)]["drift_share"] == 0.25
    for row in table.values():
        row[0.16] = (0.1, 0.5, 1.0)
    choice = model_strength(result())
    assert choice["strength"] == 0.08

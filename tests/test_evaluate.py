"""Steering evaluation: the regime classifier, language drift and the lexicon judge on constructed
texts (fast), then the whole evaluation, calibration and the regimes of real steered replies on the
default model (slow)."""

from __future__ import annotations

import copy

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeemo import emotions
from edgeemo.evaluation import calibration, judges, prompts, regimes, report
from edgeemo.evaluation import evaluate as ev
from edgeemo.errors import EdgeemoError

FLUENT_AFRAID = ("I heard something move in the dark hallway and my heart started pounding. I held "
                 "my breath, too scared to call out, trembling with dread until the footsteps "
                 "stopped.")
FLUENT_PLAIN = ("My morning was quiet. I made coffee, read the news for a while and then walked "
                "to the bakery on the corner to buy bread for lunch.")


# --- regimes on constructed texts ----------------------------------------------------------------

@pytest.mark.parametrize("text", [FLUENT_AFRAID, FLUENT_PLAIN,
                                  "## Breakfast\n- Two eggs at **7am**\n- Coffee, about 250 ml\n"
                                  "1. Then a walk of 3,000 steps (2.5 km) to the U.S. embassy.",
                                  "Oh no... I don't know what to do! It's 3:30 and she's still "
                                  "not home — hmm, maybe I should call?"])
def test_fluent_text_is_surgical(text):
    features = regimes.surface_features(text)
    assert features["nonword_share"] <= regimes.NONWORD_EXPLOSIVE
    assert regimes.regime(features) == "surgical"


@pytest.mark.parametrize("text", ["I was. I was. I was. I was. I was. I was. I was. I was.",
                                  "the fear the fear the fear the fear the fear the fear",
                                  "I am so happy, so happy, so happy, so happy, so happy, so "
                                  "happy, so happy."])
def test_loops_are_repetitive(text):
    features = regimes.surface_features(text)
    assert features["repeat3"] >= regimes.REPEAT3_REPETITIVE
    assert regimes.regime(features) == "repetitive"


@pytest.mark.parametrize("text", ["A shakin'd ,, the eyes qxz ##", "", "   \n\t ",
                                  "\nAflinged" + "\n" * 40,                 # collapse to newlines
                                  "!!!! ,, ;; qxz vbnm .,. ##", "ran,the icy#cold qxz wwt a1b3c"])
def test_broken_text_is_explosive(text):
    assert regimes.classify_text(text) == "explosive"


def test_nonword_heuristic():
    for word in ("hello", "don't", "well-known", "3,000", "3:30", "4th", "U.S.", "H2O", "(maybe)",
                 "**bold**", "rhythm", "hmm", "TV", "and/or", "café", "—", "🌍", "🙂!"):
        assert not regimes.is_nonword(word), word
    for word in (",,", "##", "qxz", "ran,the", "a1b", "abc\ufffd", "helloпривет", "!!!!"):
        assert regimes.is_nonword(word), word
    assert not regimes.is_nonword("##", line_start=True)             # a markdown heading


def test_perplexity_ratio_decides_between_fluent_and_broken():
    features = regimes.surface_features(FLUENT_AFRAID)
    assert regimes.regime({**features, "ppl_ratio": 1.4}) == "surgical"
    assert regimes.regime({**features, "ppl_ratio": regimes.PPL_RATIO_EXPLOSIVE * 2}) == "explosive"
    assert regimes.regime({**features, "ppl_ratio": None}) == "surgical"


def test_repetition_needs_enough_words():
    assert regimes.classify_text("Yes yes yes.") == "surgical"


# --- language drift ------------------------------------------------------------------------------

def test_chinese_in_an_english_reply_is_drift():
    drift = regimes.language_drift("Tell me about your morning.",
                              "My morning was 非常好 and I felt calm 今天.")
    assert drift["drifted"]
    assert drift["foreign_scripts"] == ["HAN"]
    assert drift["tokens"] == ["非常好", "今天."]
    assert 0 < drift["foreign_share"] < 1


def test_english_reply_is_not_drift():
    drift = regimes.language_drift("Tell me about your morning.", FLUENT_PLAIN)
    assert not drift["drifted"] and drift["tokens"] == [] and drift["foreign_share"] == 0


def test_french_with_accents_is_not_drift():
    prompt = "Pourquoi le café est-il si amer ? Réponds en quelques phrases, s'il te plaît."
    reply = "Le café est amer à cause de la torréfaction."
    assert not regimes.language_drift(prompt, reply)["drifted"]
    assert not regimes.language_drift(prompt, FLUENT_PLAIN)["drifted"]


def test_cyrillic_and_arabic_are_drift_and_the_prompt_sets_the_expected_script():
    drift = regimes.language_drift("How are you?", "I am fine, спасибо.")
    assert drift["foreign_scripts"] == ["CYRILLIC"]
    assert regimes.language_drift("How are you?", "Fine, شكرا")["foreign_scripts"] == ["ARABIC"]
    assert not regimes.language_drift("Как дела?", "Хорошо, спасибо!")["drifted"]
    assert regimes.language_drift("Как дела?", "Fine, thanks!")["foreign_scripts"] == ["LATIN"]


def test_digits_punctuation_and_emoji_are_not_a_script():
    assert not regimes.language_drift("Tell me a number.", "42! 🙂 — «3,5 %»")["drifted"]


# --- the lexicon judge ----------------------------------------------------------------------------

def test_fearful_text_scores_higher_on_afraid_than_neutral_text():
    fearful = judges.lexicon_scores("I was terrified and trembling, frozen with dread and panic.")
    neutral = judges.lexicon_scores("The post office opens at nine and closes at five on weekdays.")
    assert fearful["afraid"] > neutral["afraid"] + judges.LEXICON_MARGIN
    assert neutral["afraid"] == 0


def test_valence_of_happy_text_is_above_sad_text():
    happy = judges.lexicon_scores("What a wonderful day! I'm so happy and grateful, everything is "
                                  "great.")
    sad = judges.lexicon_scores("I feel miserable and alone; everything is hopeless and grey.")
    assert happy["valence"] > 0.5 > -0.5 > sad["valence"]


def test_lexicon_covers_mapped_emotions_and_lists_the_rest():
    scores = judges.lexicon_scores(FLUENT_PLAIN)
    assert set(scores) == set(judges.EMPATH_MAP) | {"valence"}
    assert set(judges.EMPATH_MAP) | set(judges.UNMAPPED) == set(emotions.EMOTIONS)
    assert not set(judges.EMPATH_MAP) & set(judges.UNMAPPED)
    assert judges.lexicon_scores("") == {**dict.fromkeys(judges.EMPATH_MAP, 0.0), "valence": 0.0}


def test_lexicon_words_find_inflected_forms():
    words = judges.lexicon_words("Dreading the worries, fears...")
    assert words == ["dread", "the", "worry", "fear"]
    assert judges.lexicon_words("AFRAID!") == ["afraid"]


def test_lexicon_judgement_uses_valence_for_unmapped_emotions():
    calm = judges.lexicon_scores("What a lovely, pleasant morning. I enjoyed the walk in the sun.")
    bleak = judges.lexicon_scores("Everything is hopeless, dark and miserable; nothing will ever "
                                  "get better.")
    verdict = judges.lexicon_judgement("gloomy", bleak, calm)            # gloomy: valence goes down
    assert verdict["measure"] == "valence" and verdict["success"] and verdict["delta"] > 0
    assert not judges.lexicon_judgement("grateful", bleak, calm)["success"]
    afraid = judges.lexicon_judgement("afraid", judges.lexicon_scores(FLUENT_AFRAID), calm)
    assert afraid["measure"] == "empath" and afraid["success"]
    assert not judges.lexicon_judgement("afraid", calm, calm)["success"]   # no change is no success
    plain = judges.lexicon_scores(FLUENT_PLAIN)          # valence 0: a drop to -0.5 is too small
    assert not judges.lexicon_judgement("gloomy", bleak, plain)["success"]


def test_other_scenarios_leave_out_the_used_ones_and_cover_the_kinds():
    used = [s["id"] for s in prompts.select_scenarios(8)]
    other = calibration.other_scenarios(used, 8)
    assert len(other) == 8 and not {s["id"] for s in other} & set(used)
    assert len({s["kind"] for s in other}) == len({s["kind"] for s in prompts.select_scenarios()})
    rest = calibration.other_scenarios(used, None)
    assert len(rest) == len(prompts.select_scenarios()) - 8


def test_calibration_on_requests_is_verified_on_scenarios_never_on_held_out_requests():
    from edgeemo.cli_evaluate import _verify_scenarios

    used = [s["id"] for s in prompts.calibration_prompts("requests")]
    verify = _verify_scenarios("8", used, "requests")
    requests = {s["id"] for s in prompts.select_scenarios(None, pool="requests")}
    assert len(verify) == 8 and not {s["id"] for s in verify} & requests
    on_scenarios = _verify_scenarios("all", ["s01"], "scenarios")
    assert "s01" not in {s["id"] for s in on_scenarios} and on_scenarios


def test_select_scenarios():
    four = prompts.select_scenarios(4)
    assert [s["kind"] for s in four] == ["neutral", "opposite", "conversational", "story"]
    assert [s["id"] for s in prompts.select_scenarios("s02,s01")] == ["s02", "s01"]
    assert len(prompts.select_scenarios()) == len(prompts.select_scenarios(1000)) == 44
    with pytest.raises(EdgeemoError):
        prompts.select_scenarios("s99")


# --- calibration on a constructed vector ----------------------------------------------------------

def _vector(tmp_path, strength=0.08):
    from edgeemo.vectors import ControlVector

    rng = np.random.default_rng(0)
    norms = [10.0, 12.0, 15.0]
    directions = {}
    for layer, norm in zip((3, 4, 5), norms):
        d = rng.normal(size=16)
        directions[layer] = d / np.linalg.norm(d) * strength * norm
    meta = {"emotion": "afraid", "strength": strength, "residual_norm": norms,
            "direction_scale": [strength * n for n in norms], "method": "comprehension"}
    path = tmp_path / "afraid.gguf"
    ControlVector("llama", 16, directions, meta).to_gguf(path)
    return path


def test_apply_calibration_rescales_tensors_and_keeps_the_rest(tmp_path):
    from edgeemo.vectors import ControlVector

    path = _vector(tmp_path)
    before = ControlVector.from_gguf(path)
    info = {"success_rate": 0.5, "surgical_share": 0.875, "judge": "both",
            "window": [0.03, 0.05], "seed": 0, "scenarios": ["s01", "s12"],
            "per_strength": {"0.03": {"strength": 0.03}, "0.05": {"strength": 0.05}}}
    out = calibration.apply_calibration(path, 0.05, info, output=tmp_path / "out.gguf")
    after = ControlVector.from_gguf(out)
    assert after.layers == before.layers and after.model_hint == before.model_hint
    for layer, norm in zip(after.layers, after.metadata["residual_norm"]):
        assert np.linalg.norm(after.directions[layer]) == pytest.approx(0.05 * norm, rel=1e-5)
        cos = after.directions[layer] @ before.directions[layer] / (
            np.linalg.norm(after.directions[layer]) * np.linalg.norm(before.directions[layer]))
        assert cos == pytest.approx(1.0, abs=1e-6)
    m = after.metadata
    assert m["strength"] == 0.05 and m["calibrated"] is True
    assert m["direction_scale"] == pytest.approx([0.05 * n for n in m["residual_norm"]], rel=1e-6)
    assert m["calibration_success_rate"] == 0.5 and m["calibration_surgical_share"] == 0.875
    assert m["calibration_previous_strength"] == 0.08
    untouched = {k: v for k, v in before.metadata.items() if k not in ("strength", "direction_scale")}
    assert {k: m[k] for k in untouched} == untouched
    # calibrating again starts from the unit direction: same tensors
    again = ControlVector.from_gguf(calibration.apply_calibration(out, 0.05, info,
                                                         output=tmp_path / "again.gguf"))
    for layer in after.layers:
        np.testing.assert_allclose(again.directions[layer], after.directions[layer], rtol=1e-6)
    assert again.metadata["calibration_previous_strength"] == 0.05


def test_apply_calibration_refuses_foreign_vectors(tmp_path):
    from edgeemo.vectors import ControlVector

    path = tmp_path / "foreign.gguf"
    ControlVector("llama", 4, {1: np.ones(4)}).to_gguf(path)
    with pytest.raises(EdgeemoError, match="residual_norm"):
        calibration.apply_calibration(path, 0.05)


def test_report_from_a_constructed_result(tmp_path):
    result = _constructed_result()
    paths = report.write_report(result, tmp_path / "report")
    assert json.loads(paths["json"].read_text())["summary"]["n_samples"] == 2
    text = paths["markdown"].read_text()
    assert "success (lexicon)" in text and "explosive" in text
    for kind in ("regimes", "success"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def _constructed_result() -> dict:
    base_text = FLUENT_PLAIN
    baseline = [{"scenario": "s01", "kind": "neutral", "prompt": "Tell me about your morning.",
                 "text": base_text, "features": regimes.surface_features(base_text),
                 "regime": "surgical", "lexicon": judges.lexicon_scores(base_text),
                 "drift": regimes.language_drift("Tell me about your morning.", base_text)}]
    samples = []
    for strength, text in ((0.05, FLUENT_AFRAID), (0.4, "A shakin'd ,, the eyes qxz ##")):
        samples.append({"emotion": "afraid", "strength": strength, "scenario": "s01",
                        "kind": "neutral", "text": text, "features": regimes.surface_features(text),
                        "regime": regimes.classify_text(text),
                        "drift": regimes.language_drift("Tell me about your morning.", text),
                        "judges": {"lexicon": judges.lexicon_judgement(
                            "afraid", judges.lexicon_scores(text), baseline[0]["lexicon"])}})
    result = {"settings": {"model": "test", "emotions": ["afraid"], "strengths": [0.05, 0.4],
                           "scenarios": ["s01"], "seed": 0, "max_tokens": 48,
                           "temperature": 0.7, "judges": ["lexicon"],
                           "margins": {"lexicon": judges.LEXICON_MARGIN,
                                       "valence": judges.VALENCE_MARGIN,
                                       "probe": judges.PROBE_MARGIN},
                           "thresholds": {"repeat3_repetitive": regimes.REPEAT3_REPETITIVE,
                                          "distinct2_repetitive": regimes.DISTINCT2_REPETITIVE,
                                          "nonword_explosive": regimes.NONWORD_EXPLOSIVE,
                                          "ppl_ratio_explosive": regimes.PPL_RATIO_EXPLOSIVE},
                           "lexicon_valence_only": []},
              "baseline": baseline, "samples": samples}
    result["summary"] = ev.summarize(result)
    return result


def test_summary_of_a_constructed_result():
    sm = _constructed_result()["summary"]
    assert sm["success"]["lexicon"]["cells"]["afraid"] == {"0.05": 1.0, "0.4": 0.0}
    assert sm["regimes"]["cells"]["afraid"]["0.05"]["surgical"] == 1.0
    assert sm["regimes"]["cells"]["afraid"]["0.4"]["explosive"] == 1.0
    assert sm["success"]["lexicon"]["surgical_among_successes"] == 1.0
    assert sm["drift"]["steered"] == 0


# --- the real default model -----------------------------------------------------------------------

EMOTION = "afraid"


@pytest.fixture(scope="module")
def vectors(default_export):
    """The default model's vectors: prebuilt or in the test store, made there if missing."""
    from edgeemo import models
    from edgeemo.steer import find_vector

    model = models.resolve("smollm2-135m-instruct")
    if any(find_vector(model, e) is None for e in ("afraid", "happy")):
        env = {**os.environ, "EDGEEMO_HOME": os.environ["EDGEEMO_HOME"]}
        subprocess.run([sys.executable, "-m", "edgeemo", "export-vector", "--all", "--method",
                        "comprehension", "--model", model.name], check=True, env=env,
                       capture_output=True)
    return model


@pytest.fixture(scope="module")
def runtime(vectors):
    from edgeemo.steer import EmotionModel

    # one thread: on a 2-core machine shared with other work, llama.cpp's threads waiting on each
    # other at every layer make two threads many times slower than one
    return EmotionModel(vectors, seed=0, threads=1)


@pytest.fixture(scope="module")
def scorer(runtime):
    return regimes.Scorer(runtime.model.path, threads=1)


def _features_at(runtime, scorer, strengths, scenarios) -> dict[float, list[dict]]:
    """Features of the steered reply to each scenario at each strength (one baseline each)."""
    out = {s: [] for s in strengths}
    for scenario in scenarios:
        ids = runtime.prompt_ids([{"role": "user", "content": scenario["prompt"]}])
        runtime.clear()
        base = runtime.generate(scenario["prompt"], max_tokens=48, seed=0)
        for strength in strengths:
            runtime.steer({EMOTION: strength})
            text = runtime.generate(scenario["prompt"], max_tokens=48, seed=0)
            out[strength].append(regimes.text_features(text, base, ids, scorer))
    runtime.clear()
    return out


@pytest.mark.slow
def test_regimes_of_real_replies(runtime, scorer):
    features = _features_at(runtime, scorer, (0.03, 0.1, 0.6), prompts.select_scenarios(4))
    low, medium, high = ([regimes.regime(f) for f in features[s]] for s in (0.03, 0.1, 0.6))
    assert low.count("surgical") >= 3, low
    assert "surgical" not in high, high
    for labels in (low, medium, high):
        assert set(labels) <= set(regimes.REGIMES)

    def mean_ratio(strength):
        # an empty reply has no perplexity: count it as infinitely unexpected
        return float(np.mean([np.inf if f["ppl_ratio"] is None else f["ppl_ratio"]
                              for f in features[strength]]))

    # pushed, the text is less expected by the unsteered model than when barely steered (far
    # pushes may collapse into loops, which are expected again, so no order among those two)
    assert mean_ratio(0.03) < min(mean_ratio(0.1), mean_ratio(0.6)), \
        [mean_ratio(s) for s in features]


@pytest.mark.slow
def test_unsteered_perplexity_ratio_is_one(runtime, scorer):
    s = prompts.select_scenarios(1)[0]
    runtime.clear()
    text = runtime.generate(s["prompt"], max_tokens=32, seed=0)
    ids = runtime.prompt_ids([{"role": "user", "content": s["prompt"]}])
    features = regimes.text_features(text, text, ids, scorer)
    assert features["ppl_ratio"] == 1.0 and 1.0 < features["ppl"] < 50


@pytest.mark.slow
def test_the_scorer_reads_a_shared_prompt_start_once_and_scores_the_same(runtime, scorer,
                                                                         monkeypatch):
    """Replies scored one after another share the chat template's start (and a request): the
    scorer reads only what follows it, and every log-probability is the one read from scratch."""
    from edgeemo import _llama

    read = []                                             # tokens llama.cpp is given to read
    evaluate = scorer.llm.eval
    monkeypatch.setattr(scorer.llm, "eval", lambda ids: (read.append(len(ids)), evaluate(ids)))
    texts = [("Can you explain how to make a cup of tea?", "Boil water, add the leaves, wait."),
             ("Can you explain how to make a cup of tea?", "No. Tea is a dreadful drink!"),
             ("What should I pack for a beach holiday?", "Sun cream, a hat and a good book.")]
    shared, scored, lengths = [], [], []
    for request, reply in texts:
        ids = runtime.prompt_ids([{"role": "user", "content": request}])
        shared.append(_llama.cached_prefix(scorer.llm, ids))
        lengths.append(len(ids))
        scored.append(scorer.logprobs(ids, reply))
    # the same request: all its prompt is held; another: the template's start (system prompt)
    assert shared[1] == lengths[1] and 0 < shared[2] < lengths[2], (shared, lengths)
    replies = [len(_llama.tokenize(scorer.llm, reply, bos=False)) for _, reply in texts]
    assert read[1:] == [replies[1] + 1, lengths[2] - shared[2] + replies[2]], (read, replies)
    for (request, reply), lp in zip(texts, scored):
        _llama.reset(scorer.llm)                          # from scratch
        ids = runtime.prompt_ids([{"role": "user", "content": request}])
        np.testing.assert_allclose(scorer.logprobs(ids, reply), lp, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_evaluate_is_reproducible(runtime, tmp_path):
    scenarios = prompts.select_scenarios(3)
    runs = [ev.evaluate(runtime, ["afraid", "happy"], [0.04, 0.1], scenarios, seed=0,
                        max_tokens=32) for _ in range(2)]
    first, second = runs
    assert len(first["samples"]) == 2 * 2 * 3 and len(first["baseline"]) == 3
    assert [s["text"] for s in first["samples"]] == [s["text"] for s in second["samples"]]
    assert first["summary"] == second["summary"]
    sm = first["summary"]
    for judge in ("lexicon", "probe"):
        flags = [s["judges"][judge]["success"] for s in first["samples"]]
        assert sm["success"][judge]["overall"] == pytest.approx(sum(flags) / len(flags), abs=1e-4)
        assert set(sm["success"][judge]["per_strength"]) == {"0.04", "0.1"}
    assert sum(sm["regimes"]["overall"].values()) == pytest.approx(1.0)
    assert all(s["judges"]["probe"]["steered"] is not None or s["features"]["empty"]
               for s in first["samples"])
    paths = report.write_report(first, tmp_path / "report")
    assert paths["markdown"].is_file() and paths["regimes"].stat().st_size > 1000

    # judging the recorded replies again gives what evaluate gave, without generating
    again = copy.deepcopy(second)
    for row in [*again["baseline"], *again["chance"]]:
        row.pop("lexicon", None)
    for sample in again["samples"]:
        sample["judges"].pop("lexicon")
    again["settings"]["judges"].remove("lexicon")
    ev.add_judges(again, ["lexicon"])
    assert [s["judges"]["lexicon"] for s in again["samples"]] == \
        [s["judges"]["lexicon"] for s in first["samples"]]
    assert again["summary"]["success"]["lexicon"] == sm["success"]["lexicon"]


@pytest.mark.slow
def test_recommended_strength_is_each_vectors_own(runtime):
    from edgeemo.vectors import recommended_strength

    scenarios = prompts.select_scenarios(2)
    own = recommended_strength(runtime.vector(EMOTION))        # the reply strength, if any
    result = ev.evaluate(runtime, [EMOTION], [None], scenarios, seed=0, max_tokens=24,
                         use_probe=False, chance=False)
    # the baseline of the first run is reused, not answered again: same samples all the same
    explicit = ev.evaluate(runtime, [EMOTION], [own], scenarios, seed=0, max_tokens=24,
                           use_probe=False, chance=False, baseline=result["baseline"])
    assert result["timing"]["replies"] == 2 * len(scenarios)
    assert explicit["timing"]["replies"] == len(scenarios)
    assert explicit["baseline"] == result["baseline"]
    with pytest.raises(EdgeemoError, match="lacks some of its scenarios"):
        ev.evaluate(runtime, [EMOTION], [own], scenarios, seed=0, max_tokens=24, use_probe=False,
                    chance=False, baseline=result["baseline"][:1])
    assert result["settings"]["recommended_strengths"] == {EMOTION: own}
    assert {s["setting"] for s in result["samples"]} == {"recommended"}
    assert {s["strength"] for s in result["samples"]} == {own}
    assert [s["text"] for s in result["samples"]] == [s["text"] for s in explicit["samples"]]
    assert set(result["summary"]["success"]["lexicon"]["per_strength"]) == {"recommended"}
    assert "Recommended strengths" in report.markdown_report(result)


@pytest.mark.slow
def test_calibration_answers_the_verify_prompts_unsteered_once_for_every_emotion(runtime,
                                                                                 monkeypatch):
    """The unsteered replies to the verify prompts depend on neither emotion nor strength: the
    first emotion's verification makes them, the next ones reuse them."""
    real, given = calibration.evaluate, []

    def spy(*args, baseline=None, **kwargs):
        given.append(None if baseline is None else [b["text"] for b in baseline])
        return real(*args, baseline=baseline, **kwargs)

    monkeypatch.setattr(calibration, "evaluate", spy)
    scenarios = prompts.select_scenarios(1)
    verify = calibration.other_scenarios([s["id"] for s in scenarios], 1)
    chosen = calibration.calibrate(runtime, [EMOTION, "calm"], strengths=(0.02,),
                                   judge="lexicon", use_probe=False, scenarios=scenarios,
                                   max_tokens=8, verify=verify)
    assert all(info["verified"]["scenarios"] == [verify[0]["id"]] for info in chosen.values())
    calls = given[1:]                       # given[0]: the calibration run itself
    assert len(calls) == 2 and calls[0] is None, given
    assert calls[1] and len(calls[1]) == 1 and calls[1][0].strip()


def test_calibration_pools_several_seeds_in_each_cell(runtime, monkeypatch):
    """With seeds 0 and 1, each strength's on-task share is taken over both runs' replies
    (twice the replies of one seed), and the seeds are recorded; the older scenario judges
    take one seed only and say so."""
    real, results = calibration.evaluate, []

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(calibration, "evaluate", spy)
    scenarios = prompts.select_scenarios("r05", pool="requests")
    chosen = calibration.calibrate(runtime, [EMOTION], strengths=(0.03,), scenarios=scenarios,
                                   seeds=(0, 1), max_tokens=8, readers=["reader-smollm2"])
    info, samples = chosen[EMOTION], results[0]["samples"]
    assert info["seeds"] == [0, 1] and sorted(s["run"] for s in samples) == [0, 1]
    assert samples[0]["text"] != samples[1]["text"]
    shares = [s["on_task"]["on_task"] for s in samples]
    assert info["per_strength"]["0.03"]["on_task_share"] == pytest.approx(np.mean(shares))
    with pytest.raises(EdgeemoError, match="several seeds"):
        calibration.calibrate(runtime, [EMOTION], strengths=(0.03,), judge="lexicon",
                              seeds=(0, 1), scenarios=scenarios, max_tokens=8)
    runtime.clear()


def test_stock_strength_steps_down_until_stock_llama_cpp_replies_hold(runtime, tmp_path):
    """Far too strong for whole-sequence greedy replies, 0.6 is stepped down; the file then
    holds the stock strength in its tensors and the calibrated one for reply-only steering."""
    from edgeemo.steer import find_vector
    from edgeemo.vectors import ControlVector

    scenarios = prompts.select_scenarios("r05,r08", pool="requests")
    unsteered = []
    found = calibration.stock_strength(runtime, EMOTION, 0.6, scenarios, max_tokens=48,
                                       unsteered=unsteered)
    assert len(unsteered) == 2 and found["unsteered_surgical"] >= 1, unsteered
    tried = [float(k) for k in found["tried"]]
    assert tried[0] == 0.6 and tried == sorted(tried, reverse=True)
    assert tried[-1] == found["strength"]
    assert found["tried"]["0.6"]["failed"] > 2 - found["unsteered_surgical"]
    assert found["strength"] < 0.6 and runtime.mix == {}
    info = {"strength": 0.08, "per_strength": {}, "stock": {**found, "strength": 0.04}}
    out = calibration.apply_calibration(find_vector(runtime.model, EMOTION), 0.08, info,
                                        output=tmp_path / f"{EMOTION}.gguf")
    vec = ControlVector.from_gguf(out)
    assert vec.metadata["strength"] == 0.04 and vec.metadata["reply_strength"] == 0.08
    assert vec.metadata["calibration_stock_held"] is found["held"]
    try:
        runtime.vectors[EMOTION] = runtime.vector(str(out))
        assert runtime.steer({EMOTION: None}) == {EMOTION: 0.08}
        assert runtime.steer({EMOTION: None}, steer_prompt=True) == {EMOTION: 0.04}
    finally:
        runtime.vectors.pop(EMOTION, None)
        runtime.clear()


@pytest.mark.slow
def test_calibrate_one_emotion_writes_the_chosen_strength(runtime, tmp_path):
    from edgeemo.steer import find_vector
    from edgeemo.vectors import ControlVector

    scenarios = prompts.select_scenarios(2)
    verify = calibration.other_scenarios([s["id"] for s in scenarios], 2)
    chosen = calibration.calibrate(runtime, [EMOTION], strengths=(0.03, 0.06), judge="both",
                                   scenarios=scenarios, max_tokens=32, verify=verify)
    info = chosen[EMOTION]
    assert info["window"], info["per_strength"]      # 0.03 keeps the default model fluent
    # the chosen strength was checked on the other scenarios, stepping down from the best
    checked = info["verified"]["surgical_share"]
    assert info["verified"]["scenarios"] == [s["id"] for s in verify]
    tried = [float(k) for k in checked]
    assert tried == sorted(tried, reverse=True) and set(tried) <= set(info["window"])
    assert all(share < calibration.SURGICAL_WINDOW for share in list(checked.values())[:-1])
    if info["strength"] is not None:
        assert checked[ev.strength_key(info["strength"])] >= calibration.SURGICAL_WINDOW
    assert set(info["per_strength"]) == {"0.03", "0.06"}
    assert info["strength"] in (0.03, 0.06, None)
    strength = info["strength"] or 0.03
    source = find_vector(runtime.model, EMOTION)
    out = calibration.apply_calibration(source, strength, info, output=tmp_path / f"{EMOTION}.gguf")
    vec = ControlVector.from_gguf(out)
    assert vec.metadata["calibrated"] is True and vec.metadata["strength"] == strength
    for layer, norm in zip(vec.layers, vec.metadata["residual_norm"]):
        assert np.linalg.norm(vec.directions[layer]) == pytest.approx(strength * norm, rel=1e-5)
    # the runtime steers with the calibrated file at its new recommended strength
    runtime.vectors.pop(EMOTION, None)
    runtime.vectors[EMOTION] = runtime.vector(str(out))
    assert runtime.steer({EMOTION: None}) == {EMOTION: strength}
    runtime.clear()
    runtime.vectors.pop(EMOTION, None)


@pytest.mark.slow
def test_calibrate_vectors_rewrites_the_files_it_evaluated_in_place_or_not_at_all(runtime,
                                                                                  tmp_path):
    import shutil

    from edgeemo.steer import find_vector
    from edgeemo.vectors import ControlVector

    shutil.copy(find_vector(runtime.model, EMOTION), tmp_path / f"{EMOTION}.gguf")
    before = (tmp_path / f"{EMOTION}.gguf").read_bytes()
    options = dict(strengths=(0.03,), scenarios=prompts.select_scenarios(1), judge="both",
                   max_tokens=16, verify=[])
    try:
        dry = calibration.calibrate_vectors(runtime, [EMOTION], vector_dir=tmp_path,
                                            dry_run=True, **options)
        assert dry[EMOTION]["written"] is None
        assert (tmp_path / f"{EMOTION}.gguf").read_bytes() == before
        done = calibration.calibrate_vectors(runtime, [EMOTION], vector_dir=tmp_path, **options)
    finally:
        runtime.vectors.pop(EMOTION, None)
    info = done[EMOTION]
    assert info["source"] == str(tmp_path / f"{EMOTION}.gguf")
    if info["strength"] is None:                     # 0.03 left the window: nothing written
        assert info["written"] is None and (tmp_path / f"{EMOTION}.gguf").read_bytes() == before
    else:
        assert info["written"] == info["source"]
        vec = ControlVector.from_gguf(tmp_path / f"{EMOTION}.gguf")
        assert vec.metadata["calibrated"] is True and vec.metadata["strength"] == 0.03


@pytest.mark.slow
def test_calibrate_with_cross_fit_tone_readers(runtime):
    """Calibration judged by other readers (here: a tone reader made from half of the dialogue
    requests), on everyday requests, with the on-task window."""
    from edgeemo import stimuli

    requests = list(dict.fromkeys(r["request"] for r in stimuli.dialogue()))
    with judges.tone_readers_from(requests[1::2]):
        chosen = calibration.calibrate(runtime, [EMOTION], strengths=(0.03, 0.3),
                                       scenarios=prompts.select_scenarios("r05,r08", pool="requests"),
                                       max_tokens=24, readers=["tone-smollm2"])
    info = chosen[EMOTION]
    assert info["judge"] == "tone-smollm2" and set(info["margins"]) == {"tone-smollm2"}
    rows = info["per_strength"]
    assert set(rows) == {"0.03", "0.3"}
    assert all(set(r) >= {"success_tone-smollm2", "on_task_share", "coherent_share"}
               for r in rows.values())
    # far too strong a push leaves the request behind, so it is never chosen
    assert rows["0.3"]["on_task_share"] < calibration.ON_TASK_MIN or \
        rows["0.3"]["coherent_share"] < calibration.COHERENT_MIN
    assert info["window"] in ([], [0.03]) and info["strength"] in (None, 0.03)
    runtime.clear()


def test_rejudge_applies_the_current_margins_and_thresholds():
    result = _constructed_result()
    result["chance"] = []
    sample = result["samples"][0]
    sample["judges"]["lexicon"]["delta"] = judges.LEXICON_MARGIN / 2      # below the margin now
    sample["regime"] = "explosive"                                   # stale label
    ev.rejudge(result)
    assert sample["judges"]["lexicon"]["success"] is False
    assert sample["regime"] == "surgical"
    assert result["summary"]["success"]["lexicon"]["overall"] == 0.0


# --- the commands ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--strengths", "strong"], "bad strength 'strong'"),
    (["--strengths", "-0.05"], "is not positive"),
    (["--emotions", "sleepy"], "sleepy"),
    (["--scenarios", "s999"], "unknown scenario id"),
])
def test_evaluate_command_refuses_bad_input_in_one_line(args, message):
    from click.testing import CliRunner

    from edgeemo.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_evaluate_command_at_recommended_strength(vectors, tmp_path):
    from click.testing import CliRunner

    from edgeemo.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "--emotions", EMOTION, "--strengths",
                                      "recommended", "--scenarios", "1", "--max-tokens", "16",
                                      "--threads", "1", "--json", "--report",
                                      str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["strengths"] == [None]
    assert len(data["samples"]) == 1 and data["samples"][0]["setting"] == "recommended"
    assert (tmp_path / "r" / "report.md").is_file()


# --- independent judges: held-out readers and the on-task check ---------------------------------

def test_chance_margin_is_the_90th_percentile():
    assert judges.chance_margin(list(np.arange(1, 11) / 10)) == pytest.approx(0.91)
    assert judges.chance_margin([]) == 0.0


def test_identification_and_chat_success_of_a_constructed_result():
    def sample(emotion, scenario, own, other, on_task=True, regime="surgical"):
        scores = {e: (own if e == emotion else other) for e in ("afraid", "happy")}
        return {"emotion": emotion, "scenario": scenario, "setting": "0.05", "strength": 0.05,
                "regime": regime, "on_task": {"on_task": on_task},
                "judges": {"reader-smollm2": {"success": own > 0.5, "scores": scores}}}

    result = {"settings": {"emotions": ["afraid", "happy"], "strengths": [0.05],
                           "judges": ["reader-smollm2"]},
              "samples": [sample("afraid", "r01", 0.9, 0.1), sample("happy", "r01", 0.2, 0.8),
                          sample("afraid", "r02", 0.9, 0.1, on_task=False),
                          sample("happy", "r02", 0.9, 0.1, regime="repetitive")],
              "chance": [{"on_task": {"on_task": True}}, {"on_task": {"on_task": False}}]}
    chat = ev.chat_summary(result)
    # r01: afraid's reply scores 0.9 for afraid, happy's 0.8: hit; happy's reply 0.2 for happy,
    # afraid's reply 0.1: hit. r02: both hits.
    assert chat["identification"]["reader-smollm2"] == {"top1": 1.0, "chance": 0.5, "n": 4}
    assert chat["moved"]["reader-smollm2"] == 0.75
    assert chat["success"]["reader-smollm2"] == 0.25          # only r01 afraid is all three
    assert chat["on_task"] == 0.75 and chat["on_task_unsteered"] == 0.5
    assert chat["cells"]["happy"]["0.05"]["coherent"] == 0.5


@pytest.mark.slow
def test_embedder_matches_transformers_and_tells_on_from_off_task():
    import torch
    import transformers

    from edgeemo.evaluation import ontask

    directory = ontask.fetch()
    texts = ["Boil the water, steep the tea for three minutes, then add milk if you like."]
    mine = ontask.Embedder(directory).embed(texts)[0]
    bert = transformers.BertModel.from_pretrained(str(directory), config=transformers.BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    tok._tokenizer.no_padding()
    with torch.no_grad():
        ref = bert(**tok(texts[0], return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    assert float(mine @ ref / np.linalg.norm(ref)) > 0.9999
    checked = ontask.on_task_scores(
        ["Can you explain how to make a cup of tea?"] * 2,
        [texts[0], "A noose wrapped tight around my throat as the darkness fell on the moor."],
        ["Sure! Boil water, pour it over a tea bag, wait a few minutes and enjoy."] * 2)
    assert [c["on_task"] for c in checked] == [True, False]


@pytest.mark.slow
def test_held_out_reader_ranks_unseen_emotional_texts(default_export):
    judge = judges.JUDGES["reader-smollm2"]()
    texts = {"afraid": "The footsteps stopped right outside my door and the handle began to turn.",
             "happy": "We laughed all the way home, the sun was out and everything felt easy.",
             "angry": "He slammed the door and shouted that he was sick of being lied to."}
    scores = judge.read(list(texts.values()) + ["   "])
    assert scores[-1] is None
    for (emotion, _), s in zip(texts.items(), scores):
        others = [s[e] for e in texts if e != emotion]
        assert s[emotion] > max(others), (emotion, s)


def test_tone_reader_ranks_unseen_replies_by_tone(default_export):
    """Three replies to one request, new text, same content, only the tone differs."""
    judge = judges.JUDGES["tone-smollm2"]()
    replies = {
        "afraid": "Oh no, I really hope nothing goes wrong. Check the stove twice, please, and keep "
                  "the lid on; a pan left alone can catch fire so quickly, it frightens me.",
        "enthusiastic": "Yes, let's do it! Heat the pan, add the butter and watch it sizzle, this "
                        "is going to be the best omelette you've made, I love it!",
        "angry": "Fine. Heat the pan. Add the butter. And for the last time, stop leaving it on "
                 "full heat, I am sick of scraping burnt eggs off everything.",
    }
    scores = judge.read(list(replies.values()))
    for (emotion, _), s in zip(replies.items(), scores):
        assert s[emotion] == max(other[emotion] for other in scores), (emotion, s)


def test_tone_readers_can_be_made_from_some_requests_only():
    """A cross-fit: within the block the tone readers read only the chosen requests' replies."""
    from edgeemo import stimuli

    tone = judges.JUDGES["tone-smollm2"]
    everything = tone.texts()
    requests = list(dict.fromkeys(r["request"] for r in stimuli.dialogue()))
    half = requests[1::2]
    with judges.tone_readers_from(half):
        some = tone.texts()
        assert tone.source() == frozenset(half)
    assert tone.source() is None and tone.texts() == everything
    for emotion, texts in some.items():
        assert len(texts) == len(half) < len(everything[emotion])
        assert set(texts) < set(everything[emotion])
    for bad in ([], ["How do I build a spaceship?"]):
        with pytest.raises(EdgeemoError, match="requests of dialogue.jsonl"):
            with judges.tone_readers_from(bad):
                pass
    assert tone.source() is None

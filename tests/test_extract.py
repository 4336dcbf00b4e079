"""Extraction, directions and localisation on the real default model (and Gemma for the curve)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeemo import analysis, emotions, extract, models, stimuli
from edgeemo.errors import EdgeemoError
from edgeemo.extract import Activations


# --- fast: pooling and directions on made-up states ---------------------------------------------

def test_pooling_leaves_out_attention_sinks():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 6, 4)).astype(np.float32)
    states[:, 0] *= 1000          # the first position, as in SmolLM2
    states[:, 3] *= 1000          # a second sink in the middle
    keep = extract.content_mask(states)
    assert keep.tolist() == [False, True, True, False, True, True]
    pooled, _ = extract.pool(states)
    np.testing.assert_allclose(pooled, states[:, [1, 2, 4, 5]].mean(1), rtol=1e-6)
    last, _ = extract.pool(states, how="last")
    np.testing.assert_array_equal(last, states[:, 5])
    assert extract.content_mask(states, start=4).tolist() == [False] * 4 + [True, True]


def toy_activations(n_emotions=4, n=6, d=8, seed=0) -> Activations:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_emotions, 2, d)) * 3
    by_label = {f"e{i}": (centres[i] + rng.normal(size=(n, 2, d))).astype(np.float32)
                for i in range(n_emotions)}
    by_label["neutral"] = rng.normal(size=(n, 2, d)).astype(np.float32)
    return Activations("comprehension", [5, 6], by_label, np.array([10.0, 12.0]),
                       {"n_layer": 8, "model": "toy", "architecture": "llama", "n_embd": d,
                        "source_sha256": "0" * 64})


def test_directions_and_their_options():
    acts = toy_activations()
    dirs = analysis.directions(acts)
    np.testing.assert_allclose(dirs["e0"], acts.by_label["e0"].mean(0) - acts.by_label["neutral"].mean(0),
                               rtol=1e-5)
    grand = np.stack(list(analysis.directions(acts, baseline="grand").values()))
    np.testing.assert_allclose(grand.sum(0), 0, atol=1e-4)         # grand-mean centred
    comps = analysis.neutral_components(acts, 2)
    denoised = analysis.directions(acts, denoise=2)["e0"]
    assert np.abs(np.einsum("ld,lkd->lk", denoised, comps)).max() < 1e-4


def test_separable_toy_data_scores_high_and_noise_scores_chance():
    acts = toy_activations()
    assert analysis.cv_accuracy(acts).min() > 0.9
    noise = toy_activations()
    rng = np.random.default_rng(1)
    for k in noise.by_label:
        noise.by_label[k] = rng.normal(size=noise.by_label[k].shape).astype(np.float32)
    assert analysis.cv_accuracy(noise).mean() < 0.6
    assert analysis.fisher_ratio(acts).min() > analysis.fisher_ratio(noise).max()


def test_best_band_is_the_best_window():
    scores = np.array([0.1, 0.2, 0.5, 0.6, 0.7, 0.65, 0.3, 0.1])
    assert analysis.best_band(scores, list(range(2, 10)), width=3) == (5, 7)


def test_make_vector_scales_by_residual_norm():
    acts = toy_activations()
    vec = analysis.make_vector(acts, "e0", analysis.directions(acts)["e0"], (5, 6), strength=0.1)
    assert vec.layers == [4, 5]                                      # hidden k -> llama.cpp k-1
    assert np.isclose(np.linalg.norm(vec.directions[4]), 0.1 * 10.0, rtol=1e-5)
    assert np.isclose(np.linalg.norm(vec.directions[5]), 0.1 * 12.0, rtol=1e-5)
    assert vec.metadata["strength"] == pytest.approx(0.1)
    assert vec.metadata["residual_norm"] == [10.0, 12.0]


# --- slow: the real default model ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["comprehension", "generation"])
def test_heldout_classification_is_well_above_chance(method, request, default_export):
    from edgeemo.reader import HiddenStateReader

    acts = request.getfixturevalue(f"{method}_acts")
    assert sorted(acts.emotions) == sorted(emotions.EMOTIONS)
    band = analysis.best_band(analysis.band_scores(acts), acts.layers)
    result = analysis.heldout_accuracy(acts, stimuli.heldout(), HiddenStateReader(default_export), band)
    print(f"{method}: held-out top-1 {result['top1']:.3f}, top-3 {result['top3']:.3f} "
          f"(n={result['n']}, chance {result['chance']:.2f}), band {band}")
    assert result["top1"] >= 2.5 * result["chance"]
    if method == "comprehension":
        assert result["top1"] >= 0.7              # 0.77 measured (docs/results.md)


@pytest.mark.slow
def test_stories_are_seeded_and_cached(tmp_path, monkeypatch, default_gguf):
    from edgeemo.steer import EmotionModel

    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    runtime = EmotionModel(models.resolve(str(default_gguf)))
    prompt = stimuli.generation_prompts("afraid")[0]
    first = extract.write_story(runtime, prompt, seed=3, max_tokens=24)
    cached = extract.story_cache_path(runtime.model, prompt, 3, 24)
    assert cached.is_file()
    cached.unlink()
    again = extract.write_story(runtime, prompt, seed=3, max_tokens=24)
    other = extract.write_story(runtime, prompt, seed=4, max_tokens=24)
    assert first["story_ids"] == again["story_ids"]
    assert other["story_ids"] != first["story_ids"]
    assert first["prompt_ids"][:1] == runtime.prompt_ids([{"role": "user", "content": "x"}])[:1]


def layer_curve(export_dir):
    from edgeemo.reader import HiddenStateReader

    reader = HiddenStateReader(export_dir)
    acts = extract.comprehension(reader)
    facts, _ = extract.read_pooled(reader, stimuli.neutral_facts(), acts.layers)
    return analysis.layer_report(acts, facts)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_layer_curve_for_both_architecture_families(name, request):
    fixture = "default_export" if name.startswith("smollm2") else "gemma_export"
    report = layer_curve(request.getfixturevalue(fixture))
    n_layer = report["n_layer"]
    assert len(report["accuracy"]) == len(report["cosine"]) == len(report["anisotropy"]) == n_layer - 2
    peak = int(np.argmax(report["accuracy"]))
    print(f"{name}: peak accuracy {max(report['accuracy']):.3f} at depth {report['depth'][peak]:.2f}; "
          f"best band {report['best_band']} = depth {report['best_band_depth']}")
    assert max(report["accuracy"]) >= 5 * report["chance"]
    assert 0.2 <= report["best_band_depth"][0] and report["best_band_depth"][1] <= 0.95
    # emotions separate better in the middle than right after the embeddings
    assert max(report["accuracy"]) > report["accuracy"][0] + 0.1


@pytest.mark.slow
def test_dialogue_reads_only_the_replies_and_pairs_them(default_export):
    """Dialogue activations: replies read inside the chat template, pooled over the reply's
    tokens; the direction is the mean paired difference (emotional - neutral, same request)."""
    from edgeemo.reader import HiddenStateReader

    reader = HiddenStateReader(default_export)
    rows = [r for r in stimuli.dialogue(["afraid", "happy"])
            if r["request"] in {q["request"] for q in stimuli.dialogue()[:42:21]}]
    acts = extract.dialogue(reader, rows, layers=[10, 16])
    assert acts.method == "dialogue" and acts.info["paired"] is True
    assert set(acts.by_label) == {"afraid", "happy", "neutral"}
    assert all(v.shape == (2, 2, 576) for v in acts.by_label.values())
    # the same reply read alone after its user turn, pooled from the reply's first token
    first = next(r for r in rows if r["emotion"] == "afraid")
    turn = reader.turn_ids(first["request"])
    states = next(reader.read([turn + reader.encode(first["text"])], [10, 16]))
    pooled, _ = extract.pool(states, len(turn))
    np.testing.assert_allclose(acts.by_label["afraid"][0], pooled, rtol=1e-4, atol=1e-4)
    paired = (acts.by_label["afraid"] - acts.by_label["neutral"]).mean(0)
    np.testing.assert_allclose(analysis.directions(acts)["afraid"], paired, rtol=1e-4, atol=1e-3)


def test_the_default_recipe_follows_the_texts(tmp_path):
    from edgeemo.make import check_settings, recipe

    assert recipe(["afraid", "calm"]) == "dialogue"
    assert recipe(["nostalgia"]) == "generation"               # no shipped texts name it
    dialogue = tmp_path / "d.jsonl"
    dialogue.write_text('{"request": "Hi", "emotion": "afraid", "text": "Oh no."}\n')
    vignettes = tmp_path / "v.jsonl"
    vignettes.write_text('{"emotion": "afraid", "text": "The door creaked."}\n')
    assert recipe(["afraid"], dialogue) == "dialogue" and recipe(["afraid"], vignettes) == \
        "comprehension"
    plan = check_settings(["fear"])
    assert (plan.method, plan.baseline, plan.strength) == ("dialogue", None, None)
    with pytest.raises(EdgeemoError, match="grand baseline"):
        check_settings(["nostalgia"], baseline="grand")


def test_the_prebuilt_band_is_used_only_for_its_own_recipe():
    """A vector made the way the prebuilt ones were (same model file, texts, method, baseline,
    pooling) reads only their band; any other recipe searches for its own."""
    from edgeemo.make import prebuilt_band
    from edgeemo.vectors import ControlVector

    model = models.resolve("smollm2-135m-instruct")
    shipped = ControlVector.from_gguf(models.shipped_dir("vectors") / model.card.name /
                                      "afraid.gguf").metadata["layers"]
    assert prebuilt_band(model, "dialogue", "grand", "mean", 0) == \
        tuple(int(x) for x in shipped.split("-"))
    for method, baseline, pooling, denoise in (("dialogue", "neutral", "mean", 0),
                                               ("comprehension", "grand", "mean", 0),
                                               ("generation", "grand", "mean", 0),
                                               ("dialogue", "grand", "last", 0),
                                               ("dialogue", "grand", "mean", 2)):
        assert prebuilt_band(model, method, baseline, pooling, denoise) is None


def test_a_subset_of_layers_comes_from_the_cache_of_every_layer(comprehension_acts,
                                                                 monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("read again")

    monkeypatch.setattr(extract, "HiddenStateReader", no_reading)
    part = extract.activations(models.resolve("smollm2-135m-instruct"), "comprehension",
                               layers=[16, 10])
    assert part.layers == [10, 16]
    at = [comprehension_acts.layers.index(k) for k in (10, 16)]
    for label, states in comprehension_acts.by_label.items():
        np.testing.assert_array_equal(part.by_label[label], states[:, at])
    np.testing.assert_array_equal(part.norms, comprehension_acts.norms[at])


@pytest.mark.slow
def test_reading_only_the_band_pools_what_a_full_read_pools(default_export):
    """The first vector reads only the band's layers. Attention sinks are found on the layers
    read, so this checks that the pooled states are still those of a read of every layer."""
    from edgeemo.reader import HiddenStateReader

    reader = HiddenStateReader(default_export)
    rows = [r for r in stimuli.dialogue()
            if r["request"] in {q["request"] for q in stimuli.dialogue()[:42:21]}]
    band = [15, 16, 17, 18, 19]
    full = extract.dialogue(reader, rows).only(band)
    part = extract.dialogue(reader, rows, layers=band)
    for label, states in full.by_label.items():
        np.testing.assert_allclose(part.by_label[label], states, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(part.norms, full.norms, rtol=1e-5)


@pytest.mark.slow
def test_the_default_vector_is_the_kind_that_ships_at_its_strength(default_export, tmp_path):
    from edgeemo.make import make_vectors
    from edgeemo.vectors import ControlVector

    model = models.resolve("smollm2-135m-instruct")
    [path] = make_vectors(model, ["fear"], output=tmp_path / "fear.gguf")
    made = ControlVector.from_gguf(path).metadata
    shipped = ControlVector.from_gguf(models.shipped_dir("vectors") / model.card.name /
                                      "afraid.gguf").metadata
    assert (made["method"], made["baseline"]) == ("dialogue", "grand")
    assert made["layers"] == shipped["layers"] and made["strength"] == shipped["strength"]
    assert made["strength_from"] == "prebuilt afraid.gguf"
    [path] = make_vectors(model, ["fear"], strength=0.05, output=tmp_path / "asked.gguf")
    asked = ControlVector.from_gguf(path).metadata
    assert asked["strength"] == 0.05 and "strength_from" not in asked


@pytest.mark.slow
def test_dialogue_vectors_come_from_the_library(default_export, tmp_path):
    from edgeemo.make import make_vectors
    from edgeemo.vectors import ControlVector

    paths = make_vectors(models.resolve("smollm2-135m-instruct"), ["fear", "joy"],
                         method="dialogue", baseline="grand", output=tmp_path)
    assert [p.name for p in paths] == ["afraid.gguf", "happy.gguf"]
    vec = ControlVector.from_gguf(paths[0])
    assert vec.metadata["method"] == "dialogue" and vec.metadata["baseline"] == "grand"
    with pytest.raises(EdgeemoError, match="writes its own stories"):
        make_vectors(models.resolve("smollm2-135m-instruct"), ["fear"], method="generation",
                     stimuli_file=paths[0], output=tmp_path)

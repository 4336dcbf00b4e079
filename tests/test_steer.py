"""Steered inference on the real default model, through llama.cpp."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemo import _llama, models, stimuli
from edgeemo.cli import cli
from edgeemo.errors import EdgeemoError, VectorFormatError
from edgeemo.steer import Completion, EmotionModel
from edgeemo.vectors import ControlVector

pytestmark = pytest.mark.slow

PROMPT = "Tell me about your morning."
GREEDY = {"max_tokens": 40, "temperature": 0, "seed": 0}


@pytest.fixture(scope="module")
def runtime(default_gguf):
    return EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=512)


def test_prebuilt_vectors_cover_all_20_emotions():
    from edgeemo import emotions

    shipped = models.shipped_dir("vectors") / "smollm2-135m-instruct"
    for emotion in emotions.EMOTIONS:
        vec = ControlVector.from_gguf(shipped / f"{emotion}.gguf")
        assert vec.metadata["emotion"] == emotion
        assert vec.metadata["source_sha256"] == models.cards()["smollm2-135m-instruct"].sha256


def test_steering_changes_the_text_and_clearing_restores_it(runtime):
    runtime.clear()
    plain = runtime.generate(PROMPT, **GREEDY)
    runtime.steer({"afraid": None})
    steered = runtime.generate(PROMPT, **GREEDY)
    runtime.clear()
    assert steered != plain
    assert runtime.generate(PROMPT, **GREEDY) == plain


def test_a_mix_is_the_sum_of_its_parts_in_the_buffer(runtime, monkeypatch):
    received = []
    real_apply = _llama.set_control_vector
    monkeypatch.setattr(_llama, "set_control_vector", lambda llm, buf, **kw: (
        received.append(buf), real_apply(llm, buf, **kw)))
    runtime.steer({"afraid": 0.06, "calm": -0.03, "happy": 0.02})
    afraid, calm, happy = (runtime.vector(n) for n in ("afraid", "calm", "happy"))
    expected = (afraid.buffer(runtime.n_layer, 0.06 / afraid.metadata["strength"])
                + calm.buffer(runtime.n_layer, -0.03 / calm.metadata["strength"])
                + happy.buffer(runtime.n_layer, 0.02 / happy.metadata["strength"]))
    np.testing.assert_allclose(received[-1], expected, rtol=1e-6, atol=1e-7)
    assert received[-1].dtype == np.float32 and received[-1].size == 576 * 29
    runtime.clear()
    assert received[-1] is None


def test_every_form_of_a_mix_sets_the_same_buffer(runtime, monkeypatch, tmp_path):
    from pathlib import Path

    from edgeemo.mix import Mix
    from edgeemo.steer import find_vector

    received = []
    real_apply = _llama.set_control_vector
    monkeypatch.setattr(_llama, "set_control_vector", lambda llm, buf, **kw: (
        received.append(buf), real_apply(llm, buf, **kw)))

    def buffer(mix):
        applied = runtime.steer(mix)
        return applied, received[-1]

    from edgeemo.vectors import recommended_strength

    afraid = find_vector(runtime.model, "afraid")
    own = recommended_strength(runtime.vector("afraid"))       # its reply_strength, if any
    expected, buf = buffer({"afraid": 0.06, "calm": -0.03})
    for mix in ("fear:0.06,calm:-0.03", {"scared": 0.06, "Calm": -0.03},
                Mix.parse("afraid:0.06,calm:-0.03")):
        applied, got = buffer(mix)
        assert applied == expected == {"afraid": 0.06, "calm": -0.03}, mix
        np.testing.assert_array_equal(got, buf)
    # a vector file, by path: in a dict, a string, a Path or a Mix, with or without a strength
    _, by_name = buffer({"afraid": None})
    for mix in ({str(afraid): None}, str(afraid), Path(afraid), Mix.from_path(afraid)):
        applied, got = buffer(mix)
        assert applied == {str(afraid): own}, mix
        np.testing.assert_array_equal(got, by_name)
    _, by_name = buffer({"afraid": 0.05})
    for mix in (f"{afraid}:0.05", {str(afraid): 0.05}, Mix.from_path(afraid, 0.05)):
        applied, got = buffer(mix)
        assert applied == {str(afraid): 0.05}, mix
        np.testing.assert_array_equal(got, by_name)
    # a copy with no '.gguf' in a directory: a file in a string too, not an unknown emotion
    (tmp_path / "fear-copy").write_bytes(afraid.read_bytes())
    applied, got = buffer(f"{tmp_path / 'fear-copy'}:0.05")
    assert applied == {str(tmp_path / "fear-copy"): 0.05}
    np.testing.assert_array_equal(got, by_name)
    for empty in (None, {}, Mix()):
        assert runtime.steer(empty) == {} and received[-1] is None


def test_only_the_vectors_layers_are_steered_and_that_changes_nothing(runtime, monkeypatch):
    ranges = []
    real_function = _llama._cvec_function()
    monkeypatch.setattr(_llama, "_cvec_function", lambda: lambda ctx, data, length, n_embd, a, b: (
        ranges.append((a, b)), real_function(ctx, data, length, n_embd, a, b))[1])
    runtime.steer({"afraid": 0.1})
    vec = runtime.vector("afraid")
    assert ranges[-1] == (vec.layers[0], vec.layers[-1])         # not 1 .. n_layer - 1
    restricted = runtime.generate(PROMPT, **GREEDY)
    # the same buffer added at every layer (zeros outside the vector's): the same text
    buf = vec.buffer(runtime.n_layer, 0.1 / vec.metadata["strength"])
    _llama.set_control_vector(runtime.llm, buf, il_start=1, il_end=runtime.n_layer - 1)
    assert ranges[-1] == (1, runtime.n_layer - 1)
    assert runtime.generate(PROMPT, **GREEDY) == restricted
    runtime.clear()


def test_switching_emotions_never_reloads_the_model(runtime):
    llm = runtime.llm
    for mix in ({"afraid": 0.05}, {"happy": 0.05}, {"angry": 0.1}, None):
        runtime.steer(mix)
        runtime.generate(PROMPT, max_tokens=4, seed=0)
    assert runtime.llm is llm


def test_strength_is_a_fraction_of_the_residual_norm(runtime):
    runtime.steer({"afraid": 0.1})
    vec = runtime.vector("afraid")
    buf = vec.buffer(runtime.n_layer, 0.1 / vec.metadata["strength"])
    for j, n in enumerate(vec.layers):
        norm = np.linalg.norm(buf[(n - 1) * 576: n * 576])
        assert norm == pytest.approx(0.1 * vec.metadata["residual_norm"][j], rel=1e-4)
    runtime.clear()


@pytest.mark.parametrize("strength", [math.nan, math.inf, 5.0])
def test_bad_strengths_are_refused(runtime, strength):
    with pytest.raises(EdgeemoError, match="strength"):
        runtime.steer({"afraid": strength})


def test_a_vector_for_another_model_is_refused_naming_both(runtime, tmp_path):
    other = ControlVector("gemma3", 640, {5: np.ones(640, np.float32)}, {"n_layer": 18})
    other.to_gguf(tmp_path / "gemma-fear.gguf")
    with pytest.raises(VectorFormatError) as err:
        runtime.steer({str(tmp_path / "gemma-fear.gguf"): 0.1})
    message = str(err.value)
    assert "gemma3 (n_embd 640" in message and "llama (n_embd 576, 30 layers)" in message


def test_corrupt_or_missing_vector_files(runtime, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(VectorFormatError):
        runtime.steer({str(broken): 0.1})
    with pytest.raises(VectorFormatError):
        runtime.steer({str(tmp_path / "missing.gguf"): 0.1})


def test_context_overflow_and_empty_prompt(runtime):
    with pytest.raises(EdgeemoError, match="context overflow"):
        runtime.generate("word " * 600, max_tokens=10)
    with pytest.raises(EdgeemoError, match="empty"):
        runtime.generate("   ")


def test_complete_counts_the_generated_ids_and_times_the_reply(runtime):
    runtime.steer({"afraid": None})
    pieces = []
    reply = runtime.complete(PROMPT, max_tokens=5, temperature=0, seed=0, on_text=pieces.append)
    ids = list(runtime.stream_ids(runtime.prompt_ids([{"role": "user", "content": PROMPT}]),
                                  max_tokens=5, temperature=0, seed=0))
    runtime.clear()
    assert isinstance(reply, Completion)
    assert reply.text.strip() and "".join(pieces) == reply.text
    assert list(reply.ids) == ids and reply.tokens == len(ids) == 5
    assert reply.finish_reason == "length"
    assert reply.seconds > 0 and reply.tokens_per_second == pytest.approx(5 / reply.seconds)
    assert reply.prompt_tokens == len(runtime.prompt_ids([{"role": "user", "content": PROMPT}]))


def test_complete_ends_with_stop_at_the_end_of_turn_and_matches_generate(runtime):
    runtime.clear()
    question = "Reply with one word: yes or no. Is the sky blue?"
    reply = runtime.complete(question, max_tokens=40, temperature=0, seed=0)
    assert reply.finish_reason == "stop" and 0 < reply.tokens < 40
    assert reply.text == runtime.generate(question, max_tokens=40, temperature=0, seed=0)
    messages = [{"role": "user", "content": question}]
    again = runtime.complete_ids(runtime.prompt_ids(messages), max_tokens=40, temperature=0,
                                 seed=0)
    assert (again.text, again.ids, again.finish_reason) == (reply.text, reply.ids, "stop")
    with pytest.raises(EdgeemoError, match="empty"):
        runtime.complete("  ")


def test_load_vectors_steers_with_a_directorys_files(tmp_path):
    import shutil

    from edgeemo.errors import VectorNotFound

    runtime = EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=512)
    shipped = models.shipped_dir("vectors") / "smollm2-135m-instruct"
    afraid = ControlVector.from_gguf(shipped / "afraid.gguf")
    ControlVector(afraid.model_hint, afraid.n_embd,
                  {n: -d for n, d in afraid.directions.items()},
                  dict(afraid.metadata)).to_gguf(tmp_path / "afraid.gguf")
    shutil.copy(shipped / "calm.gguf", tmp_path / "calm.gguf")
    with pytest.raises(VectorNotFound, match=f"no happy.gguf in {tmp_path}$"):
        runtime.load_vectors(tmp_path, ["afraid", "happy"])
    assert runtime.load_vectors(tmp_path) == {"afraid": tmp_path / "afraid.gguf",
                                              "calm": tmp_path / "calm.gguf"}
    for layer, direction in runtime.vector("afraid").directions.items():
        np.testing.assert_allclose(direction, -afraid.directions[layer], rtol=1e-6)
    runtime.steer({"afraid": 0.05})
    flipped = runtime.generate(PROMPT, **GREEDY)
    fresh = EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=512)
    fresh.steer({"afraid": 0.05})
    assert fresh.generate(PROMPT, **GREEDY) != flipped
    fresh.steer({"afraid": -0.05})
    assert fresh.generate(PROMPT, **GREEDY) == flipped


# --- the CLI ------------------------------------------------------------------------------------

def invoke(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_generate_json_reports_settings_and_speed(default_gguf):
    result = invoke("generate", "-p", PROMPT, "--emotion", "fear:0.1", "--max-tokens", "20",
                    "--temperature", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["prompt"] == PROMPT and doc["emotions"] == {"afraid": 0.1}
    assert 0 < doc["completion_tokens"] <= 20 and doc["tokens_per_second"] > 0
    assert doc["settings"]["temperature"] == 0 and doc["text"]


def test_generate_compare_shows_both(default_gguf):
    result = invoke("generate", "-p", PROMPT, "-e", "joy", "--max-tokens", "15", "--compare")
    assert result.exit_code == 0, result.output
    assert "unsteered" in result.stdout and "happy +0.0" in result.stdout


def test_llama_cpp_warnings_stay_out_of_the_terminal(default_gguf, capsys, monkeypatch):
    from edgeemo import _llama

    monkeypatch.delenv("EDGEEMO_VERBOSE", raising=False)
    _llama.close(_llama.load_vocab(default_gguf))   # warns: n_ctx_seq (512) > n_ctx_train (0)
    assert "n_ctx_train" not in capsys.readouterr().err
    monkeypatch.setenv("EDGEEMO_VERBOSE", "1")
    _llama.close(_llama.load_vocab(default_gguf))
    assert "n_ctx_train" in capsys.readouterr().err


def test_verbose_shows_llama_cpp_log(default_gguf, monkeypatch):
    from edgeemo import _llama

    monkeypatch.setitem(_llama._log_state, "verbose", False)
    monkeypatch.setenv("EDGEEMO_VERBOSE", "0")        # restored after the test
    result = invoke("--verbose", "generate", "-p", PROMPT, "--max-tokens", "2")
    assert result.exit_code == 0, result.output
    assert "llama_context" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["-e", "feer"], "did you mean 'afraid'"),
    (["-e", "fear:nan"], "finite"),
    (["-e", "fear:3"], "beyond"),
    (["-e", "nonexistent.gguf"], "not found"),
])
def test_generate_bad_input_is_one_line(default_gguf, args, message):
    result = invoke("generate", "-p", PROMPT, "--max-tokens", "5", *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len([l for l in result.output.splitlines() if l.startswith("Error")]) == 1


def test_chat_is_scriptable_and_switches_emotions_mid_conversation(default_gguf):
    script = "\n".join(["Hello!", "/emotion fear:0.1", "/show", "How are you?", "/emotion bogus",
                        "/strength abc", "/off", "/emotion joy,calm:0.03", "/show", "Good night.",
                        "/reset", "quit", "never read"]) + "\n"
    result = invoke("chat", "--seed", "1", "--max-tokens", "12", input=script)
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "[steering: afraid +0.100]" in err
    assert "Error: unknown emotion 'bogus'" in err            # the session stays alive
    assert "Error: usage: /strength S" in err
    assert "[steering off]" in err
    assert "happy +0.0" in err and "calm +0.030" in err
    assert "[conversation cleared]" in err
    replies = [l for l in result.stdout.splitlines() if l.strip()]
    assert len(replies) >= 3                                     # one per message


def test_probe_ranks_unseen_emotional_texts_near_the_top(default_export):
    from edgeemo.probe import Probe

    probe = Probe(models.resolve("smollm2-135m-instruct"))
    heldout = stimuli.heldout()
    hits = total = 0
    for emotion in ("afraid", "happy", "angry", "sad", "grateful", "calm", "loving", "hostile"):
        for ranking in probe.scores(heldout[emotion][:3]):
            names = [n for n, _ in ranking]
            hits += emotion in names[:5]
            total += 1
    print(f"probe: true emotion in the top 5 for {hits}/{total} held-out texts")
    assert hits / total >= 0.5


def test_the_first_probe_says_what_it_reads_and_follows_it(default_export, tmp_path, monkeypatch):
    from edgeemo import store
    from edgeemo.probe import Probe

    monkeypatch.setattr(store, "cache_dir", lambda *parts: tmp_path)    # no cached reference
    few = stimuli.comprehension()["neutral"][:4]                         # (120 in real use)
    monkeypatch.setattr(Probe, "reference_texts", lambda self: few)
    said, steps = [], []
    probe = Probe(models.resolve("smollm2-135m-instruct"), say=said.append,
                  progress=lambda label, done, total: steps.append((label, done, total)))
    n = len(probe.reference_texts())
    assert any(f"{n} reference texts" in m for m in said)
    assert steps[-1] == ("probe reference", n, n) and len(steps) == n
    assert list(tmp_path.glob("reference-*.npy"))                       # and it is kept


def test_probe_cli(default_export):
    result = invoke("probe", "My hands shook as the footsteps came closer in the dark.", "--json")
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)["ranking"]
    assert len(ranking) == 20 and ranking[0]["score"] >= ranking[-1]["score"]

"""Reply-only steering, the library chat session, and stock-llama.cpp coherence of the prebuilt
vectors, on the real default model."""

from __future__ import annotations

import pytest

from edgeemo import ChatSession, EmotionModel, emotions, models, stimuli
from edgeemo.errors import EdgeemoError
from edgeemo.evaluation.regimes import language_drift, regime, text_features

pytestmark = pytest.mark.slow

REQUEST = "Can you explain how to make a cup of tea?"
GREEDY = {"max_tokens": 32, "temperature": 0, "seed": 0}


@pytest.fixture(scope="module")
def runtime(default_gguf):
    return EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=1024, threads=1)


def test_reply_only_is_the_default_and_differs_from_steering_the_prompt(runtime):
    runtime.clear()
    plain = runtime.generate(REQUEST, **GREEDY)
    runtime.steer({"afraid": 0.12})
    assert runtime.steer_prompt is False
    reply_only = runtime.generate(REQUEST, **GREEDY)
    whole = runtime.generate(REQUEST, steer_prompt=True, **GREEDY)
    assert reply_only != plain and whole != plain and reply_only != whole
    # the cache holds the prompt as each mode wants it: asking again gives the same text
    assert runtime.generate(REQUEST, **GREEDY) == reply_only
    assert runtime.generate(REQUEST, steer_prompt=True, **GREEDY) == whole
    runtime.clear()
    assert runtime.generate(REQUEST, **GREEDY) == plain


def test_reply_only_equals_a_fresh_model(runtime, default_gguf):
    """Whatever the cache held before, a reply-only generation is what a fresh model gives."""
    runtime.steer({"happy": 0.1})
    runtime.generate("How was your day?", steer_prompt=True, **GREEDY)
    warm = runtime.generate(REQUEST, **GREEDY)
    fresh = EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=1024, threads=1)
    fresh.steer({"happy": 0.1})
    assert fresh.generate(REQUEST, **GREEDY) == warm
    runtime.clear()


def test_the_prompt_is_evaluated_unsteered(runtime, monkeypatch):
    """Reply-only: the vector is off while the prompt (but its last token) is evaluated."""
    from edgeemo import _llama

    runtime.steer({"calm": 0.1})
    states = []
    real_eval = runtime.llm.eval
    monkeypatch.setattr(runtime.llm, "eval", lambda tokens: (
        states.append((len(tokens), runtime._vector_on)), real_eval(tokens)))
    real_apply = _llama.set_control_vector
    monkeypatch.setattr(_llama, "set_control_vector", lambda llm, buf, **kw: (
        setattr(runtime, "_vector_on", buf is not None), real_apply(llm, buf, **kw)))
    runtime.llm.reset()
    runtime._cache = None
    runtime.generate(REQUEST, max_tokens=3, temperature=0, seed=0)
    n_prompt = len(runtime.prompt_ids([{"role": "user", "content": REQUEST}]))
    assert states[0] == (n_prompt - 1, False)               # the prompt, unsteered
    assert all(on for _, on in states[1:]) and len(states) >= 2    # the reply, steered
    monkeypatch.undo()
    runtime.clear()


def test_chat_session_keeps_history_and_stops_cleanly(runtime):
    chat = ChatSession(runtime, emotion="calm", seed=3, max_tokens=12, temperature=0)
    assert runtime.mix and "calm" in runtime.mix
    first = "".join(chat.reply("Hello!"))
    assert first and chat.history[-1] == {"role": "assistant", "content": first}
    pieces = chat.reply("Tell me a long story about the sea.")
    head = next(pieces)
    pieces.close()                                   # the user stopped the reply
    assert chat.history[-1] == {"role": "assistant", "content": head}
    assert chat.turn == 2 and len(chat.history) == 4
    assert chat.command("/show").endswith("2 turns")
    assert chat.command("/off") == "steering off" and runtime.mix == {}
    with pytest.raises(EdgeemoError, match="unknown emotion"):
        chat.command("/emotion sleepy")
    with pytest.raises(EdgeemoError, match="empty"):
        list(chat.reply("   "))
    assert chat.command("/reset") == "conversation cleared" and chat.history == []


def test_chat_takes_back_a_turn_that_cannot_be_answered(runtime):
    chat = ChatSession(runtime, max_tokens=2000)
    with pytest.raises(EdgeemoError, match="context overflow"):
        list(chat.reply("Hello!"))
    assert chat.history == [] and chat.turn == 0


def test_prebuilt_vectors_stay_coherent_in_stock_llama_cpp(runtime):
    """Stock llama.cpp applies a file at scale 1.0 to the prompt too: every prebuilt vector must
    still give fluent English (no loops, no breakdown, no other script) on everyday requests."""
    from edgeemo.evaluation.regimes import Scorer

    scorer = Scorer(runtime.model.path, threads=1)
    requests = [r["prompt"] for r in stimuli.requests()[:2]]
    bad = []
    for emotion in emotions.EMOTIONS:
        runtime.steer({emotion: None})                    # the file's own strength: scale 1.0
        for request in requests:
            ids = runtime.prompt_ids([{"role": "user", "content": request}])
            text = runtime.generate(request, steer_prompt=True, max_tokens=48, temperature=0,
                                    seed=0)
            label = regime(text_features(text, text, ids, scorer))
            if label != "surgical" or language_drift(request, text)["drifted"]:
                bad.append((emotion, request, label, text[:80]))
    runtime.clear()
    assert not bad, bad

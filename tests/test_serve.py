"""`edgeemo serve`: the OpenAI-compatible server, live on a loopback port, with the default model.

Every expected reply is computed here through the library (EmotionModel) or the CLI with the same
settings, greedy, never written down. Servers and the reference model use one llama.cpp thread
each, and only one of them generates at a time unless a test means them to run together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from openai import OpenAI

from edgeemo import emotions, models
from edgeemo.cli import cli
from edgeemo.serve.app import create_app, is_loopback
from edgeemo.serve.pool import WorkerPool
from edgeemo.steer import EmotionModel, find_vector
from edgeemo.vectors import ControlVector, recommended_strength

MODEL = "smollm2-135m-instruct"
PROMPT = "Tell me about your morning."
KEY = "sk-test-0123456789"
ORIGIN = "http://app.localhost:5173"
GREEDY = {"temperature": 0, "seed": 0}
# a reply that goes on for hundreds of tokens, to be interrupted
LONG = [{"role": "user", "content": "Write a very long story about a dragon, at least 1000 words."}]


class Live:
    """An app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no server"
            time.sleep(0.02)

    def client(self, **options) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=options.pop("api_key", "none"),
                      max_retries=0, timeout=120, **options)

    def post(self, body=None, *, path="/v1/chat/completions", **options) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120, **options)

    def health(self, **options) -> dict:
        return httpx.get(self.url + "/health", timeout=30, **options).json()

    def wait_idle(self, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            health = self.health()
            if (health["busy"], health["waiting"]) == (0, 0) or time.monotonic() > deadline:
                return health
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve(**options):
    live = Live(create_app(models.resolve(MODEL), threads=1, **options))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def serial(default_gguf):
    yield from serve(parallel=1)


@pytest.fixture(scope="module")
def pair(default_gguf):
    yield from serve(parallel=2)


@pytest.fixture(scope="module")
def strict(default_gguf):
    """One worker, one place in the queue, an API key, and browser pages from ORIGIN."""
    yield from serve(parallel=1, queue_size=1, api_key=KEY, cors_origins=[ORIGIN])


@pytest.fixture(scope="module")
def limited(default_gguf):
    """A 256-token context, replies of at most 24 tokens, and afraid unless a request says."""
    yield from serve(n_ctx=256, max_tokens_limit=24, emotion="afraid")


@pytest.fixture(scope="module")
def timed(default_gguf):
    """Half a second of generation per request."""
    yield from serve(n_ctx=1024, time_limit=0.5)


class Reference:
    """What the library says a request should get: a fresh steer (or clear) and generate, as
    `edgeemo generate` does, with the server's defaults (no repeat penalty unless asked);
    remembered per request."""

    def __init__(self):
        self.runtime = EmotionModel(models.resolve(MODEL), threads=1)   # as the server's workers
        self.known = {}

    def __call__(self, messages, emotion=None, max_tokens=16, steer_prompt=False, **sampling):
        key = json.dumps([messages, emotion, max_tokens, steer_prompt, sampling], sort_keys=True)
        if key not in self.known:
            rt = self.runtime
            applied = rt.steer(emotion, steer_prompt=steer_prompt) if emotion else rt.clear()
            options = {"repeat_penalty": 1.0, **GREEDY, **sampling}
            if isinstance(messages, str):                   # a text completion
                ids = list(rt.stream_ids(rt.text_ids(messages), max_tokens=max_tokens,
                                         steer_prompt=steer_prompt, **options))
                text = rt.llm.detokenize(ids).decode("utf-8", errors="ignore")
            else:
                text = rt.generate(messages, max_tokens=max_tokens, steer_prompt=steer_prompt,
                                   **options)
            self.known[key] = (text, applied)
        return self.known[key]

    def first_token(self, messages) -> int:
        rt = self.runtime
        rt.clear()
        return next(iter(rt.stream_ids(rt.prompt_ids(messages), max_tokens=1, repeat_penalty=1.0,
                                       **GREEDY)))


@pytest.fixture(scope="module")
def reference(default_gguf):
    ref = Reference()
    yield ref
    ref.runtime.close()


def user(text=PROMPT):
    return [{"role": "user", "content": text}]


EMOTIONS = [None, "fear", "joy:0.06,calm:0.03", {"angry": 0.1}]


def chat(client: OpenAI, messages, emotion=None, max_tokens=16, stream=False, raw=False,
         **extra):
    """A chat completion; with ``raw``, the raw response (headers, and ``.parse()``)."""
    body = {"emotion": emotion, **extra} if emotion is not None or extra else None
    create = client.chat.completions.with_raw_response.create if raw else \
        client.chat.completions.create
    return create(model=MODEL, messages=messages, max_tokens=max_tokens, stream=stream,
                  extra_body=body, **GREEDY)


def streamed(client: OpenAI, messages, emotion=None, max_tokens=16, **extra):
    """(text, chunks) of a streamed completion."""
    chunks = list(chat(client, messages, emotion, max_tokens, stream=True,
                       stream_options={"include_usage": True}, **extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# --- completions equal the library's ----------------------------------------------------------

@pytest.mark.slow
def test_openai_client_gets_the_reply_the_library_gives(pair, reference):
    client = pair.client()
    for emotion in EMOTIONS:
        text, applied = reference(user(), emotion)
        reply = chat(client, user(), emotion)
        choice = reply.choices[0]
        assert choice.message.content == text, emotion
        assert choice.message.role == "assistant"
        assert reply.model_extra["emotion"] == applied
        assert reply.model_extra["steer_prompt"] is False
        assert reply.model == MODEL and reply.object == "chat.completion"
        assert reply.usage.prompt_tokens == len(reference.runtime.prompt_ids(user()))
        assert 0 < reply.usage.completion_tokens <= 16
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert choice.finish_reason == ("length" if reply.usage.completion_tokens == 16 else "stop")
    # the strengths reported are the vectors' calibrated ones unless a strength is given
    afraid = ControlVector.from_gguf(find_vector(models.resolve(MODEL), "afraid"))
    assert reference(user(), "fear")[1] == {"afraid": recommended_strength(afraid)}
    assert reference(user(), {"angry": 0.1})[1] == {"angry": 0.1}


@pytest.mark.slow
def test_a_streamed_reply_equals_the_library_and_counts_its_tokens(pair, reference):
    client = pair.client()
    rt = reference.runtime
    for emotion in ("fear", None):
        text, applied = reference(user(), emotion)
        got, chunks = streamed(client, user(), emotion)
        assert got == text
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.model_extra["emotion"] == applied for c in chunks)
        finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finishing) == 1 and chunks[-1].choices == []
        # as OpenAI: the usage once, on the last chunk, which has no choices
        assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
        # the tokens counted are the tokens the library generates
        rt.steer(emotion) if emotion else rt.clear()
        tokens = list(rt.stream_ids(rt.prompt_ids(user()), max_tokens=16, repeat_penalty=1.0,
                                    **GREEDY))
        assert chunks[-1].usage.completion_tokens == len(tokens)
        assert chunks[-1].usage.prompt_tokens == len(rt.prompt_ids(user()))
        assert finishing[0].choices[0].finish_reason == ("length" if len(tokens) == 16 else "stop")
    # without stream_options.include_usage no chunk has a usage
    chunks = list(chat(client, user(), "fear", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference(user(), "fear")[0]
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


@pytest.mark.slow
def test_a_steered_reply_equals_edgeemo_generate(pair):
    result = CliRunner().invoke(cli, ["generate", "-p", PROMPT, "-e", "fear", "--temperature", "0",
                                      "--seed", "0", "--max-tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    reply = chat(pair.client(), user(), "fear", repeat_penalty=1.1)      # generate's penalty
    assert reply.choices[0].message.content == doc["text"]
    assert reply.model_extra["emotion"] == doc["emotions"]


@pytest.mark.slow
def test_steer_prompt_and_stop_strings(pair, reference):
    client = pair.client()
    text, applied = reference(user(), "fear", steer_prompt=True)
    reply = chat(client, user(), "fear", steer_prompt=True)
    assert reply.choices[0].message.content == text
    assert reply.model_extra["steer_prompt"] is True
    # a name takes the strength for the steering asked for: with the prompt steered too, the
    # one the file's tensors hold (safe in stock llama.cpp), else its reply strength
    vec = reference.runtime.vector("afraid")
    assert reply.model_extra["emotion"] == {"afraid": vec.metadata["strength"]} == applied
    assert chat(client, user(), "fear").model_extra["emotion"] == {
        "afraid": recommended_strength(vec)}

    # a stop string cuts the reply before it, streamed or not
    full, _ = reference(user(), None)
    word = full.split()[3]
    cut = full[:full.index(word)]
    reply = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=16, stop=[word],
                                           **GREEDY)
    assert reply.choices[0].message.content == cut
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=user(), max_tokens=16,
                                                 stop=word, stream=True, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


# --- isolation ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("server", ["serial", "pair"])
def test_concurrent_requests_with_different_emotions_get_their_own_replies(server, request,
                                                                         reference):
    live = request.getfixturevalue(server)
    client = live.client()
    cases = [(user(), e) for e in EMOTIONS] + [(user("How was your day?"), "sad")]
    expected = [reference(messages, emotion)[0] for messages, emotion in cases]

    def one(i, results):
        messages, emotion = cases[i]
        if i % 2:
            results[i] = streamed(client, messages, emotion)[0]
        else:
            results[i] = chat(client, messages, emotion).choices[0].message.content

    failed_before = live.health()["failed"]
    sequential = {}
    for i in range(len(cases)):
        one(i, sequential)
    together = {}
    threads = [threading.Thread(target=one, args=(i, together)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [sequential[i] for i in range(len(cases))] == expected
    assert [together.get(i) for i in range(len(cases))] == expected
    assert live.wait_idle()["failed"] == failed_before


# --- errors -------------------------------------------------------------------------------------

def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


@pytest.mark.slow
def test_errors_are_openai_json_with_the_right_status(serial):
    ok = {"messages": user(), "max_tokens": 4, **GREEDY}

    e = error_of(serial.post({**ok, "emotion": "xyzzy"}), 400)
    assert e["param"] == "emotion" and e["code"] == "unknown_emotion"
    assert all(name in e["message"] for name in emotions.EMOTIONS)          # names the valid ones
    e = error_of(serial.post({**ok, "emotion": {"wonder": 0.1}}), 400)
    assert "afraid" in e["message"]
    for strength in ({"afraid": 5}, {"afraid": "high"}, {"afraid": True}, "fear:2", "fear:nan"):
        e = error_of(serial.post({**ok, "emotion": strength}), 400)
        assert e["param"] == "emotion" and "strength" in e["message"], strength
    e = error_of(serial.post({**ok, "emotion": "/etc/passwd.gguf"}), 400)
    assert "vector files" in e["message"]
    e = error_of(serial.post({**ok, "emotion": {"afraid": 0.8, "calm": 0.8}}), 400)
    assert "adds up" in e["message"]

    e = error_of(serial.post({**ok, "messages": user("word " * 2100)}), 400)
    assert e["code"] == "context_length_exceeded" and "2048" in e["message"]
    e = error_of(serial.post({**ok, "max_tokens": 0}), 400)
    assert e["param"] == "max_tokens"

    e = error_of(serial.post(content=b'{"messages": [', path="/v1/chat/completions",
                             headers={"Content-Type": "application/json"}), 400)
    assert "JSON" in e["message"]
    assert error_of(serial.post({"max_tokens": 4}), 400)["param"] == "messages"
    assert error_of(serial.post({**ok, "messages": "hi"}), 400)["param"] == "messages"
    assert error_of(serial.post({**ok, "messages": [{"role": "robot", "content": "hi"}]}),
                    400)["param"] == "messages"
    assert error_of(serial.post({**ok, "temperature": "hot"}), 400)["param"] == "temperature"
    assert error_of(serial.post({**ok, "seed": -2}), 400)["param"] == "seed"
    assert error_of(serial.post({**ok, "n": 2}), 400)["param"] == "n"

    e = error_of(serial.post(content=b"x" * 1_000_001, path="/v1/chat/completions"), 413)
    assert e["code"] == "body_too_large"
    chunked = (b"x" * 100_000 for _ in range(11))                  # no Content-Length
    error_of(serial.post(content=chunked, path="/v1/chat/completions"), 413)
    error_of(httpx.get(serial.url + "/v1/nothing"), 404)
    error_of(httpx.get(serial.url + "/v1/chat/completions"), 405)

    # the openai client raises its own error types from these answers
    import openai

    with pytest.raises(openai.BadRequestError, match="unknown emotion"):
        chat(serial.client(), user(), "xyzzy")
    # and the server still answers
    assert serial.health()["status"] == "ok"
    assert serial.post(ok).status_code == 200


@pytest.mark.slow
def test_an_unexpected_error_is_a_500_without_details_and_the_server_goes_on(serial, monkeypatch,
                                                                          reference):
    worker = serial.app.state.pool.runtimes[0]

    def broken(messages):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(worker, "prompt_ids", broken)
    for stream in (False, True):
        e = error_of(serial.post({"messages": user(), "max_tokens": 4, "stream": stream}), 500)
        assert e["type"] == "server_error" and "secret" not in e["message"]
    monkeypatch.undo()
    reply = chat(serial.client(), user(), "fear")
    assert reply.choices[0].message.content == reference(user(), "fear")[0]


@pytest.mark.slow
def test_the_api_key_is_required_when_set(strict):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}):
        for path in ("/v1/models", "/v1/emotions"):
            e = error_of(httpx.get(strict.url + path, headers=headers), 401)
            assert e["type"] == "authentication_error" and e["code"] == "invalid_api_key"
        error_of(strict.post({"messages": user()}, headers=headers), 401)
    assert strict.health()["status"] == "ok"                                 # /health is open
    import openai

    with pytest.raises(openai.AuthenticationError):
        strict.client(api_key="wrong").models.list()
    assert [m.id for m in strict.client(api_key=KEY).models.list()][0] == MODEL


@pytest.mark.slow
def test_a_full_queue_answers_503_and_a_closed_stream_frees_its_worker(strict):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = strict.health()
    with httpx.Client(timeout=120, headers=auth) as first:
        with first.stream("POST", strict.url + "/v1/chat/completions",
                          json={"messages": LONG, "max_tokens": 1000, "stream": True,
                                **GREEDY}) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")          # generating on the only worker
            waiting = {}
            second = threading.Thread(target=lambda: waiting.update(response=strict.post(
                {"messages": user(), "max_tokens": 4}, headers=auth)))
            second.start()
            deadline = time.monotonic() + 30
            while strict.health()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            e = error_of(strict.post({"messages": user(), "max_tokens": 4}, headers=auth), 503)
            assert e["code"] == "queue_full"
            assert strict.health()["busy"] == 1
        # the stream is closed after one chunk: its generation stops and the waiting one runs
        second.join(60)
    assert waiting["response"].status_code == 200
    after = strict.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["rejected"] == before["rejected"] + 1
    # the story goes on for more than 300 tokens when nobody stops it
    assert after["tokens"] - before["tokens"] < 300


@pytest.mark.slow
def test_a_client_that_leaves_a_non_streamed_request_frees_its_worker(strict):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = strict.health()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(strict.url + "/v1/chat/completions", headers=auth, timeout=0.5,
                   json={"messages": LONG, "max_tokens": 1000, **GREEDY})
    after = strict.wait_idle(30)
    assert (after["busy"], after["cancelled"]) == (0, before["cancelled"] + 1)
    assert after["completed"] == before["completed"]
    assert after["tokens"] - before["tokens"] < 300           # the story needs more than 300


# --- the other endpoints ------------------------------------------------------------------------

@pytest.mark.slow
def test_models_emotions_and_health(serial):
    # the model, then one alias per emotion, with its calibrated strength
    listed_models = serial.client().models.list().data
    assert [m.id for m in listed_models] == [MODEL] + [f"{MODEL}:{e}" for e in emotions.EMOTIONS]
    listed = httpx.get(serial.url + "/v1/emotions").json()["data"]
    assert [e["id"] for e in listed] == list(emotions.EMOTIONS)
    for e, m in zip(listed, listed_models[1:]):
        vec = ControlVector.from_gguf(find_vector(models.resolve(MODEL), e["id"]))
        assert e["strength"] == m.model_extra["strength"] == recommended_strength(vec)
    assert "fear" in listed[emotions.EMOTIONS.index("afraid")]["aliases"]
    health = serial.health()
    assert (health["status"], health["model"], health["parallel"]) == ("ok", MODEL, 1)


@pytest.mark.slow
def test_the_probe_reads_a_text_or_says_to_export(serial, default_export, tmp_path, monkeypatch):
    text = "My hands shook as the footsteps came closer."
    response = serial.post({"text": text}, path="/v1/probe")
    assert response.status_code == 200, response.text
    ranking = response.json()["ranking"]
    expected = serial.app.state.probe.scores([text])[0]
    assert [(r["emotion"], r["score"]) for r in ranking] == [(n, round(s, 4)) for n, s in expected]
    assert sorted(r["emotion"] for r in ranking) == sorted(emotions.EMOTIONS)
    error_of(serial.post({"text": " "}, path="/v1/probe"), 400)
    error_of(serial.post({}, path="/v1/probe"), 400)

    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))                   # a store with no export
    e = error_of(serial.post({"text": text}, path="/v1/probe"), 409)
    assert "edgeemo export-model" in e["message"]


# --- load ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_mixed_emotions_streams_and_disconnects(pair, reference):
    """8 clients x 25 requests: mixed emotions, a fifth of them streamed to the end, a fifth
    abandoned after two chunks; no 5xx, and every finished reply is its reference."""
    system = {"role": "system", "content": "Be brief."}
    prompts = [[system, *user("Hi!")], [system, *user("Any tips for a rainy day?")]]
    kinds = [None, "fear", "joy:0.06,calm:0.03", {"angry": 0.1}, "sad"]
    expected = {(p, k): reference(prompts[p], kinds[k], max_tokens=8)[0]
                for p in range(len(prompts)) for k in range(len(kinds))}
    problems, finished, abandoned = [], [], []

    def client(c):
        with httpx.Client(timeout=60) as http:
            for i in range(25):
                p, k = (c + i) % len(prompts), (c * 3 + i) % len(kinds)
                body = {"messages": prompts[p], "max_tokens": 8, "emotion": kinds[k], **GREEDY}
                mode = i % 5
                if mode in (0, 1):
                    with http.stream("POST", pair.url + "/v1/chat/completions",
                                     json={**body, "stream": True}) as r:
                        if r.status_code != 200:
                            problems.append((r.status_code, r.read()))
                            continue
                        text, seen = "", 0
                        for line in r.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            seen += 1
                            if mode == 0 and seen == 2:
                                abandoned.append(1)
                                break
                            for choice in json.loads(line[6:])["choices"]:
                                text += choice["delta"].get("content") or ""
                        else:
                            finished.append(((p, k), text))
                else:
                    r = http.post(pair.url + "/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        problems.append((r.status_code, r.text))
                        continue
                    finished.append(((p, k), r.json()["choices"][0]["message"]["content"]))

    failed_before = pair.health()["failed"]
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "the load did not finish in time"
    assert problems == []
    assert len(finished) + len(abandoned) == 200 and len(abandoned) == 40
    wrong = [(key, text) for key, text in finished if text != expected[key]]
    assert wrong == []
    health = pair.wait_idle()
    assert (health["busy"], health["waiting"], health["failed"]) == (0, 0, failed_before)
    # no steering left behind: an unsteered and a steered request equal their references
    client_ = pair.client()
    for emotion in (None, "fear"):
        assert chat(client_, user(), emotion).choices[0].message.content == \
            reference(user(), emotion)[0]
    print(f"load: 200 requests in {time.monotonic() - started:.1f} s")


# --- every field works or is refused ------------------------------------------------------------

def content(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_sampling_fields_reach_llama_cpp(serial, reference):
    ok = {"messages": user(), "max_tokens": 16, **GREEDY}
    # no repeat penalty unless asked, even at temperature 0; asked, it is llama.cpp's
    assert content(serial.post(ok)) == reference(user())[0]
    assert content(serial.post({**ok, "repeat_penalty": 1.3})) == \
        reference(user(), repeat_penalty=1.3)[0] != reference(user())[0]
    for name in ("frequency_penalty", "presence_penalty"):
        penalized = reference(user(), max_tokens=32, **{name: 2.0})[0]
        assert penalized != reference(user(), max_tokens=32)[0], name
        assert content(serial.post({**ok, "max_tokens": 32, name: 2.0})) == penalized, name
    # at temperature 1, top_k 1 or min_p 1 keep only the likeliest token: the greedy reply
    for keep in ({"top_k": 1}, {"min_p": 1.0}):
        assert content(serial.post({**ok, "temperature": 1.0, "seed": 3, **keep})) == \
            reference(user())[0], keep
    # null is the default, for every optional field; seed -1 is a random seed
    nulls = {name: None for name in ("temperature", "top_p", "stream", "n", "stop", "top_k",
                                     "min_p", "logit_bias", "presence_penalty", "logprobs",
                                     "frequency_penalty", "response_format", "steer_prompt",
                                     "max_completion_tokens", "repeat_penalty", "emotion")}
    sampled = {"messages": user(), "max_tokens": 16, "seed": 11}
    assert content(serial.post({**sampled, **nulls})) == content(serial.post(sampled))
    replies = {content(serial.post({**sampled, "seed": -1})) for _ in range(3)}
    assert len(replies) > 1


@pytest.mark.slow
def test_logit_bias_bans_and_forces_tokens(serial, reference):
    rt = reference.runtime
    first = reference.first_token(user())
    banned = serial.post({"messages": user(), "max_tokens": 4, "logit_bias": {str(first): -100},
                          **GREEDY}).json()["choices"][0]["message"]["content"]
    assert not banned.startswith(rt.token_text(first))
    forced = rt.llm.tokenize(b" banana", add_bos=False)[0]
    reply = content(serial.post({"messages": user(), "max_tokens": 3,
                                 "logit_bias": {str(forced): 100}, **GREEDY}))
    assert reply == rt.token_text(forced) * 3
    e = error_of(serial.post({"messages": user(), "logit_bias": {"99999999": 5}}), 400)
    assert e["param"] == "logit_bias"


@pytest.mark.slow
def test_logprobs_are_the_models(serial, reference):
    text = reference(user())[0]
    for stream in (False, True):
        reply = chat(serial.client(), user(), stream=stream, logprobs=True, top_logprobs=3)
        if stream:
            chunks = list(reply)
            entries = [e for c in chunks if c.choices and c.choices[0].logprobs
                       for e in c.choices[0].logprobs.content]
            got = "".join(c.choices[0].delta.content or "" for c in chunks)
        else:
            entries, got = reply.choices[0].logprobs.content, reply.choices[0].message.content
        assert got == text
        assert "".join(e.token for e in entries) == text
        for e in entries:
            # greedy takes the likeliest token: the first alternative, best first
            assert [t.logprob for t in e.top_logprobs] == sorted(
                (t.logprob for t in e.top_logprobs), reverse=True)
            assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
            assert e.logprob == e.top_logprobs[0].logprob <= 0
            assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-6
            assert bytes(e.bytes).decode() == e.token
    plain = chat(serial.client(), user())
    assert plain.choices[0].logprobs is None
    e = error_of(serial.post({"messages": user(), "top_logprobs": 2}), 400)
    assert e["param"] == "top_logprobs"


@pytest.mark.slow
def test_response_format_constrains_the_reply_to_json(serial, reference):
    asked = user("Give me a JSON object with the name and age of a cat.")
    assert not reference(asked, max_tokens=40)[0].lstrip().startswith("{")
    reply = chat(serial.client(), asked, max_tokens=80,
                 response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "tense"]},
                                               "age": {"type": "integer"}},
              "required": ["mood", "age"], "additionalProperties": False}
    reply = chat(serial.client(), asked, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "cat", "schema": schema}})
    doc = json.loads(reply.choices[0].message.content)
    assert set(doc) == {"mood", "age"} and doc["mood"] in ("calm", "tense")
    assert isinstance(doc["age"], int)
    for bad in ({"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema":
                                                           {"schema": {"type": "nonsense"}}}):
        e = error_of(serial.post({"messages": user(), "response_format": bad}), 400)
        assert e["param"] == "response_format", bad


@pytest.mark.slow
def test_fields_that_cannot_be_honoured_are_refused_by_name(serial):
    ok = {"messages": user(), "max_tokens": 2, **GREEDY}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for field, value in (("tools", [tool]), ("tool_choice", "auto"), ("functions", [tool]),
                         ("function_call", "auto"), ("modalities", ["text", "audio"]),
                         ("reasoning_effort", "low"), ("mirostat", 2), ("top_a", 0.5)):
        e = error_of(serial.post({**ok, field: value}), 400)
        assert e["param"] == field and field in e["message"], field
    e = error_of(serial.post({**ok, "stream_options": {"include_usage": True}}), 400)
    assert e["param"] == "stream_options"
    # fields that cannot change a reply are taken, as null ones are
    for field, value in (("user", "u-1"), ("metadata", {"a": "b"}), ("store", False),
                         ("tools", None), ("modalities", ["text"])):
        assert serial.post({**ok, field: value}).status_code == 200, field


# --- browsers -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cors_lets_the_listed_origins_in_and_answers_preflight_before_the_key(strict, serial):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    url = strict.url + "/v1/chat/completions"
    r = httpx.options(url, headers=preflight)                       # no key: answered anyway
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.options(url, headers={**preflight, "Origin": "http://elsewhere.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # the answers carry the header too, errors included, so that a page can read them
    auth = {"Authorization": f"Bearer {KEY}", "Origin": ORIGIN}
    r = strict.post({"messages": user(), "max_tokens": 2}, headers=auth)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = strict.post({"messages": user(), "max_tokens": 2}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    # a server without --cors-origin names no origin
    r = httpx.options(serial.url + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers


# --- clients: the openai package, curl and a browser page, against one server ----------------

PAGE = """<!doctype html>
<html><body><script>
const api = "API/v1/chat/completions";
const body = {messages: MESSAGES, max_tokens: 8, temperature: 0, seed: 0, emotion: "fear"};
const auth = {"Authorization": "Bearer KEY", "Content-Type": "application/json"};
async function run() {
  const result = {};
  let r = await fetch(api, {method: "POST", headers: auth, body: JSON.stringify(body)});
  result.whole = (await r.json()).choices[0].message.content;
  r = await fetch(api, {method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify(body)});
  result.without_key = r.status;
  r = await fetch(api, {method: "POST", headers: auth,
                        body: JSON.stringify({...body, stream: true})});
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "", events = [];
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
  }
  for (const line of buffer.split("\\n")) if (line.startsWith("data: ")) events.push(line.slice(6));
  result.done = events[events.length - 1];
  result.streamed = events.slice(0, -1).map(e => JSON.parse(e).choices[0].delta.content || "")
                                       .join("");
  result.chunks = events.length - 1;
  return result;
}
const report = r => fetch("/result", {method: "POST", body: JSON.stringify(r)});
run().then(report, e => report({error: String(e)}));
</script></body></html>
"""


def chromium() -> str:
    """The Chromium command; in CI (CI=true) its absence is a failure, not a skip."""
    import os
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def page_server():
    """A web server of its own (another origin): it serves its ``page`` attribute (set once the
    page is made) and keeps what the page posts back in ``result`` (setting ``posted``); yields
    (the server, its origin)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(self.server.page.encode())

        def do_POST(self):
            self.server.result = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()
            self.server.posted.set()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.posted = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_openai_client_curl_and_a_page_from_another_origin_all_work(reference, tmp_path):
    """One server, with an API key and CORS for the page's origin; headless Chromium loads the
    page, whose script calls the server with the key, whole and streamed."""
    import os
    import signal
    import subprocess

    browser = chromium()
    messages = user("Hi!")
    expected = reference(messages, "fear", max_tokens=8)[0]
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": messages, "max_tokens": 8, "emotion": "fear", **GREEDY}
    with page_server() as (pages, origin):
        live = Live(create_app(models.resolve(MODEL), threads=1, api_key=KEY,
                               cors_origins=[origin]))
        try:
            pages.page = PAGE.replace("API", live.url).replace("KEY", KEY).replace(
                "MESSAGES", json.dumps(messages))
            client = live.client(api_key=KEY)
            assert chat(client, messages, "fear", max_tokens=8).choices[0].message.content \
                == expected
            assert streamed(client, messages, "fear", max_tokens=8)[0] == expected

            curl = subprocess.run(
                ["curl", "-sN", "--max-time", "120", live.url + "/v1/chat/completions",
                 "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                 "-d", json.dumps({**body, "stream": True})],
                capture_output=True, text=True, timeout=150, check=True)
            events = [line[6:] for line in curl.stdout.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                           for e in events[:-1]) == expected
            curl = subprocess.run(["curl", "-s", live.url + "/v1/chat/completions",
                                   "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                                  capture_output=True, text=True, timeout=30, check=True)
            assert json.loads(curl.stdout)["error"]["code"] == "invalid_api_key"

            # the page posts its findings back to its own server; then the browser is stopped
            page = subprocess.Popen(
                [browser, "--headless=new", "--disable-gpu", "--no-sandbox",
                 "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp_path}",
                 origin + "/page.html"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                assert pages.posted.wait(120), "the page posted nothing back within 120 s"
            finally:
                os.killpg(page.pid, signal.SIGTERM)
                page.wait(30)
        finally:
            live.stop()
    result = json.loads(pages.result)
    assert "error" not in result, result["error"]
    assert result["whole"] == expected and result["streamed"] == expected
    assert result["without_key"] == 401 and result["done"] == "[DONE]" and result["chunks"] > 2


# --- limits -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_replies_are_cut_to_the_limit_and_to_the_context_left(limited, reference):
    client = limited.client()
    reply = chat(client, LONG, max_tokens=1000)                        # more than the limit
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (24, "length")
    assert reply.model_extra["emotion"] == reference(LONG, "afraid", max_tokens=24)[1]
    assert reply.choices[0].message.content == reference(LONG, "afraid", max_tokens=24)[0]
    # a prompt that leaves about 5 tokens of the 256 gets those, not a 400
    filler = 0
    while len(reference.runtime.prompt_ids(padded := [{"role": "user", "content": LONG[0][
            "content"] + " Some notes: " + "dragon, " * filler}])) < 251:
        filler += 1
    reply = chat(client, padded, max_tokens=20)
    room = 256 - len(reference.runtime.prompt_ids(padded))
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (room, "length")
    # the server's default emotion, and no steering when a request says ""
    assert chat(client, user(), "").model_extra["emotion"] == {}
    assert chat(client, user()).choices[0].message.content == reference(user(), "afraid")[0]


@pytest.mark.slow
def test_a_reply_ends_at_the_time_limit(timed):
    started = time.monotonic()
    reply = chat(timed.client(), LONG, max_tokens=1000)
    elapsed = time.monotonic() - started
    assert reply.choices[0].finish_reason == "length"
    assert 0 < reply.usage.completion_tokens < 1000
    assert elapsed < 10                       # the story alone takes far longer than that


def test_emotion_fields_are_read_as_one_mix():
    """Without a model: the request's emotion field and a model alias read as the CLI does."""
    from edgeemo.mix import Mix
    from edgeemo.serve.schema import APIError, parse_emotion

    available = {name: {} for name in emotions.EMOTIONS if name != "gloomy"}
    assert parse_emotion("fear:0.06,calm:0.03", available) == Mix.parse("afraid:0.06,calm:0.03")
    assert parse_emotion({"Scared": 0.06, "joy": None}, available).as_dict() == \
        {"afraid": 0.06, "happy": None}
    for empty in (None, "", {}):
        assert parse_emotion(empty, available) == Mix() and not parse_emotion(empty, available)
    for value, param, code, words in [
            ("xyzzy", "emotion", "unknown_emotion", "emotion: unknown emotion 'xyzzy'"),
            ("xyzzy", "model", "unknown_emotion", "model: unknown emotion 'xyzzy'"),
            ("gloom", "emotion", "invalid_emotion", "no 'gloomy' vector for this model"),
            ("fear,scared", "emotion", "invalid_emotion", "appears twice"),
            ({"afraid": 0.1, "fear": 0.1}, "emotion", "invalid_emotion", "appears twice"),
            ({"afraid": True}, "emotion", "invalid_emotion", "strength must be a number"),
            ("fear:2", "model", "invalid_emotion", "beyond"),
            # the sum is checked with the rest of the field (it was refused by the worker)
            ({"afraid": 0.8, "calm": 0.8}, "emotion", "invalid_emotion", "emotion: the mix adds"),
            ("fear:0.8,calm:0.8", "model", "invalid_emotion", "model: the mix adds up"),
            # a path is a file in a string and in a dict alike (a dict's was an unknown emotion,
            # and a string's 'dir/x' too)
            ("/etc/passwd.gguf", "emotion", "invalid_emotion", "vector files cannot be named"),
            ({"/etc/passwd.gguf": 0.1}, "emotion", "invalid_emotion", "vector files cannot be"),
            ("dir/x:0.1", "model", "invalid_emotion", "'dir/x': vector files cannot be named"),
            ({"./calm": None}, "emotion", "invalid_emotion", "vector files cannot be named")]:
        with pytest.raises(APIError) as err:
            parse_emotion(value, available, param=param)
        e = err.value
        assert (e.status, e.param, e.code) == (400, param, code), (value, e.message)
        assert words in e.message and "\n" not in e.message, (value, e.message)


# --- steering without extra_body ----------------------------------------------------------------

@pytest.mark.slow
def test_a_model_alias_steers(serial, reference):
    client = serial.client()
    for alias, emotion in ((f"{MODEL}:afraid", "afraid"), (f"{MODEL}:fear:0.06", {"afraid": 0.06}),
                           (f"{MODEL}:joy:0.06,calm:0.03", "joy:0.06,calm:0.03")):
        text, applied = reference(user(), emotion)
        reply = client.chat.completions.create(model=alias, messages=user(), max_tokens=16,
                                               **GREEDY)
        assert reply.choices[0].message.content == text, alias
        assert reply.model_extra["emotion"] == applied, alias
    ok = {"messages": user(), "max_tokens": 2}
    e = error_of(serial.post({**ok, "model": f"{MODEL}:xyzzy"}), 400)
    assert e["param"] == "model" and e["code"] == "unknown_emotion"
    e = error_of(serial.post({**ok, "model": "gpt-4o:afraid"}), 404)
    assert e["param"] == "model" and e["code"] == "model_not_found"
    e = error_of(serial.post({**ok, "model": f"{MODEL}:afraid", "emotion": "calm"}), 400)
    assert e["param"] == "emotion"


# --- text completions ---------------------------------------------------------------------------

@pytest.mark.slow
def test_text_completions_continue_the_prompt(serial, reference):
    client = serial.client()
    start = "Once upon a time, in a small village,"
    for emotion in (None, "fear"):
        text, applied = reference(start, emotion)
        extra = {"emotion": emotion} if emotion else None
        reply = client.completions.create(model=MODEL, prompt=start, max_tokens=16,
                                          extra_body=extra, **GREEDY)
        assert reply.choices[0].text == text and reply.model_extra["emotion"] == applied
        assert reply.usage.prompt_tokens == len(reference.runtime.text_ids(start))
        chunks = list(client.completions.create(model=MODEL, prompt=[start], max_tokens=16,
                                                stream=True, extra_body=extra, **GREEDY))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    echoed = client.completions.create(model=MODEL, prompt=start, max_tokens=16, echo=True,
                                       logprobs=2, **GREEDY)
    choice = echoed.choices[0]
    assert choice.text == start + reference(start)[0]
    assert start + "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset[0] == len(start)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    e = error_of(serial.post({"prompt": ["a", "b"], "max_tokens": 2}, path="/v1/completions"), 400)
    assert e["param"] == "prompt"
    e = error_of(serial.post({"prompt": "a", "suffix": "b"}, path="/v1/completions"), 400)
    assert e["param"] == "suffix"


# --- cancellation and the disconnect watcher ----------------------------------------------------

def test_a_request_cancelled_while_it_waits_gives_back_the_worker_it_was_handed():
    pool = WorkerPool(["only"], queue_size=4)

    async def scenario():
        first = await pool.take(asyncio.get_running_loop().create_future())
        waiting = asyncio.ensure_future(pool.take(asyncio.get_running_loop().create_future()))
        await asyncio.sleep(0.01)
        pool.release(first)                  # on its way to the waiting request...
        waiting.cancel()                     # ...which is cancelled before the worker arrives
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        again = await asyncio.wait_for(pool.take(asyncio.get_running_loop().create_future()), 2)
        return again, pool.waiting

    try:
        assert asyncio.run(scenario()) == ("only", 0)
    finally:
        pool.executor.shutdown()


def test_a_chats_next_turn_goes_to_the_worker_that_holds_it_waiting_a_bounded_time():
    turn1 = user("Hi!")
    turn2 = turn1 + [{"role": "assistant", "content": "Hello!"}, *user("How are you?")]
    title = turn2 + user("Give this chat a title.")        # asked while turn 2 is written

    async def take(pool, prompt, seconds=2):
        never = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(pool.take(never, prompt), seconds)

    async def after_turn1(pool):
        pool.release(await take(pool, turn1), turn2[:2])     # x, the worker free the longest
        await asyncio.sleep(0.01)
        return await take(pool, turn2)

    async def scenario(pool):
        loop = asyncio.get_running_loop()
        took = [await after_turn1(pool)]               # x again, though y is free the longest
        waiting = asyncio.ensure_future(take(pool, title))  # waits for x...
        await asyncio.sleep(0.05)
        took.append(await take(pool, user("Something else.")))   # ...a new chat behind takes y
        await asyncio.sleep(0.05)
        assert not waiting.done() and pool.waiting == 1
        pool.release(took[0])
        took.append(await waiting)                     # x, within the wait
        pool.release(took[1])
        started = loop.time()                          # x busy past the wait: any free worker
        took.append(await take(pool, title + user("Shorter, please.")))
        return took, loop.time() - started

    routed = WorkerPool(["x", "y"], queue_size=4, route_wait=0.3)
    unrouted = WorkerPool(["x", "y"], queue_size=4)
    try:
        took, waited = asyncio.run(scenario(routed))
        assert took == ["x", "y", "x", "y"] and 0.25 < waited < 1
        assert routed.stats["routed"] == 2 and routed.waiting == 0
        assert asyncio.run(after_turn1(unrouted)) == "y"     # without routing
    finally:
        routed.executor.shutdown()
        unrouted.executor.shutdown()


@pytest.mark.slow
def test_an_early_error_stops_the_disconnect_watcher(default_gguf):
    """A request answered with an error before it streams must not leave its watcher waiting for
    a disconnect that, on a kept-alive connection, may not come."""
    app = create_app(models.resolve(MODEL), threads=1)
    body = json.dumps({"messages": user("word " * 2100), "max_tokens": 4}).encode()

    async def call():
        sent, delivered = [], asyncio.Event()

        async def receive():
            if not delivered.is_set():
                delivered.set()
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()          # the connection stays open
        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        await app(scope, receive, send)
        await asyncio.sleep(0.1)
        left = [t for t in asyncio.all_tasks() if not t.done()
                and t.get_coro().__name__ == "watch_disconnect"]
        return sent[0]["status"], left

    try:
        status, left = asyncio.run(call())
    finally:
        app.state.pool.close()
    assert status == 400 and left == []


@pytest.mark.slow
def test_the_probe_waits_its_turn_in_the_queue(strict, monkeypatch):
    from edgeemo import export

    class Scores:
        def scores(self, texts):
            return [[("afraid", 0.9), ("calm", 0.1)] for _ in texts]

    monkeypatch.setattr(export, "cached_export", lambda model, precision: "an export")
    monkeypatch.setattr(strict.app.state, "probe", Scores())
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=120, headers=auth) as first:
        with first.stream("POST", strict.url + "/v1/chat/completions",
                          json={"messages": LONG, "max_tokens": 1000, "stream": True,
                                **GREEDY}) as running:
            next(running.iter_lines())                      # the only worker is generating
            probed = {}
            reading = threading.Thread(target=lambda: probed.update(response=strict.post(
                {"text": "Footsteps."}, path="/v1/probe", headers=auth)))
            reading.start()
            deadline = time.monotonic() + 30
            while strict.health()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert strict.health()["waiting"] == 1 and not probed
            e = error_of(strict.post({"text": "Footsteps."}, path="/v1/probe", headers=auth), 503)
            assert e["code"] == "queue_full"
        reading.join(60)
    assert probed["response"].status_code == 200
    assert probed["response"].json()["ranking"][0] == {"emotion": "afraid", "score": 0.9}


# --- the command line ---------------------------------------------------------------------------

def test_serve_refuses_a_remote_address_without_a_key():
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        result = CliRunner().invoke(cli, ["serve", "--host", host])
        assert result.exit_code == 2, result.output
        assert "--api-key" in result.output and "--allow-remote" in result.output
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "example.org", "10.0.0.1"))


@pytest.mark.slow
def test_serve_refuses_a_bad_default_emotion_in_one_line(default_gguf):
    result = CliRunner().invoke(cli, ["serve", "--emotion", "xyzzy", "--port", "0"])
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the server's default emotion: unknown emotion 'xyzzy'")
    assert "Traceback" not in result.output


# --- the prompt cache ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cached(default_gguf):
    """One worker that keeps its cached prompt from one request to the next."""
    yield from serve(prompt_cache=True)


@pytest.mark.slow
def test_the_prompt_cache_keeps_a_chats_earlier_turns_but_no_other_steering(cached):
    """Each turn reads only what is new; a steering change drops the positions read steered."""
    library = EmotionModel(models.resolve(MODEL), threads=1)       # the same calls, in-process
    client = cached.client()
    turns = [("fear", PROMPT), ("fear", "What happened next?"), ("calm", "And then?"),
             (None, "How did it end?")]
    messages, prompts, found = [], [], []
    try:
        for emotion, said in turns:
            messages = messages + user(said)
            reply = chat(client, messages, emotion, max_tokens=12)
            text = reply.choices[0].message.content
            library.steer(emotion, keep_cache=True) if emotion else library.clear(keep_cache=True)
            assert text == library.generate(messages, max_tokens=12, repeat_penalty=1.0, **GREEDY)
            prompts.append(len(library.prompt_ids(messages)))
            found.append(reply.usage.prompt_tokens_details.cached_tokens)
            messages = messages + [{"role": "assistant", "content": text}]
    finally:
        library.close()
    assert found[0] == 0                          # a fresh worker
    assert found[1] >= prompts[0]                 # turn 1, its steered reply included, reused
    assert found[2] == prompts[0] - 1             # calm: from turn 1's first steered position on,
    assert found[3] == prompts[2] - 1             # and unsteered: from turn 3's, read again


@pytest.fixture(scope="module")
def routed(default_gguf):
    """Two workers that keep their cached prompts, a chat's turns routed to the one holding it."""
    yield from serve(parallel=2, prompt_cache=True)


class Chat:
    """One client's conversation, each turn sending all of it so far; ``turns`` keeps
    (messages, reply) of each turn, ``workers`` the worker that answered it."""

    def __init__(self, client: OpenAI, emotion):
        self.client, self.emotion = client, emotion
        self.messages, self.turns, self.workers = [], [], []

    def say(self, text: str):
        messages = self.messages + user(text)
        raw = chat(self.client, messages, self.emotion, max_tokens=12, raw=True)
        reply = raw.parse()
        self.turns.append((messages, reply))
        self.workers.append(raw.headers["x-edgeemo-worker"])
        self.messages = messages + [{"role": "assistant",
                                     "content": reply.choices[0].message.content}]
        return reply

    def check(self, library: EmotionModel) -> None:
        """Each reply is the one a lone worker with a prompt cache gives to the same turns, and
        each turn after the first found the one before it cached, its reply included (so it ran
        on the worker that held the chat)."""
        expected = []
        for i, (messages, _) in enumerate(self.turns):
            keep = i > 0                                # turn 1 from an empty cache
            library.steer(self.emotion, keep_cache=keep) if self.emotion else \
                library.clear(keep_cache=keep)
            expected.append(library.generate(messages, max_tokens=12, repeat_penalty=1.0,
                                             **GREEDY))
        assert [r.choices[0].message.content for _, r in self.turns] == expected, self.emotion
        for (before, _), (_, reply) in zip(self.turns, self.turns[1:]):
            assert reply.usage.prompt_tokens_details.cached_tokens >= \
                len(library.prompt_ids(before)), self.emotion


@pytest.mark.slow
def test_a_chats_turns_go_to_the_worker_that_holds_it(routed):
    """Two chats in the order A1 A2 B1 A3 B2 B3: without routing, each next turn would take the
    other worker, the one free the longest, and find nothing of its chat cached."""
    library = EmotionModel(models.resolve(MODEL), threads=1)
    a, b = Chat(routed.client(), "fear"), Chat(routed.client(), "joy:0.06,calm:0.03")
    try:
        a.say("Good morning!")
        a.say("What are you doing today?")
        b.say("Hello there.")
        a.say("And after that?")
        b.say("Tell me a secret.")
        b.say("Why?")
        a.check(library)
        b.check(library)
    finally:
        library.close()
    assert routed.wait_idle()["routed"] >= 3
    # each chat stayed on one worker, the two chats on two, as the response headers say
    assert len(set(a.workers)) == len(set(b.workers)) == 1, (a.workers, b.workers)
    assert a.workers[0] != b.workers[0] and {a.workers[0], b.workers[0]} == {"0", "1"}


@pytest.mark.slow
def test_no_steering_leaks_through_the_cache_between_interleaved_chats(routed, reference):
    """Two clients at once, each a chat with its own emotion, on two workers that keep their
    caches: every reply is the one a lone worker gives. Then each chat goes on with other
    steering, on the worker that holds it: the reply is the one a fresh model gives, so nothing
    of the earlier steering was kept."""
    library = EmotionModel(models.resolve(MODEL), threads=1)
    chats = [Chat(routed.client(), "sad"), Chat(routed.client(), {"angry": 0.1})]
    said = ["I have some news.", "It is about the house.", "What should I do?"]

    def client(c):
        for text in said:
            c.say(text)

    threads = [threading.Thread(target=client, args=(c,)) for c in chats]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        for c in chats:
            c.check(library)
        for c, other in zip(chats, [None, "fear"]):
            messages = c.messages + user("Tell me more.")
            reply = chat(c.client, messages, other, max_tokens=12)
            assert reply.choices[0].message.content == reference(messages, other, 12)[0]
            # the chat read unsteered is reused, up to turn 1's first steered position
            assert reply.usage.prompt_tokens_details.cached_tokens == \
                len(library.prompt_ids(c.turns[0][0])) - 1
    finally:
        library.close()
    assert routed.wait_idle()["failed"] == 0

"""`edgeemo serve`: the OpenAI-compatible server, live on a loopback port, with the default model.

Every expected reply is computed here through the library (EmotionModel) or the CLI with the same
settings, greedy, never written down. Servers and the reference model use one llama.cpp thread
each, and only one of them generates at a time unless a test means them to run together.
"""

from __future__ import annotations

import json
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
from edgeemo.serve import create_app, is_loopback
from edgeemo.steer import EmotionModel, find_vector
from edgeemo.vectors import ControlVector, recommended_strength

MODEL = "smollm2-135m-instruct"
PROMPT = "Tell me about your morning."
KEY = "sk-test-0123456789"
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
    """One worker, one place in the queue, and an API key."""
    yield from serve(parallel=1, queue_size=1, api_key=KEY)


class Reference:
    """What the library says a request should get: a fresh steer (or clear) and generate, as
    `edgeemo generate` does; remembered per request."""

    def __init__(self):
        self.runtime = EmotionModel(models.resolve(MODEL), threads=1)   # as the server's workers
        self.known = {}

    def __call__(self, messages, emotion=None, max_tokens=16, steer_prompt=False):
        key = json.dumps([messages, emotion, max_tokens, steer_prompt], sort_keys=True)
        if key not in self.known:
            rt = self.runtime
            applied = rt.steer(emotion) if emotion else rt.clear()
            text = rt.generate(messages, max_tokens=max_tokens, steer_prompt=steer_prompt, **GREEDY)
            self.known[key] = (text, applied)
        return self.known[key]


@pytest.fixture(scope="module")
def reference(default_gguf):
    ref = Reference()
    yield ref
    ref.runtime.close()


def user(text=PROMPT):
    return [{"role": "user", "content": text}]


EMOTIONS = [None, "fear", "joy:0.06,calm:0.03", {"angry": 0.1}]


def chat(client: OpenAI, messages, emotion=None, max_tokens=16, stream=False, **extra):
    body = {"emotion": emotion, **extra} if emotion is not None or extra else None
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                          stream=stream, extra_body=body, **GREEDY)


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
        assert len(finishing) == 1 and chunks[-1].choices == [] and chunks[-1].usage is not None
        # the tokens counted are the tokens the library generates
        rt.steer(emotion) if emotion else rt.clear()
        tokens = list(rt.stream_ids(rt.prompt_ids(user()), max_tokens=16, **GREEDY))
        assert chunks[-1].usage.completion_tokens == len(tokens)
        assert chunks[-1].usage.prompt_tokens == len(rt.prompt_ids(user()))
        assert finishing[0].choices[0].finish_reason == ("length" if len(tokens) == 16 else "stop")


@pytest.mark.slow
def test_a_steered_reply_equals_edgeemo_generate(pair):
    result = CliRunner().invoke(cli, ["generate", "-p", PROMPT, "-e", "fear", "--temperature", "0",
                                      "--seed", "0", "--max-tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    reply = chat(pair.client(), user(), "fear")
    assert reply.choices[0].message.content == doc["text"]
    assert reply.model_extra["emotion"] == doc["emotions"]


@pytest.mark.slow
def test_steer_prompt_and_stop_strings(pair, reference):
    client = pair.client()
    text, applied = reference(user(), "fear", steer_prompt=True)
    reply = chat(client, user(), "fear", steer_prompt=True)
    assert reply.choices[0].message.content == text
    assert reply.model_extra["steer_prompt"] is True

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
    e = error_of(serial.post({**ok, "max_tokens": 4096}), 400)
    assert e["param"] == "max_tokens"
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
    assert error_of(serial.post({**ok, "seed": -1}), 400)["param"] == "seed"
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
    assert [m.id for m in strict.client(api_key=KEY).models.list()] == [MODEL]


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
    assert [m.id for m in serial.client().models.list()] == [MODEL]
    listed = httpx.get(serial.url + "/v1/emotions").json()["data"]
    assert [e["id"] for e in listed] == list(emotions.EMOTIONS)
    for e in listed:
        vec = ControlVector.from_gguf(find_vector(models.resolve(MODEL), e["id"]))
        assert e["strength"] == recommended_strength(vec)
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


# --- the command line ---------------------------------------------------------------------------

def test_serve_refuses_a_remote_address_without_a_key():
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        result = CliRunner().invoke(cli, ["serve", "--host", host])
        assert result.exit_code == 2, result.output
        assert "--api-key" in result.output and "--allow-remote" in result.output
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "example.org", "10.0.0.1"))

"""An OpenAI-compatible HTTP server for steered chat: ``edgeemo serve`` (needs the serve extra).

    from edgeemo.serve import create_app
    app = create_app("smollm2-135m-instruct", parallel=2)    # then: uvicorn.run(app)

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi!"}],
        extra_body={"emotion": "afraid"})          # or "joy:0.06,calm:0.03", or {"afraid": 0.08}
    print(reply.choices[0].message.content, reply.model_extra["emotion"])

Endpoints: ``POST /v1/chat/completions`` (streamed as server-sent events, or not), ``GET
/v1/models``, ``GET /v1/emotions``, ``POST /v1/probe`` (needs the model's ONNX export) and ``GET
/health``. ``emotion`` and ``steer_prompt`` mean what ``--emotion`` and ``--steer-prompt`` mean in
``edgeemo generate``: only the reply is steered unless ``steer_prompt`` is true.

Isolation. The server holds ``parallel`` workers, each an :class:`~edgeemo.steer.EmotionModel`
with its own llama.cpp context (its own control vector and KV cache) and its own thread. A request
takes an idle worker, sets its steering (``steer(mix)`` or ``clear()``, which also drops the
worker's cached prompt, so a reply never depends on the request before it) and generates; then the
worker goes back to the pool. Requests beyond ``parallel`` wait in a queue of ``queue_size``; when
that is full the answer is 503. llama.cpp maps the GGUF file into memory, so the workers share one
copy of the weights (the page cache); each worker adds its KV cache and compute buffers (about
75 MB for SmolLM2-135M at n_ctx 2048).

Disconnects. Each request has a stop flag, set when the client goes away (the ASGI server's
``http.disconnect``) or when a stream is closed; the worker checks it between tokens, so at most
one more token is computed before the worker is free again. A client that leaves while waiting in
the queue gives up its place.

Errors are OpenAI-style JSON, ``{"error": {"message", "type", "param", "code"}}``: an EdgeemoError
(a bad emotion, strength or prompt) is a 400; anything unexpected is a 500 whose details stay in
the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import require

require("serve", "fastapi", "uvicorn")

from fastapi import FastAPI, Request  # noqa: E402  (after the check for the serve extra)
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from . import __version__, emotions, models  # noqa: E402
from .errors import EdgeemoError, UnknownEmotion  # noqa: E402
from .steer import EmotionModel, check_messages, find_vector, looks_like_file  # noqa: E402
from .vectors import ControlVector, check_strength, recommended_strength  # noqa: E402

log = logging.getLogger("edgeemo.serve")

DEFAULT_MAX_TOKENS = 200        # when a request gives none (as in `edgeemo chat`)
MAX_BODY = 1_000_000            # bytes; a larger request body is a 413
PROBE_MAX_CHARS = 4000          # the probe reads the whole text at once in onnxruntime


# --- errors ------------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code),
                            status_code=self.status, headers=headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


HTTP_TYPES = {401: "authentication_error"}          # the error type of other statuses below 500


# --- the request body --------------------------------------------------------------------------

class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict:
        """{"role", "content"} with the content as text (a list of text parts is joined)."""
        content = self.content
        if isinstance(content, list):
            if any(part.get("type") != "text" or not isinstance(part.get("text"), str)
                   for part in content):
                raise APIError(400, "only text content parts ({'type': 'text', 'text': ...}) are "
                                    "supported", param="messages")
            content = "".join(part["text"] for part in content)
        return {"role": self.role, "content": content or ""}


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat completion request that edgeemo uses, plus ``emotion`` and
    ``steer_prompt``. Other fields OpenAI clients send (``user``, ``logprobs``, …) are ignored."""
    model_config = ConfigDict(extra="allow")
    messages: list[Message]
    model: str | None = None                     # any name is accepted: one model is loaded
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float = Field(0.7, ge=0, le=5, allow_inf_nan=False)    # 0 = greedy
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt | None = Field(None, ge=0, lt=2**32)                 # None: a fresh one
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    n: StrictInt = 1
    emotion: str | dict[str, Any] | None = None
    steer_prompt: StrictBool = False


class ProbeRequest(BaseModel):
    text: str


# --- emotions ----------------------------------------------------------------------------------

def available_emotions(model: models.Model) -> dict[str, dict]:
    """The emotion vectors found for ``model`` (store first, then prebuilt), by canonical name."""
    found = {}
    for name in emotions.EMOTIONS:
        path = find_vector(model, name)
        if path is None:
            continue
        vec = ControlVector.from_gguf(path)
        found[name] = {"id": name, "object": "emotion", "strength": recommended_strength(vec),
                       "layers": [min(vec.layers), max(vec.layers)],
                       "method": vec.metadata.get("method"),
                       "aliases": sorted(a for a, e in emotions.ALIASES.items()
                                         if e == name and a != name),
                       "path": str(path)}
    return found


def parse_emotion(value, available: dict[str, dict]) -> dict[str, float | None]:
    """The ``emotion`` field as ``{canonical name: strength or None}`` (None: the vector's
    calibrated strength); ``{}`` for no steering. Raises APIError (400) for anything else."""
    try:
        if value is None or value == "" or value == {}:
            return {}
        if isinstance(value, str):
            mix = emotions.parse_mix(value)
        else:
            mix = {}
            for name, strength in value.items():
                key = emotions.canonical(name)
                if key in mix:
                    raise EdgeemoError(f"{name!r} is {key!r} again: give each emotion once")
                mix[key] = None if strength is None else check_strength(strength)
        for name, strength in mix.items():
            if looks_like_file(name):
                raise EdgeemoError(f"{name!r}: vector files cannot be named over HTTP; use an "
                                   f"emotion name (GET /v1/emotions lists them)")
            if strength is not None:
                check_strength(strength)
            if name not in available:
                raise EdgeemoError(f"no {name!r} vector for this model; available: "
                                   f"{', '.join(available) or 'none'} (make one with "
                                   f"`edgeemo export-vector --emotion {name}`)")
    except EdgeemoError as exc:
        raise APIError(400, f"emotion: {exc}", param="emotion",
                       code="unknown_emotion" if isinstance(exc, UnknownEmotion)
                       else "invalid_emotion") from None
    return mix


# --- the worker pool ---------------------------------------------------------------------------

class QueueFull(Exception):
    pass


class WorkerPool:
    """``parallel`` EmotionModels, each used by one request at a time, and a bounded queue.

    Idle workers wait in an asyncio queue, so taking one is awaited in the event loop and
    releasing one (from the worker's thread, when its generation ends) is handed back to it.
    """

    def __init__(self, runtimes: list[EmotionModel], queue_size: int):
        self.runtimes = runtimes
        self.queue_size = queue_size
        self.executor = ThreadPoolExecutor(len(runtimes), thread_name_prefix="edgeemo-worker")
        self.waiting = 0
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "rejected": 0,
                      "tokens": 0}                      # tokens generated, all requests
        self._lock = threading.Lock()                   # stats are counted from the workers
        self._idle: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def busy(self) -> int:
        return len(self.runtimes) - (self._idle.qsize() if self._idle else len(self.runtimes))

    def _queue(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:       # made in the loop that serves
            self._idle, self._loop = asyncio.Queue(), loop
            for runtime in self.runtimes:
                self._idle.put_nowait(runtime)
        return self._idle

    def acquire(self) -> asyncio.Future:
        """A future for an idle worker: each request waits its turn; raises QueueFull when
        ``queue_size`` requests are already waiting for a worker."""
        idle = self._queue()
        if self.waiting >= idle.qsize() + self.queue_size:
            self.count("rejected")
            raise QueueFull()
        self.waiting += 1
        getting = asyncio.ensure_future(idle.get())
        getting.add_done_callback(self._got)
        return getting

    def _got(self, _future) -> None:
        self.waiting -= 1

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def release(self, runtime: EmotionModel) -> None:
        """Give a worker back; safe to call from any thread."""
        with contextlib.suppress(RuntimeError):         # the loop is gone: shutting down
            self._loop.call_soon_threadsafe(self._idle.put_nowait, runtime)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        for runtime in self.runtimes:
            runtime.close()


class Job:
    """One chat completion, run on a worker; its events go to the event loop as they happen.

    Events: ("start", applied mix, prompt tokens), ("text", piece), ("end", finish reason or
    None if stopped, completion tokens), ("error", exception). ``stop`` is set when the client
    has gone; the worker checks it between tokens.
    """

    def __init__(self, mix: dict, messages: list[dict], *, max_tokens: int, temperature: float,
                 top_p: float, seed: int, stop: list[str], steer_prompt: bool):
        self.mix, self.messages = mix, messages
        self.options = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                        "seed": seed, "steer_prompt": steer_prompt}
        self.stop_strings = stop
        self.stop = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.runtime: EmotionModel | None = None

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def run(self, pool: WorkerPool, runtime: EmotionModel) -> None:
        """Generate on ``runtime`` (in its thread), then give it back to the pool."""
        self.runtime = runtime
        try:
            if self.stop.is_set():                       # the client left before its turn
                pool.count("cancelled")
                self.emit("end", None, 0)
                return
            # this request's steering, whatever the worker did before (steer and clear also
            # drop the cached prompt, so the reply is the one a fresh model would give)
            applied = runtime.steer(self.mix) if self.mix else runtime.clear()
            ids = runtime.prompt_ids(self.messages)
            n_ctx, max_tokens = runtime.llm.n_ctx(), self.options["max_tokens"]
            if len(ids) + max_tokens > n_ctx:
                raise APIError(400, f"the prompt is {len(ids)} tokens and max_tokens is "
                                    f"{max_tokens}, but the context holds {n_ctx}: shorten the "
                                    f"messages or lower max_tokens", param="messages",
                               code="context_length_exceeded")
            self.emit("start", applied, len(ids))
            finish, produced = self.generate(ids)
            pool.count("completed" if finish else "cancelled")
            pool.count("tokens", produced)
            self.emit("end", finish, produced)
        except (APIError, EdgeemoError) as exc:
            pool.count("failed")
            self.emit("error", exc)
        except Exception as exc:                          # noqa: BLE001  (answered as a 500)
            pool.count("failed")
            log.exception("generation failed")
            self.emit("error", exc)
        finally:
            pool.release(runtime)

    def generate(self, ids: list[int]) -> tuple[str | None, int]:
        """Emit the reply's text; returns (finish reason or None if stopped, tokens generated).

        The text is the detokenized ids so far, whole UTF-8 characters only (as
        ``EmotionModel.stream``); text that may be the start of a stop string is held back.
        """
        runtime, tokens, shown = self.runtime, [], 0
        text = ""
        with contextlib.closing(runtime.stream_ids(ids, **self.options)) as stream:
            for token in stream:
                if self.stop.is_set():
                    return None, len(tokens)
                tokens.append(token)
                text = runtime.llm.detokenize(tokens).decode("utf-8", errors="ignore")
                cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0),
                          default=-1)
                if cut >= 0:
                    if cut > shown:
                        self.emit("text", text[shown:cut])
                    return "stop", len(tokens)
                safe = len(text) - held_back(text, self.stop_strings)
                if safe > shown:
                    self.emit("text", text[shown:safe])
                    shown = safe
        if self.stop.is_set():
            return None, len(tokens)
        if len(text) > shown:
            self.emit("text", text[shown:])
        return ("length" if len(tokens) >= self.options["max_tokens"] else "stop"), len(tokens)


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


async def watch_disconnect(request: Request, stop: threading.Event) -> None:
    """Set ``stop`` when the client disconnects (the request body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stop.set()
            return


# --- the API key and the body size limit -------------------------------------------------------

class Guard:
    """ASGI middleware, before anything else: with an API key, every path but /health needs
    ``Authorization: Bearer KEY`` (401); a request body over ``limit`` bytes is a 413, whether its
    Content-Length says so up front or a chunked body grows past it."""

    def __init__(self, app, *, limit: int, api_key: str | None):
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] != "/health" \
                and not self.authorized(headers.get(b"authorization", b"")):
            error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                             type="authentication_error", code="invalid_api_key")
            return await error.response()(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            error = APIError(413, self.too_large(), code="body_too_large")
            return await error.response({"Connection": "close"})(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self.too_large())
            return message

        await self.app(scope, limited, send)

    def authorized(self, header: bytes) -> bool:
        scheme, _, given = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                 self.api_key.encode())

    def too_large(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


# --- the app -----------------------------------------------------------------------------------

def create_app(model: str | os.PathLike | models.Model | None = None, *, parallel: int = 1,
               queue_size: int = 16, api_key: str | None = None, threads: int | None = None,
               n_ctx: int = 2048, max_body: int = MAX_BODY,
               max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:
    """A FastAPI app serving ``model`` (a name, a .gguf path or a Model; default: the default
    model) with ``parallel`` workers.

    Args:
        parallel: requests generated at once, one llama.cpp context each.
        queue_size: requests that may wait for a worker; one more is answered with 503.
        api_key: if set, every endpoint but /health wants ``Authorization: Bearer KEY``.
        threads: llama.cpp threads per worker (default: the cores shared out among the workers).
        n_ctx: each worker's context, in tokens; prompt + max_tokens must fit in it.
        max_body: the largest request body, in bytes (413 beyond).
        max_tokens: the reply length for requests that give none.

    Raises:
        EdgeemoError: an unknown model, or bad settings.
    """
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise EdgeemoError(f"parallel must be a whole number of at least 1, not {parallel!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
        raise EdgeemoError(f"the queue size must be a whole number of 0 or more, not "
                           f"{queue_size!r}")
    if api_key is not None and not api_key.strip():
        raise EdgeemoError("the API key is empty: give a secret string, or no API key")
    resolved = model if isinstance(model, models.Model) else models.ensure(
        None if model is None else str(model))
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    runtimes = []
    for _ in range(parallel):
        runtimes.append(EmotionModel(resolved, n_ctx=n_ctx, threads=threads))
    pool = WorkerPool(runtimes, queue_size)
    available = available_emotions(resolved)
    default_max_tokens = min(max_tokens, n_ctx)
    started = int(time.time())
    probe_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(title="edgeemo", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.pool = pool
    app.state.model = resolved
    app.state.probe = None                      # a probe.Probe, made on the first /v1/probe
    app.add_middleware(Guard, limit=max_body, api_key=api_key)

    # --- errors as OpenAI-style JSON ---

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(EdgeemoError)
    async def edgeemo_error(request, exc: EdgeemoError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", []
        elif first.get("type") == "missing" and not where:
            message = "the request needs a JSON body"
        else:
            message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid value')}"
        return APIError(400, message, param=where[0] if where else None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message += f": {request.method} {request.url.path}"
        return APIError(exc.status_code, message,
                        type=HTTP_TYPES.get(exc.status_code, "invalid_request_error")).response(
            getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        return unexpected_error().response()

    # --- the small endpoints ---

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": resolved.name, "parallel": parallel,
                "busy": pool.busy, "waiting": pool.waiting, "queue_size": queue_size,
                **pool.stats}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": resolved.name, "object": "model",
                                            "created": started, "owned_by": "edgeemo",
                                            "n_ctx": n_ctx}]}

    @app.get("/v1/emotions")
    async def list_emotions():
        return {"object": "list", "model": resolved.name,
                "data": [{k: v for k, v in e.items() if k != "path"} for e in available.values()]}

    @app.post("/v1/probe")
    async def probe(body: ProbeRequest):
        from . import export

        if export.cached_export(resolved, "fp32") is None:
            raise APIError(409, f"the probe needs an ONNX export of {resolved.name}: run "
                                f"`edgeemo export-model {resolved.name}`", code="export_missing")
        text = body.text
        if not text.strip():
            raise APIError(400, "text is empty", param="text")
        if len(text) > PROBE_MAX_CHARS:
            raise APIError(400, f"text is longer than {PROBE_MAX_CHARS} characters", param="text")

        def scores():
            from .probe import Probe

            with probe_lock:
                if app.state.probe is None:
                    app.state.probe = Probe(resolved)
                return app.state.probe.scores([text])[0]

        ranked = await asyncio.get_running_loop().run_in_executor(None, scores)
        return {"object": "probe", "model": resolved.name, "text": text,
                "ranking": [{"emotion": name, "score": round(score, 4)} for name, score in ranked]}

    # --- chat completions ---

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [m.plain() for m in body.messages]
        try:
            check_messages(messages)
        except EdgeemoError as exc:
            raise APIError(400, str(exc), param="messages") from None
        mix = parse_emotion(body.emotion, available)
        wanted = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        wanted = default_max_tokens if wanted is None else wanted
        if not 1 <= wanted <= n_ctx:
            raise APIError(400, f"max_tokens must be from 1 to {n_ctx} (the context), not "
                                f"{wanted}", param="max_tokens")
        if body.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or not all(stops):
            raise APIError(400, "stop is at most 4 non-empty strings", param="stop")
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(4), "little")

        job = Job(mix, messages, max_tokens=wanted, temperature=body.temperature,
                  top_p=body.top_p, seed=seed, stop=stops, steer_prompt=body.steer_prompt)
        watcher = asyncio.ensure_future(watch_disconnect(request, job.stop))
        try:
            try:
                getting = pool.acquire()
            except QueueFull:
                raise APIError(503, f"the server is busy: {parallel} requests are running and "
                                    f"{queue_size} waiting; try again shortly",
                               type="server_error", code="queue_full") from None
            await asyncio.wait({getting, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():                     # the client left while it waited
                getting.cancel()
                return JSONResponse({}, status_code=499)
            pool.count("requests")
            asyncio.get_running_loop().run_in_executor(pool.executor, job.run, pool,
                                                       getting.result())
            first = await job.events.get()
            if first[0] == "error":
                return error_response(first[1])
            if first[0] == "end":                      # stopped before it started
                return JSONResponse({}, status_code=499)
        except BaseException:
            job.stop.set()
            watcher.cancel()
            raise
        _, applied, prompt_tokens = first
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                 "model": resolved.name, "system_fingerprint": f"edgeemo-{__version__}"}
        extra = {"emotion": applied, "steer_prompt": body.steer_prompt}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(job, watcher, reply, extra, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        try:
            pieces = []
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "error":
                    return error_response(event[1])
                else:
                    _, finish, completion_tokens = event
                    break
        finally:
            job.stop.set()
            watcher.cancel()
        return {**reply, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "".join(pieces)},
                             "finish_reason": finish or "stop", "logprobs": None}],
                "usage": usage(prompt_tokens, completion_tokens), **extra}

    async def sse(job: Job, watcher, reply: dict, extra: dict, prompt_tokens: int,
                  include_usage: bool):
        """The completion as server-sent events, ending in ``data: [DONE]``."""
        def chunk(delta: dict | None, finish: str | None = None, **more) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta,
                                                 "finish_reason": finish, "logprobs": None}]
            doc = {**reply, "object": "chat.completion.chunk", "choices": choices, **extra, **more}
            return f"data: {json.dumps(doc)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    yield chunk({"content": event[1]})
                elif event[0] == "error":
                    body = json.loads(error_response(event[1]).body)
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                else:
                    _, finish, completion_tokens = event
                    counted = usage(prompt_tokens, completion_tokens)
                    yield chunk({}, finish or "stop", usage=counted)
                    if include_usage:                  # as OpenAI: a last chunk with no choices
                        yield chunk(None, usage=counted)
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.stop.set()                  # a closed or broken stream stops the generation
            watcher.cancel()

    return app


def error_response(exc: BaseException) -> JSONResponse:
    """An exception raised while generating, as the JSON answer it deserves."""
    if isinstance(exc, APIError):
        return exc.response()
    if isinstance(exc, EdgeemoError):
        return APIError(400, str(exc)).response()
    return unexpected_error().response()


def unexpected_error() -> APIError:
    return APIError(500, "internal server error (the details are in the server's log)",
                    type="server_error")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

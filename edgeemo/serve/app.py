"""The FastAPI app of ``edgeemo serve``: its settings, routes, error handlers and guard."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import threading
import time

from ..errors import EdgeemoError, require

try:
    from fastapi import APIRouter, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.middleware.cors import CORSMiddleware
except ImportError:
    require("serve", "fastapi", "uvicorn")    # a one-line error naming the pip install
    raise

from .. import __version__, emotions, export, models
from ..probe import Probe
from ..chatformat import check_messages
from ..steer import EmotionModel, find_vector
from ..vectors import ControlVector, recommended_strength
from .job import Job
from .pool import QueueFull, WorkerPool
from .replies import ChatShape, Shape, TextShape, sse, usage
from .schema import (HTTP_TYPES, APIError, ChatRequest, CompletionRequest, GenerationRequest,
                     ProbeRequest, error_response, parse_emotion, requested_mix, sampling,
                     unexpected_error)

DEFAULT_MAX_TOKENS = 200        # when a request gives none (as in `edgeemo chat`)
MAX_BODY = 1_000_000            # bytes; a larger request body is a 413
PROBE_MAX_CHARS = 4000          # the probe reads the whole text at once in onnxruntime
WORKER_HEADER = "X-Edgeemo-Worker"  # which worker (0 .. parallel-1) answered a generation request
ROUTE_WAIT = 1.0                # seconds a request may wait for the worker holding its prefix

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



# --- what the routes share ---------------------------------------------------------------------

class Server:
    """The served model, its emotions, the worker pool and the limits: what every route uses."""

    def __init__(self, model: models.Model, *, parallel: int, queue_size: int,
                 threads: int | None, n_ctx: int, max_tokens: int, max_tokens_limit: int | None,
                 time_limit: float | None, emotion: str | None, prompt_cache: bool,
                 route_wait: float):
        self.model = model
        self.available = available_emotions(model)
        try:
            self.default_mix = parse_emotion(emotion, self.available)
        except APIError as exc:
            raise EdgeemoError(f"the server's default {exc.message}") from None
        threads = threads or max(1, (os.cpu_count() or 1) // parallel)
        runtimes = []
        for _ in range(parallel):
            runtimes.append(EmotionModel(model, n_ctx=n_ctx, threads=threads))
        self.pool = WorkerPool(runtimes, queue_size,
                               route_wait=route_wait if prompt_cache else None)
        self.parallel, self.queue_size, self.n_ctx = parallel, queue_size, n_ctx
        self.n_vocab = runtimes[0].n_vocab
        self.longest = min(max_tokens_limit or n_ctx, n_ctx)
        self.default_max_tokens = min(max_tokens, self.longest)
        self.time_limit, self.prompt_cache = time_limit, prompt_cache
        self.started = int(time.time())
        self.probe_lock = threading.Lock()

    async def take_worker(self, watcher: asyncio.Future, prompt=None) -> EmotionModel | None:
        try:
            return await self.pool.take(watcher, prompt)
        except QueueFull:
            raise APIError(503, f"the server is busy: {self.parallel} requests are running and "
                                f"{self.queue_size} waiting; try again shortly",
                           type="server_error", code="queue_full") from None

    def prepare(self, body: GenerationRequest, prompt: list[dict] | str) -> Job:
        """The job a request asks for (raises APIError naming a bad field)."""
        options = sampling(body, n_vocab=self.n_vocab, max_tokens=self.default_max_tokens)
        options.max_tokens = min(options.max_tokens, self.longest)
        mix = requested_mix(body, self.model.name, self.available, self.default_mix)
        return Job(mix, prompt, options, time_limit=self.time_limit, keep_cache=self.prompt_cache)

    async def begin(self, job: Job, request: Request):
        """Queue ``job``, run it on a worker and wait for its start. Returns (the start event,
        the disconnect watcher, which the caller stops) or (an early answer, None)."""
        pool = self.pool
        watcher = asyncio.ensure_future(watch_disconnect(request, job.stop))
        running = False
        try:
            runtime = await self.take_worker(watcher, job.prompt)
            if runtime is None:                        # the client left while it waited
                return JSONResponse({}, status_code=499), None
            pool.count("requests")
            job.worker = pool.runtimes.index(runtime)
            asyncio.get_running_loop().run_in_executor(pool.executor, job.run, pool, runtime)
            first = await job.events.get()
            if first[0] == "error":
                return error_response(first[1]), None
            if first[0] == "end":                      # stopped before it started
                return JSONResponse({}, status_code=499), None
            running = True
            return first, watcher
        finally:
            if not running:                            # every early answer stops the watcher
                job.stop.set()
                watcher.cancel()

    async def respond(self, job: Job, request: Request, body: GenerationRequest, shape: Shape):
        first, watcher = await self.begin(job, request)
        if watcher is None:
            return first
        _, applied, prompt_tokens = first
        shape.header.update(emotion=applied, steer_prompt=job.options.steer_prompt)
        worker = {WORKER_HEADER: str(job.worker)}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(job, watcher, shape, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no", **worker})
        try:
            pieces, entries = [], []
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    pieces.append(event[1])
                    entries += event[2]
                elif event[0] == "error":
                    return error_response(event[1])
                else:
                    _, finish, completion_tokens, cached = event
                    break
        finally:
            job.stop.set()
            watcher.cancel()
        return JSONResponse(shape.whole("".join(pieces), entries, finish or "stop",
                                        usage(prompt_tokens, completion_tokens, cached)),
                            headers=worker)


# --- errors as OpenAI-style JSON ---------------------------------------------------------------

async def api_error(request, exc: APIError):
    return exc.response()


async def edgeemo_error(request, exc: EdgeemoError):
    return APIError(400, str(exc)).response()


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


async def http_error(request, exc: HTTPException):
    message = str(exc.detail)
    if exc.status_code in (404, 405):
        message += f": {request.method} {request.url.path}"
    return APIError(exc.status_code, message,
                    type=HTTP_TYPES.get(exc.status_code, "invalid_request_error")).response(
        getattr(exc, "headers", None))


async def unexpected(request, exc: Exception):
    return unexpected_error().response()


HANDLERS = {APIError: api_error, EdgeemoError: edgeemo_error,
            RequestValidationError: invalid_body, HTTPException: http_error,
            Exception: unexpected}


# --- the routes --------------------------------------------------------------------------------

router = APIRouter()


def server_of(request: Request) -> Server:
    return request.app.state.server


@router.get("/health")
async def health(request: Request):
    server = server_of(request)
    pool = server.pool
    return {"status": "ok", "model": server.model.name, "parallel": server.parallel,
            "busy": pool.busy, "waiting": pool.waiting, "queue_size": server.queue_size,
            **pool.stats}


@router.get("/v1/models")
async def list_models(request: Request):
    """The model, then one alias per emotion: "<model>:<emotion>" steers as that emotion."""
    server = server_of(request)
    name = server.model.name
    entry = {"object": "model", "created": server.started, "owned_by": "edgeemo",
             "n_ctx": server.n_ctx}
    return {"object": "list", "data": [
        {"id": name, **entry},
        *({"id": f"{name}:{emotion}", **entry, "emotion": emotion, "strength": e["strength"]}
          for emotion, e in server.available.items())]}


@router.get("/v1/emotions")
async def list_emotions(request: Request):
    server = server_of(request)
    return {"object": "list", "model": server.model.name,
            "data": [{k: v for k, v in e.items() if k != "path"}
                     for e in server.available.values()]}


@router.post("/v1/probe")
async def probe(body: ProbeRequest, request: Request):
    server = server_of(request)
    state, resolved, pool = request.app.state, server.model, server.pool
    if export.cached_export(resolved, "fp32") is None:
        raise APIError(409, f"the probe needs an ONNX export of {resolved.name}: run "
                            f"`edgeemo export-model {resolved.name}`", code="export_missing")
    text = body.text
    if not text.strip():
        raise APIError(400, "text is empty", param="text")
    if len(text) > PROBE_MAX_CHARS:
        raise APIError(400, f"text is longer than {PROBE_MAX_CHARS} characters", param="text")

    def scores():
        with server.probe_lock:
            if state.probe is None:
                state.probe = Probe(resolved)
            return state.probe.scores([text])[0]

    # the probe waits its turn in the queue and holds a worker while it reads
    watcher = asyncio.ensure_future(watch_disconnect(request, threading.Event()))
    try:
        runtime = await server.take_worker(watcher)
        if runtime is None:
            return JSONResponse({}, status_code=499)
        try:
            pool.count("requests")
            ranked = await asyncio.get_running_loop().run_in_executor(pool.executor, scores)
            pool.count("completed")
        finally:
            pool.release(runtime)
    finally:
        watcher.cancel()
    return {"object": "probe", "model": resolved.name, "text": text,
            "ranking": [{"emotion": name, "score": round(score, 4)} for name, score in ranked]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    server = server_of(request)
    messages = [m.plain() for m in body.messages]
    try:
        check_messages(messages)
    except EdgeemoError as exc:
        raise APIError(400, str(exc), param="messages") from None
    job = server.prepare(body, messages)
    return await server.respond(job, request, body, ChatShape(server.model.name, job.options))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    server = server_of(request)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "give one prompt per request (a string)", param="prompt")
        prompt = prompt[0]
    if not prompt.strip():
        raise APIError(400, "the prompt is empty", param="prompt")
    job = server.prepare(body, prompt)
    return await server.respond(job, request, body,
                                TextShape(server.model.name, job.options,
                                          prompt if body.echo else ""))


# --- the app -----------------------------------------------------------------------------------

def create_app(model: str | os.PathLike | models.Model | None = None, *, parallel: int = 1,
               queue_size: int = 16, api_key: str | None = None, threads: int | None = None,
               n_ctx: int = 2048, max_body: int = MAX_BODY,
               max_tokens: int = DEFAULT_MAX_TOKENS, max_tokens_limit: int | None = None,
               time_limit: float | None = None, cors_origins: list[str] | tuple = (),
               emotion: str | None = None, prompt_cache: bool = False,
               route_wait: float = ROUTE_WAIT) -> FastAPI:
    """A FastAPI app serving ``model`` (a name, a .gguf path or a Model; default: the default
    model) with ``parallel`` workers.

    Args:
        parallel: requests generated at once, one llama.cpp context each.
        queue_size: requests that may wait for a worker; one more is answered with 503.
        api_key: if set, every endpoint but /health wants ``Authorization: Bearer KEY``.
        threads: llama.cpp threads per worker (default: the cores shared out among the workers).
        n_ctx: each worker's context, in tokens; a reply is cut where it is full.
        max_body: the largest request body, in bytes (413 beyond).
        max_tokens: the reply length for requests that give none.
        max_tokens_limit: the longest reply; a request asking for more gets this many at most.
        time_limit: seconds a request may generate; its reply then ends (finish "length").
        cors_origins: origins a browser page may call the server from ("*": any).
        emotion: the steering of requests that name none (as their ``emotion`` field).
        prompt_cache: keep each worker's cached prompt from one request to the next (see
            ``EmotionModel.steer(keep_cache=True)``): a chat's next turn reads only what is new.
        route_wait: with ``prompt_cache`` and more than one worker, seconds a request whose
            prompt extends the one a busy worker holds waits for that worker before it takes
            any free one (0: only when it is free).

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
    if max_tokens_limit is not None and max_tokens_limit < 1:
        raise EdgeemoError(f"the max tokens limit must be at least 1, not {max_tokens_limit}")
    if not route_wait >= 0:
        raise EdgeemoError(f"the route wait must be 0 or more seconds, not {route_wait}")
    if time_limit is not None and not time_limit > 0:
        raise EdgeemoError(f"the time limit must be a positive number of seconds, not "
                           f"{time_limit}")
    resolved = model if isinstance(model, models.Model) else models.ensure(
        None if model is None else str(model))
    server = Server(resolved, parallel=parallel, queue_size=queue_size, threads=threads,
                    n_ctx=n_ctx, max_tokens=max_tokens, max_tokens_limit=max_tokens_limit,
                    time_limit=time_limit, emotion=emotion, prompt_cache=prompt_cache,
                    route_wait=route_wait)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.pool.close()

    app = FastAPI(title="edgeemo", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.server = server
    app.state.pool = server.pool
    app.state.model = resolved
    app.state.probe = None                      # a probe.Probe, made on the first /v1/probe
    app.add_middleware(Guard, limit=max_body, api_key=api_key)
    if cors_origins:                            # outside the guard: preflight needs no key
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"], max_age=600)
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.include_router(router)
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

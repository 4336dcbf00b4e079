"""An OpenAI-compatible HTTP server for steered chat: ``edgeemo serve`` (needs the serve extra).

    from edgeemo.serve import create_app
    app = create_app("smollm2-135m-instruct", parallel=2)    # then: uvicorn.run(app)

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi!"}],
        extra_body={"emotion": "afraid"})          # or "joy:0.06,calm:0.03", or {"afraid": 0.08}
    print(reply.choices[0].message.content, reply.model_extra["emotion"])

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent
events, or not), ``GET /v1/models``, ``GET /v1/emotions``, ``POST /v1/probe`` (needs the model's
ONNX export) and ``GET /health``. ``emotion`` and ``steer_prompt`` mean what ``--emotion`` and
``--steer-prompt`` mean in ``edgeemo generate``: only the reply is steered unless ``steer_prompt``
is true. A client that cannot send ``emotion`` names it in the model: ``"<model>:afraid"`` or
``"<model>:afraid:0.06"``. The request fields and what each does are in ``serve_schema.py``.

Isolation. The server holds ``parallel`` workers, each an :class:`~edgeemo.steer.EmotionModel`
with its own llama.cpp context (its own control vector and KV cache) and its own thread. A request
takes an idle worker, sets its steering (``steer(mix)`` or ``clear()``, which also drops the
worker's cached prompt, so a reply never depends on the request before it) and generates; then the
worker goes back to the pool. With ``prompt_cache`` the worker keeps the part of its cache the new
steering can use (``keep_cache=True``): the prompt read unsteered, and an earlier reply only if it
was steered as this one is; ``usage.prompt_tokens_details.cached_tokens`` says how much was
reused, and a request whose prompt extends the conversation a worker holds (a chat's next turn)
goes to that worker (see :class:`WorkerPool` for when it waits for it). Requests beyond
``parallel`` wait in a queue of ``queue_size``; when that is full the answer is 503. llama.cpp
maps the GGUF file into memory, so the workers share one copy of the weights (the page cache);
each worker adds its KV cache and compute buffers (about 75 MB for SmolLM2-135M at n_ctx 2048).

Disconnects. Each request has a stop flag, set when the client goes away (the ASGI server's
``http.disconnect``) or when a stream is closed; the worker checks it between tokens, so at most
one more token is computed before the worker is free again. A client that leaves while waiting in
the queue gives up its place. The probe waits in the same queue and holds a worker while it reads.

Limits. A reply is cut (finish_reason "length") at the request's ``max_tokens``, at the server's
``max_tokens_limit``, where the context is full, or when its generation has taken ``time_limit``
seconds; only a prompt that leaves no room in the context is a 400.

Browsers. ``cors_origins`` lists the origins whose pages may call the server; their preflight
requests are answered before the API key is checked (they never carry it).

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

import numpy as np

from .errors import EdgeemoError, UnknownEmotion, require

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.middleware.cors import CORSMiddleware
except ImportError:
    require("serve", "fastapi", "uvicorn")    # a one-line error naming the pip install
    raise

from . import __version__, emotions, export, models
from .mix import Mix
from .probe import Probe
from .serve_schema import (APIError, ChatRequest, CompletionRequest, GenerationRequest,
                           ProbeRequest, Sampling, sampling)
from .steer import EmotionModel, check_messages, find_vector
from .vectors import ControlVector, recommended_strength

log = logging.getLogger("edgeemo.serve")

DEFAULT_MAX_TOKENS = 200        # when a request gives none (as in `edgeemo chat`)
MAX_BODY = 1_000_000            # bytes; a larger request body is a 413
PROBE_MAX_CHARS = 4000          # the probe reads the whole text at once in onnxruntime
ROUTE_WAIT = 1.0                # seconds a request may wait for the worker holding its prefix


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


def parse_emotion(value, available: dict[str, dict], param: str = "emotion") -> Mix:
    """An emotion (a name, "joy:0.06,calm:0.03" or {"afraid": 0.08}) as a Mix of emotions this
    server has vectors for (a strength None: the vector's calibrated strength); an empty Mix for
    no steering. Raises APIError (400, naming ``param``) for anything else."""
    try:
        if value is None or value == "" or value == {}:
            return Mix()
        mix = Mix.parse(value) if isinstance(value, str) else Mix.from_dict(value)
        if mix.files:
            raise EdgeemoError(f"{mix.files[0]!r}: vector files cannot be named over HTTP; use "
                               f"an emotion name (GET /v1/emotions lists them)")
        for name in mix.names:
            if name not in available:
                raise EdgeemoError(f"no {name!r} vector for this model; available: "
                                   f"{', '.join(available) or 'none'} (make one with "
                                   f"`edgeemo export-vector --emotion {name}`)")
    except EdgeemoError as exc:
        raise APIError(400, f"{param}: {exc}", param=param,
                       code="unknown_emotion" if isinstance(exc, UnknownEmotion)
                       else "invalid_emotion") from None
    return mix


def requested_mix(body: GenerationRequest, served: str, available: dict[str, dict],
                  default: Mix) -> Mix:
    """The steering a request asks for: its ``emotion`` field, else the emotion named in its
    model (``"<model>:<emotion>"`` or ``"<model>:<emotion>:<strength>"``), else the server's
    default. A model name without ':' is the served model, whatever it says."""
    name, colon, alias = (body.model or "").partition(":")
    if colon and name != served:
        raise APIError(404, f"the model {body.model!r} does not exist: this server has {served} "
                            f"and {served}:<emotion> (GET /v1/models lists them)",
                       param="model", code="model_not_found")
    if colon and body.emotion is not None:
        raise APIError(400, "the emotion is given twice, in model and in emotion: give one",
                       param="emotion")
    if body.emotion is not None:
        return parse_emotion(body.emotion, available)
    if colon:
        if not alias:
            raise APIError(400, f"model: name an emotion after '{served}:'", param="model")
        return parse_emotion(alias, available, param="model")
    return default


# --- the worker pool ---------------------------------------------------------------------------

class QueueFull(Exception):
    pass


class Waiter:
    """A request waiting for a worker."""

    def __init__(self, future: asyncio.Future, prompt, wants, until: float):
        self.future = future        # resolved with the worker
        self.prompt = prompt        # its messages or text (None: the probe)
        self.wants = wants          # the worker that holds its prompt's prefix, or None
        self.until = until          # loop time from which any free worker will do


class WorkerPool:
    """``parallel`` EmotionModels, each used by one request at a time, and a bounded queue.

    Requests get free workers in their order of arrival, each the worker that has been free the
    longest. Routing (``route_wait`` not None, for the prompt cache): a worker remembers what its
    cache holds, the messages or text of its last request (and its reply, once finished). A
    request whose prompt begins with that (a chat's next turn sends the conversation so far) goes
    to that worker. If the worker is busy, a request that extends what it is reading (such as a
    title asked for a chat while its turn is written) waits up to ``route_wait`` seconds for it,
    requests behind it going first meanwhile, then takes any free worker.
    Everything here runs in the event loop but :meth:`release`, which hands the worker back to it.
    """

    def __init__(self, runtimes: list[EmotionModel], queue_size: int, *,
                 route_wait: float | None = None):
        self.runtimes = runtimes
        self.queue_size = queue_size
        self.route_wait = route_wait
        self.executor = ThreadPoolExecutor(len(runtimes), thread_name_prefix="edgeemo-worker")
        self.idle = list(runtimes)          # free workers, the longest free first
        self.held: dict = {}                # worker -> the messages or text it holds
        self.waiters: list[Waiter] = []     # first come, first served
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "rejected": 0,
                      "routed": 0, "tokens": 0}         # routed: to the worker holding a prefix
        self._lock = threading.Lock()                   # stats are counted from the workers
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def busy(self) -> int:
        return len(self.runtimes) - len(self.idle)

    @property
    def waiting(self) -> int:
        return len(self.waiters)

    def holder(self, prompt) -> EmotionModel | None:
        """The worker holding what ``prompt`` begins with (the longest), or None; a busy worker
        only if ``prompt`` goes on beyond its request's (a chat that merely opens as another
        does would evict that chat from the worker)."""
        if prompt is None or self.route_wait is None:
            return None
        found, longest = None, 0
        for runtime, held in self.held.items():
            if type(held) is type(prompt) and len(held) > longest \
                    and prompt[:len(held)] == held \
                    and (runtime in self.idle or len(prompt) > len(held)):
                found, longest = runtime, len(held)
        return found

    async def take(self, gone: asyncio.Future, prompt=None) -> EmotionModel | None:
        """A worker once one is free for this request (``prompt``: its messages or text), or
        None if ``gone`` (the client left) ends first.

        Raises QueueFull when ``queue_size`` requests are already waiting and no worker is free.
        Whatever way the wait ends (the client gone, or this coroutine cancelled), a worker that
        was handed over meanwhile goes back to the pool.
        """
        loop = self._loop = asyncio.get_running_loop()
        wants = self.holder(prompt)
        if len(self.waiters) >= self.queue_size:
            if not self.idle:
                self.count("rejected")
                raise QueueFull()
            wants = None                            # no room to wait for one worker
        waiter = Waiter(loop.create_future(), prompt, wants,
                        loop.time() + (self.route_wait or 0))
        self.waiters.append(waiter)
        self._dispatch()
        if not waiter.future.done() and wants is not None:
            loop.call_later(self.route_wait, self._dispatch)    # then any free worker will do
        try:
            await asyncio.wait({waiter.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_up(waiter)
            raise
        if gone.done():
            self._give_up(waiter)
            return None
        return waiter.future.result()

    def _dispatch(self) -> None:
        """Hand free workers to waiting requests, in order; one waiting for its busy holder is
        passed over until its wait is up, and the others leave the workers it wants alone."""
        now = self._loop.time()
        routing = [w for w in self.waiters if w.wants is not None and now < w.until]
        for waiter in list(self.waiters):
            if not self.idle:
                return
            if waiter in routing:
                if waiter.wants not in self.idle:
                    continue
                runtime = waiter.wants
                self.count("routed")
            else:
                wanted = {w.wants for w in routing}
                runtime = next((r for r in self.idle if r not in wanted), self.idle[0])
            self.idle.remove(runtime)
            self.waiters.remove(waiter)
            if waiter.prompt is not None:           # its cache is the new request's now
                self.held[runtime] = waiter.prompt
            waiter.future.set_result(runtime)

    def _give_up(self, waiter: Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            self._put_back(waiter.future.result())
        else:
            waiter.future.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            self._dispatch()                        # those it held back may go now

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def release(self, runtime: EmotionModel, held=None) -> None:
        """Give a worker back, ``held`` what its cache now holds (the messages or text of its
        request, its reply included) if known; safe to call from any thread."""
        with contextlib.suppress(RuntimeError):         # the loop is gone: shutting down
            self._loop.call_soon_threadsafe(self._put_back, runtime, held)

    def _put_back(self, runtime: EmotionModel, held=None) -> None:
        if held is not None:
            self.held[runtime] = held
        self.idle.append(runtime)
        self._dispatch()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        for runtime in self.runtimes:
            runtime.close()


class Job:
    """One completion, run on a worker; its events go to the event loop as they happen.

    Events: ("start", applied mix, prompt tokens), ("text", piece, logprob entries of the tokens
    it completes), ("end", finish reason or None if stopped, completion tokens, prompt tokens
    found cached), ("error", exception). ``stop`` is set when the client has gone; the worker
    checks it between tokens.
    """

    def __init__(self, mix: Mix, prompt: list[dict] | str, options: Sampling, *,
                 time_limit: float | None = None, keep_cache: bool = False):
        self.mix = mix
        self.prompt = prompt                # chat messages, or text to continue
        self.options = options
        self.time_limit = time_limit        # seconds of generation; then finish "length"
        self.keep_cache = keep_cache        # start from the worker's cached prompt
        self.stop = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.runtime: EmotionModel | None = None
        self.held = None                    # the prompt and its whole reply, once finished

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def run(self, pool: WorkerPool, runtime: EmotionModel) -> None:
        """Generate on ``runtime`` (in its thread), then give it back to the pool."""
        self.runtime = runtime
        try:
            if self.stop.is_set():                       # the client left before its turn
                pool.count("cancelled")
                self.emit("end", None, 0, 0)
                return
            # this request's steering, whatever the worker did before (steer and clear also
            # drop the cached prompt, so the reply is the one a fresh model would give, unless
            # the cache is kept: then only what this steering cannot reuse is dropped)
            keep = self.keep_cache
            applied = runtime.steer(self.mix, keep_cache=keep) if self.mix else \
                runtime.clear(keep_cache=keep)
            if isinstance(self.prompt, str):
                ids = runtime.text_ids(self.prompt)
            else:
                ids = runtime.prompt_ids(self.prompt)
            n_ctx = runtime.n_ctx
            if len(ids) >= n_ctx:
                raise APIError(400, f"the prompt is {len(ids)} tokens, but the context holds "
                                    f"{n_ctx} with the reply: shorten the prompt",
                               param="prompt" if isinstance(self.prompt, str) else "messages",
                               code="context_length_exceeded")
            # a reply longer than the context's space left is cut there (finish "length")
            self.options.max_tokens = min(self.options.max_tokens, n_ctx - len(ids))
            self.emit("start", applied, len(ids))
            finish, produced = self.generate(ids)
            pool.count("completed" if finish else "cancelled")
            pool.count("tokens", produced)
            self.emit("end", finish, produced, runtime.reused_tokens)
        except (APIError, EdgeemoError) as exc:
            pool.count("failed")
            self.emit("error", exc)
        except Exception as exc:                          # noqa: BLE001  (answered as a 500)
            pool.count("failed")
            log.exception("generation failed")
            self.emit("error", exc)
        finally:
            pool.release(runtime, self.held)

    def generate(self, ids: list[int]) -> tuple[str | None, int]:
        """Emit the reply's text; returns (finish reason or None if stopped, tokens generated).

        The text is the detokenized ids so far, whole UTF-8 characters only (as
        ``EmotionModel.stream``); text that may be the start of a stop string is held back, and
        the logprob entries of its tokens with it.
        """
        runtime, options = self.runtime, self.options
        logits = Logits(runtime, options.logit_bias, options.top_logprobs)
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        tokens, shown, text = [], 0, ""
        pending = []                        # (where its text starts, logprob entry), not emitted
        finish = None
        with contextlib.closing(runtime.stream_ids(
                ids, **options.generate_options(), logits_processor=logits.processors())) as stream:
            for token in stream:
                if self.stop.is_set():
                    return None, len(tokens)
                tokens.append(token)
                if logits.top is not None:
                    pending.append((len(text), logits.entry(token)))
                text = runtime.detokenize(tokens)
                cut = min((i for i in (text.find(s) for s in options.stop) if i >= 0),
                          default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    pending = [p for p in pending if p[0] < cut]
                    break
                safe = len(text) - held_back(text, options.stop)
                if safe > shown:
                    self.emit("text", text[shown:safe], [e for _, e in pending])
                    shown, pending = safe, []
                if deadline is not None and time.monotonic() > deadline:
                    finish = "length"                   # the time limit, as llama-server says
                    break
        if self.stop.is_set():
            return None, len(tokens)
        if len(text) > shown or pending:
            self.emit("text", text[shown:], [e for _, e in pending])
        if finish is None:
            finish = "length" if len(tokens) >= options.max_tokens else "stop"
        self.held = self.prompt + (text if isinstance(self.prompt, str) else
                                   [{"role": "assistant", "content": text}])
        return finish, len(tokens)


class Logits:
    """What a request does with each token's logits before sampling: adds its ``logit_bias``,
    and, if it wants logprobs, keeps the model's log probabilities (before bias and penalties)
    for :meth:`entry`, as OpenAI reports them."""

    def __init__(self, runtime: EmotionModel, bias: dict[int, float], top: int | None):
        self.runtime, self.top = runtime, top
        self.ids = np.array(list(bias), dtype=np.intc)
        self.amounts = np.array(list(bias.values()), dtype=np.float32)
        self.logprobs: np.ndarray | None = None     # (n_vocab,) of the token being sampled

    def processors(self) -> list | None:
        return [self] if self.top is not None or len(self.ids) else None

    def __call__(self, input_ids, logits: np.ndarray) -> np.ndarray:
        if self.top is not None:
            shifted = logits.astype(np.float64) - logits.max()
            self.logprobs = shifted - np.log(np.exp(shifted).sum())
        logits[self.ids] += self.amounts
        return logits

    def entry(self, token: int) -> dict:
        """{"token", "logprob", "bytes", "top_logprobs": the ``top`` likeliest} of ``token``."""
        logprobs = self.logprobs
        best = np.argpartition(-logprobs, self.top)[:self.top] if self.top else []
        best = sorted(best, key=lambda i: -logprobs[i])
        return {**self.described(token),
                "top_logprobs": [self.described(int(i)) for i in best]}

    def described(self, token: int) -> dict:
        raw = self.runtime.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"),
                "logprob": float(self.logprobs[token]), "bytes": list(raw)}


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
    available = available_emotions(resolved)
    try:
        default_mix = parse_emotion(emotion, available)
    except APIError as exc:
        raise EdgeemoError(f"the server's default {exc.message}") from None
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    runtimes = []
    for _ in range(parallel):
        runtimes.append(EmotionModel(resolved, n_ctx=n_ctx, threads=threads))
    pool = WorkerPool(runtimes, queue_size, route_wait=route_wait if prompt_cache else None)
    n_vocab = runtimes[0].n_vocab
    longest = min(max_tokens_limit or n_ctx, n_ctx)
    default_max_tokens = min(max_tokens, longest)
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
    if cors_origins:                            # outside the guard: preflight needs no key
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"], max_age=600)

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
        """The model, then one alias per emotion: "<model>:<emotion>" steers as that emotion."""
        entry = {"object": "model", "created": started, "owned_by": "edgeemo", "n_ctx": n_ctx}
        return {"object": "list", "data": [
            {"id": resolved.name, **entry},
            *({"id": f"{resolved.name}:{name}", **entry, "emotion": name,
               "strength": e["strength"]} for name, e in available.items())]}

    @app.get("/v1/emotions")
    async def list_emotions():
        return {"object": "list", "model": resolved.name,
                "data": [{k: v for k, v in e.items() if k != "path"} for e in available.values()]}

    @app.post("/v1/probe")
    async def probe(body: ProbeRequest, request: Request):
        if export.cached_export(resolved, "fp32") is None:
            raise APIError(409, f"the probe needs an ONNX export of {resolved.name}: run "
                                f"`edgeemo export-model {resolved.name}`", code="export_missing")
        text = body.text
        if not text.strip():
            raise APIError(400, "text is empty", param="text")
        if len(text) > PROBE_MAX_CHARS:
            raise APIError(400, f"text is longer than {PROBE_MAX_CHARS} characters", param="text")

        def scores():
            with probe_lock:
                if app.state.probe is None:
                    app.state.probe = Probe(resolved)
                return app.state.probe.scores([text])[0]

        # the probe waits its turn in the queue and holds a worker while it reads
        watcher = asyncio.ensure_future(watch_disconnect(request, threading.Event()))
        try:
            runtime = await take_worker(watcher)
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

    async def take_worker(watcher: asyncio.Future, prompt=None) -> EmotionModel | None:
        try:
            return await pool.take(watcher, prompt)
        except QueueFull:
            raise APIError(503, f"the server is busy: {parallel} requests are running and "
                                f"{queue_size} waiting; try again shortly",
                           type="server_error", code="queue_full") from None

    # --- completions ---

    def prepare(body: GenerationRequest, prompt: list[dict] | str) -> Job:
        """The job a request asks for (raises APIError naming a bad field)."""
        options = sampling(body, n_vocab=n_vocab, max_tokens=default_max_tokens)
        options.max_tokens = min(options.max_tokens, longest)
        mix = requested_mix(body, resolved.name, available, default_mix)
        return Job(mix, prompt, options, time_limit=time_limit, keep_cache=prompt_cache)

    async def begin(job: Job, request: Request):
        """Queue ``job``, run it on a worker and wait for its start. Returns (the start event,
        the disconnect watcher, which the caller stops) or (an early answer, None)."""
        watcher = asyncio.ensure_future(watch_disconnect(request, job.stop))
        running = False
        try:
            runtime = await take_worker(watcher, job.prompt)
            if runtime is None:                        # the client left while it waited
                return JSONResponse({}, status_code=499), None
            pool.count("requests")
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

    async def respond(job: Job, request: Request, body: GenerationRequest, shape: Shape):
        first, watcher = await begin(job, request)
        if watcher is None:
            return first
        _, applied, prompt_tokens = first
        shape.header.update(emotion=applied, steer_prompt=job.options.steer_prompt)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(job, watcher, shape, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
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
        return shape.whole("".join(pieces), entries, finish or "stop",
                           usage(prompt_tokens, completion_tokens, cached))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [m.plain() for m in body.messages]
        try:
            check_messages(messages)
        except EdgeemoError as exc:
            raise APIError(400, str(exc), param="messages") from None
        job = prepare(body, messages)
        return await respond(job, request, body, ChatShape(resolved.name, job.options))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "give one prompt per request (a string)", param="prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise APIError(400, "the prompt is empty", param="prompt")
        job = prepare(body, prompt)
        return await respond(job, request, body,
                             TextShape(resolved.name, job.options, prompt if body.echo else ""))

    return app


async def sse(job: Job, watcher, shape: Shape, prompt_tokens: int, include_usage: bool):
    """The completion as server-sent events, ending in ``data: [DONE]``; as OpenAI, the usage
    comes once, in a last chunk with no choices, when ``include_usage`` asks for it."""
    def data(doc: dict) -> str:
        return f"data: {json.dumps(doc)}\n\n"

    try:
        yield data(shape.first())
        while True:
            event = await job.events.get()
            if event[0] == "text":
                yield data(shape.chunk(event[1], event[2]))
            elif event[0] == "error":
                yield data(json.loads(error_response(event[1]).body))
                break
            else:
                _, finish, completion_tokens, cached = event
                yield data(shape.chunk(None, [], finish or "stop"))
                if include_usage:
                    yield data({**shape.chunk(None, []), "choices": [],
                                "usage": usage(prompt_tokens, completion_tokens, cached)})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.stop.set()                  # a closed or broken stream stops the generation
        watcher.cancel()


class Shape:
    """How a chat or a text completion answers: a whole reply, or chunks of one."""

    def __init__(self, model: str, options: Sampling, kind: str):
        self.logprobs = options.top_logprobs is not None
        self.header = {"id": f"{kind}-{uuid.uuid4().hex}", "created": int(time.time()),
                       "model": model, "system_fingerprint": f"edgeemo-{__version__}"}


class ChatShape(Shape):
    def __init__(self, model: str, options: Sampling):
        super().__init__(model, options, "chatcmpl")

    def first(self) -> dict:
        return self.piece({"role": "assistant", "content": ""}, None, None)

    def chunk(self, text: str | None, entries: list, finish: str | None = None) -> dict:
        return self.piece({} if text is None else {"content": text}, finish,
                          self.chat_logprobs(entries, text))

    def piece(self, delta: dict, finish: str | None, logprobs: dict | None) -> dict:
        return {**self.header, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": logprobs}]}

    def whole(self, text: str, entries: list, finish: str, counted: dict) -> dict:
        return {**self.header, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish,
                             "logprobs": self.chat_logprobs(entries, text)}],
                "usage": counted}

    def chat_logprobs(self, entries: list, text: str | None) -> dict | None:
        if not self.logprobs or text is None:
            return None
        return {"content": entries, "refusal": None}


class TextShape(Shape):
    def __init__(self, model: str, options: Sampling, echo: str):
        super().__init__(model, options, "cmpl")
        self.echo = echo                    # the prompt, if the reply repeats it
        self.offset = len(echo)             # where the next chunk's text starts

    def first(self) -> dict:
        return self.piece(self.echo, None, None)

    def chunk(self, text: str | None, entries: list, finish: str | None = None) -> dict:
        doc = self.piece(text or "", finish, self.text_logprobs(entries, self.offset))
        self.offset += len(text or "")
        return doc

    def piece(self, text: str, finish: str | None, logprobs: dict | None) -> dict:
        return {**self.header, "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": finish,
                             "logprobs": logprobs}]}

    def whole(self, text: str, entries: list, finish: str, counted: dict) -> dict:
        return {**self.piece(self.echo + text, finish,
                             self.text_logprobs(entries, len(self.echo))), "usage": counted}

    def text_logprobs(self, entries: list, offset: int) -> dict | None:
        """The legacy completions form: parallel lists, top alternatives as {token: logprob}."""
        if not self.logprobs:
            return None
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return {"tokens": [e["token"] for e in entries],
                "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                                 for e in entries],
                "text_offset": offsets}


HTTP_TYPES = {401: "authentication_error"}          # the error type of other statuses below 500


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


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

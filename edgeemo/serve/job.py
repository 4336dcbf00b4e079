"""One completion run on a worker: steering, the prompt's ids, and the reply as events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import numpy as np

from ..errors import EdgeemoError
from ..mix import Mix
from ..steer import EmotionModel, finish_reason
from .pool import WorkerPool
from .schema import APIError, Sampling

log = logging.getLogger("edgeemo.serve")


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
        self.worker: int | None = None      # the index of the worker it runs on

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
            applied = runtime.steer(self.mix, keep_cache=keep,
                                    steer_prompt=self.options.steer_prompt) if self.mix else \
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
            finish = finish_reason(len(tokens), options.max_tokens)
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

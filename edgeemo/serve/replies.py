"""The OpenAI-shaped answers: a whole chat or text completion, or its server-sent events."""

from __future__ import annotations

import json
import time
import uuid

from .. import __version__
from .job import Job
from .schema import Sampling, error_response


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


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}

"""The request bodies ``edgeemo serve`` reads, what each field does, and the errors it answers.

Every field of an OpenAI chat or completion request either works or is refused with a 400 whose
``param`` names it; ``null`` means the field's default. A few fields that cannot change the reply
(``user``, ``metadata``, ``store``, …) are accepted and ignored; a field the server does not know
is refused, since it may be meant to change the reply.

    body = ChatRequest.model_validate({"messages": [...], "temperature": None, "seed": -1})
    options = sampling(body, n_vocab=49152, max_tokens=200)

An error is answered as OpenAI-style JSON (:class:`APIError`); the ``emotion`` field, or an
emotion named in ``model``, becomes a Mix of the emotions the server has vectors for
(:func:`requested_mix`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from .. import _llama
from ..errors import EdgeemoError, UnknownEmotion
from ..mix import Mix

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


# --- the request bodies ------------------------------------------------------------------------

Number = Annotated[float, Field(allow_inf_nan=False)]


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


class GenerationRequest(BaseModel):
    """The fields chat and text completions share. ``None`` (absent or ``null``) is the default."""
    model_config = ConfigDict(extra="allow")
    model: str | None = None            # the served model, or "<model>:<emotion>[:<strength>]"
    max_tokens: StrictInt | None = None
    temperature: Annotated[Number, Field(ge=0, le=5)] | None = None        # 0.7; 0 = greedy
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None              # 0.95
    seed: Annotated[StrictInt, Field(ge=-1, lt=2**32)] | None = None       # None or -1: random
    stop: str | list[str] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    n: StrictInt | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None  # 0
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None  # 0
    logit_bias: dict[str, Annotated[Number, Field(ge=-100, le=100)]] | None = None
    # llama.cpp's own sampling fields
    repeat_penalty: Annotated[Number, Field(gt=0, le=10)] | None = None     # 1 = off
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None                  # 40; 0 = all
    min_p: Annotated[Number, Field(ge=0, le=1)] | None = None               # 0.05
    # edgeemo's
    emotion: str | dict[str, Any] | None = None
    steer_prompt: StrictBool | None = None


class ChatRequest(GenerationRequest):
    messages: list[Message]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    echo: StrictBool | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None   # the top N, and the token's
    best_of: StrictInt | None = None


class ProbeRequest(BaseModel):
    text: str


# Fields that cannot change a reply: accepted and ignored.
IGNORED = {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
           "parallel_tool_calls"}
# Fields that would change a reply in a way this server cannot give: a 400 unless null.
REFUSED = {
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "audio": "only text output is supported",
    "modalities": "only text output is supported (modalities: ['text'])",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the model does not reason: leave reasoning_effort out",
    "verbosity": "verbosity is not supported",
    "web_search_options": "web search is not supported",
    "suffix": "suffix (text after the insertion) is not supported",
}


def check_extra(body: GenerationRequest) -> None:
    """Refuse, with a 400 naming it, every field the server would otherwise ignore although it
    may change the reply."""
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED or value is None:
            continue
        if name == "modalities" and value == ["text"]:
            continue
        if name in REFUSED:
            raise APIError(400, f"{name}: {REFUSED[name]}", param=name, code="unsupported_field")
        raise APIError(400, f"unknown field {name!r}: this server does not read it, so leave "
                            f"it out", param=name, code="unsupported_field")


# --- what a request asks the generation for ----------------------------------------------------

@dataclass
class Sampling:
    """The generation settings of one request, every default filled in."""
    max_tokens: int                     # the reply's length asked for (may be cut to fit)
    temperature: float = 0.7            # 0 = greedy, up to 5
    top_p: float = 0.95                 # nucleus: the smallest set of tokens with this mass
    top_k: int = 40                     # only the k likeliest tokens (0: all)
    min_p: float = 0.05                 # drop tokens below this fraction of the likeliest
    seed: int = 0                       # 0 to 2**32-1
    repeat_penalty: float = 1.0         # 1 = off; llama.cpp's, over the last 64 tokens
    frequency_penalty: float = 0.0      # -2 to 2, times how often a token appeared
    presence_penalty: float = 0.0       # -2 to 2, once a token appeared
    logit_bias: dict[int, float] = field(default_factory=dict)    # token id -> -100 to 100
    top_logprobs: int | None = None     # None: no logprobs; else this many alternatives
    grammar: Any = None                 # a llama.cpp grammar the reply must follow
    steer_prompt: bool = False
    stop: list[str] = field(default_factory=list)

    def generate_options(self) -> dict:
        """The keyword arguments of ``EmotionModel.stream_ids`` (but the logits processor)."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                "seed": self.seed, "repeat_penalty": self.repeat_penalty,
                "frequency_penalty": self.frequency_penalty,
                "presence_penalty": self.presence_penalty, "grammar": self.grammar,
                "steer_prompt": self.steer_prompt}


def sampling(body: GenerationRequest, *, n_vocab: int, max_tokens: int) -> Sampling:
    """The settings a request asks for; ``max_tokens`` is the server's default reply length.
    Raises APIError (400, naming the field) for a value the server cannot honour."""
    check_extra(body)
    defaults = Sampling(max_tokens=max_tokens)
    if body.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    if getattr(body, "best_of", None) not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", param="best_of")
    wanted = body.max_tokens
    if wanted is None and isinstance(body, ChatRequest):
        wanted = body.max_completion_tokens
    if wanted is not None and wanted < 1:
        raise APIError(400, f"max_tokens must be at least 1, not {wanted}", param="max_tokens")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or not all(stops):
        raise APIError(400, "stop is at most 4 non-empty strings", param="stop")
    options = (body.stream_options or {})
    if not body.stream and options:
        raise APIError(400, "stream_options is only for stream: true", param="stream_options")
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            raise APIError(400, f"stream_options: unknown option {key!r} (include_usage is the "
                                f"one read)", param="stream_options")
    seed = body.seed
    if seed is None or seed == -1:
        seed = int.from_bytes(os.urandom(4), "little")
    given = {name: getattr(body, name) for name in (
        "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty",
        "presence_penalty", "steer_prompt") if getattr(body, name) is not None}
    return dataclasses.replace(defaults, **given, max_tokens=wanted or max_tokens, seed=seed,
                               stop=stops, logit_bias=logit_bias(body.logit_bias, n_vocab),
                               top_logprobs=top_logprobs(body), grammar=grammar(body))


def logit_bias(value: dict | None, n_vocab: int) -> dict[int, float]:
    """``{"token id": bias}`` as ``{id: bias}``; ids must be in the model's vocabulary."""
    bias = {}
    for key, amount in (value or {}).items():
        if not key.strip().isdigit() or not 0 <= int(key) < n_vocab:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model (0 to "
                                f"{n_vocab - 1})", param="logit_bias")
        bias[int(key)] = amount
    return bias


def top_logprobs(body: GenerationRequest) -> int | None:
    """How many alternatives to give with each token's log probability; None: no logprobs."""
    if isinstance(body, CompletionRequest):
        return body.logprobs
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def grammar(body: GenerationRequest):
    """The llama.cpp grammar ``response_format`` asks for, or None."""
    fmt = getattr(body, "response_format", None)
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _llama.json_grammar()
    if kind != "json_schema":
        raise APIError(400, f"response_format: type {kind!r} is not one of text, json_object, "
                            f"json_schema", param="response_format")
    schema = (fmt.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise APIError(400, "response_format: json_schema needs a 'schema' object, as in "
                            "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': "
                            "{...}}}", param="response_format")
    try:
        return _llama.json_schema_grammar(json.dumps(schema))
    except Exception as exc:                        # noqa: BLE001  (the converter's own errors)
        raise APIError(400, f"response_format: this JSON schema cannot be turned into a "
                            f"grammar: {exc}", param="response_format") from None


# --- the emotion a request asks for ---------------------------------------------------------------

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

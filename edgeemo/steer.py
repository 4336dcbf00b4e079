"""Steered inference: a GGUF model in llama.cpp whose emotional tone is set by control vectors.

    from edgeemo.steer import EmotionModel
    m = EmotionModel()                         # the default model, from the store
    m.steer({"afraid": 0.08})                  # strength: a fraction of each layer's residual norm
    print(m.generate("Tell me about your morning.", max_tokens=60, seed=0))
    m.steer({"afraid": 0.06, "calm": -0.03})   # a weighted mix; negative steers away
    m.clear()                                  # back to the unsteered model, exactly

Switching emotion or strength never reloads the model: it rewrites llama.cpp's control-vector
buffer (one call into llama.cpp, in ``_llama/``) and drops the cached prompt state.

Only the reply is steered, by default: the prompt (the whole conversation so far) is evaluated
with the vector off, then the vector is set and the reply is generated. Steering the prompt too,
as stock llama.cpp does with ``--control-vector``, makes a small model drop the request and tell a
story (on SmolLM2-135M, 68% of steered replies stayed on the request against 90% reply-only).
``EmotionModel(steer_prompt=True)`` or ``stream(..., steer_prompt=True)`` steers both.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import _llama, emotions, models, store
from .chatformat import prompt_ids
from .errors import EdgeemoError, NotSteerable, VectorFormatError, VectorNotFound
from .mix import Mix, check_total, looks_like_file
from .vectors import ControlVector, mix_buffer, scale_for


@dataclass(frozen=True)
class Completion:
    """One whole reply: its text, the ids generated, the seconds it took (the prompt's evaluation
    and the reply's generation), why it ended ("stop": end of turn; "length": ``max_tokens``
    reached), and the prompt's length in tokens."""
    text: str
    ids: tuple[int, ...]
    seconds: float
    finish_reason: str
    prompt_tokens: int

    @property
    def tokens(self) -> int:
        """Tokens generated (the ids counted, not the text tokenized again)."""
        return len(self.ids)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None


MAX_TOKENS = 200                     # a reply's length when no max_tokens is given


def finish_reason(produced: int, max_tokens: int) -> str:
    """Why a reply of ``produced`` tokens ended, when nothing else stopped it."""
    return "length" if produced >= max_tokens else "stop"


class EmotionModel:
    def __init__(self, model: str | Path | models.Model | None = None, *, n_ctx: int = 2048,
                 seed: int = 0, threads: int | None = None, steer_prompt: bool = False,
                 verbose: bool = False):
        self.model = model if isinstance(model, models.Model) else models.ensure(
            None if model is None else str(model))
        try:
            self.llm = _llama.load(self.model.path, n_ctx=n_ctx, seed=seed, threads=threads,
                                   verbose=verbose)
        except ValueError as exc:           # llama-cpp-python's "Failed to load model from file"
            raise models.load_failed(self.model, exc) from None
        self.arch, self.n_embd, self.n_layer = _llama.model_shape(self.llm)
        self.vectors: dict[str, ControlVector] = {}     # loaded vectors, by emotion name
        self.mix: dict[str, float] = {}                  # what is applied now: emotion -> strength
        self.layers: tuple[int, int] | None = None
        self.steer_prompt = steer_prompt                 # steer the prompt too, not only the reply
        self._buffer = None                              # the control vector set now, or None
        self._cache = None                               # how the cached prompt was evaluated
        # cached positions from here on were computed with the vector on, steered by
        # _steered_by (mix, layers); those before it, with the vector off (None: none steered)
        self._steered_from: int | None = None
        self._steered_by = None
        self.reused_tokens = 0                           # prompt tokens the last call found cached
        self.is_eog = _llama.eog_test(self.llm)          # does a token end the reply?

    def close(self) -> None:
        """Free llama.cpp's model and context now (also safe to call twice)."""
        _llama.close(self.llm)

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds: the prompt and the reply together."""
        return _llama.n_ctx(self.llm)

    @property
    def n_vocab(self) -> int:
        return _llama.n_vocab(self.llm)

    @property
    def threads(self) -> int:
        """The threads llama.cpp computes with."""
        return _llama.n_threads(self.llm)

    def reset(self) -> None:
        """Forget the cached prompt: the next reply evaluates its whole prompt again."""
        _llama.reset(self.llm)
        self._cache, self._steered_from = None, None

    # --- prompts ---------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation, ready for the assistant's turn (see :func:`prompt_ids`)."""
        return prompt_ids(self.llm, messages)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain text to continue (no chat template), after the BOS token."""
        if not isinstance(text, str) or not text.strip():
            raise EdgeemoError("the prompt is empty: give some text to continue")
        return self.tokenize(text, add_bos=True)

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` as text (special-token strings are not read as tokens)."""
        return _llama.tokenize(self.llm, text, bos=add_bos)

    def detokenize(self, ids: list[int], *, errors: str = "ignore") -> str:
        """The text of ``ids``; by default a character cut off at the end is left out."""
        return _llama.detokenize(self.llm, ids).decode("utf-8", errors=errors)

    def token_text(self, token: int) -> str:
        """One token's text, special tokens spelled out (``<|im_end|>``)."""
        return _llama.token_text(self.llm, token)

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes, special tokens spelled out (a piece of a UTF-8 character, maybe)."""
        return _llama.detokenize(self.llm, [token], special=True)

    # --- generation ------------------------------------------------------------------------

    def stream_ids(self, prompt_ids: list[int], *, max_tokens: int = MAX_TOKENS,
                   temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40,
                   min_p: float = 0.05, repeat_penalty: float = 1.1,
                   frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, seed: int | None = None,
                   steer_prompt: bool | None = None, grammar=None,
                   logits_processor=None) -> Iterator[int]:
        """Yield generated token ids until end of turn or ``max_tokens``.

        ``steer_prompt`` (default: the model's setting) steers the prompt's tokens as well as the
        reply's; otherwise the prompt is evaluated unsteered (see :meth:`_prepare`). The sampling
        options are llama.cpp's (``Llama.generate``); ``grammar`` (``_llama.json_grammar`` or
        ``json_schema_grammar``) is one the reply must follow, and ``logits_processor`` sees (and
        may change) each token's logits before sampling.
        """
        if not prompt_ids:
            raise EdgeemoError("the prompt is empty: give some text to respond to")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise EdgeemoError(f"max_tokens must be a whole number of at least 1, not {max_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or not 0 <= temperature <= 5:
            raise EdgeemoError(f"temperature must be a number from 0 (greedy) to 5, not "
                               f"{temperature!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < 2**32):
            raise EdgeemoError(f"seed must be a whole number from 0 to {2**32 - 1}, not {seed!r}")
        n_ctx = self.n_ctx
        if len(prompt_ids) + max_tokens > n_ctx:
            raise EdgeemoError(f"context overflow: the prompt is {len(prompt_ids)} tokens and "
                               f"{max_tokens} more were asked for, but the context holds {n_ctx}; "
                               f"shorten the prompt, lower --max-tokens, or /reset the chat")
        if seed is not None:
            _llama.set_seed(self.llm, seed)
        self._prepare(prompt_ids, self.steer_prompt if steer_prompt is None else steer_prompt)
        greedy = temperature <= 0
        produced = 0
        for token in _llama.generate(self.llm, prompt_ids, temp=max(temperature, 0.0),
                                     top_k=1 if greedy else top_k, top_p=top_p, min_p=min_p,
                                     repeat_penalty=repeat_penalty,
                                     frequency_penalty=frequency_penalty,
                                     presence_penalty=presence_penalty, grammar=grammar,
                                     logits_processor=logits_processor):
            if self.is_eog(token):
                break
            yield token
            produced += 1
            if produced >= max_tokens:
                break

    def _prepare(self, prompt_ids: list[int], steer_prompt: bool) -> None:
        """Make llama.cpp's cache hold the prompt as this call wants it.

        Reply-only: with the vector off, evaluate the prompt but its last token (reusing whatever
        prefix is cached, e.g. the earlier turns of a chat), then set the vector without clearing
        the cache. ``Llama.generate`` then re-evaluates only the last prompt token, whose output
        gives the first reply token, and every later token, all steered. Earlier steered replies
        keep the keys and values they were generated with; each new user turn is unsteered.
        """
        mode = "prompt" if steer_prompt or self._buffer is None else "reply"
        if self._cache not in (None, mode):
            _llama.reset(self.llm)            # cached with the other mode: evaluate again
            self._steered_from = None
        # unsteered, every cached position is read with the vector off: good for either mode
        self._cache = mode if self._buffer is not None else None
        if mode == "prompt":                  # Llama.generate reuses the cached prefix itself
            self.reused_tokens = self.cached_prefix(prompt_ids)
            if self._buffer is not None:
                self._steered_from, self._steered_by = 0, (self.mix, self.layers)
            return
        _llama.set_control_vector(self.llm, None, reset=False)
        head = prompt_ids[:-1]
        same = self.reused_tokens = self.cached_prefix(prompt_ids)
        _llama.evaluate(self.llm, head, cached=same)
        _llama.set_control_vector(self.llm, self._buffer, reset=False)
        # the last prompt token and the reply are steered, and an earlier reply reused, if any
        earlier = self._steered_from if self._steered_from is not None else len(head)
        self._steered_from = earlier if earlier < same else len(head)
        self._steered_by = (self.mix, self.layers)

    def cached_prefix(self, prompt_ids: list[int]) -> int:
        """How many leading tokens of ``prompt_ids`` the cache holds (at most all but the last,
        which is always evaluated again)."""
        return _llama.cached_prefix(self.llm, prompt_ids, len(prompt_ids) - 1)

    def _keep_unsteered(self, steering) -> None:
        """Keep the cache through a change of steering, but the positions that were computed
        steered otherwise: a conversation's earlier turns, read unsteered, stay cached (reply-only
        steering), an earlier reply steered as the next one will be stays too, and any other
        steered positions are dropped. The cache left holds no steered positions unless
        ``steering`` is theirs."""
        if self._steered_from is None or steering == self._steered_by:
            return
        _llama.keep_cached(self.llm, self._steered_from)
        self._steered_from, self._cache = None, None

    def stream(self, prompt: str | list[dict], **options) -> Iterator[str]:
        """Yield text pieces as they are generated (whole UTF-8 characters only)."""
        yield from self._pieces(self.stream_ids(self._reply_ids(prompt), **options), [])

    def generate(self, prompt: str | list[dict], **options) -> str:
        return "".join(self.stream(prompt, **options))

    def complete(self, prompt: str | list[dict], *, on_text: Callable[[str], None] | None = None,
                 **options) -> Completion:
        """The whole reply to a prompt (a user message, or a conversation), timed and counted.

        ``options`` are :meth:`stream_ids`'s; ``on_text`` is called with each piece of text as
        it is generated (as :meth:`stream` yields them), e.g. to show the reply as it comes.
        """
        return self.complete_ids(self._reply_ids(prompt), on_text=on_text, **options)

    def complete_ids(self, prompt_ids: list[int], *, max_tokens: int = MAX_TOKENS,
                     on_text: Callable[[str], None] | None = None, **options) -> Completion:
        """:meth:`complete` for a prompt already turned into token ids."""
        started = time.perf_counter()
        ids: list[int] = []
        pieces = []
        tokens = self.stream_ids(prompt_ids, max_tokens=max_tokens, **options)
        for piece in self._pieces(tokens, ids):
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        seconds = time.perf_counter() - started
        return Completion("".join(pieces), tuple(ids), seconds,
                          finish_reason(len(ids), max_tokens), len(prompt_ids))

    def _reply_ids(self, prompt: str | list[dict]) -> list[int]:
        if isinstance(prompt, str) and not prompt.strip():
            raise EdgeemoError("the prompt is empty: give some text to respond to")
        return self.prompt_ids([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                               else prompt)

    def _pieces(self, tokens: Iterator[int], ids: list[int]) -> Iterator[str]:
        """The text of ``tokens`` piece by piece, whole UTF-8 characters only; ``ids`` gets
        each token as it comes."""
        shown = ""
        for token in tokens:
            ids.append(token)
            text = self.detokenize(ids)
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    # --- steering --------------------------------------------------------------------------

    def vector(self, name_or_path: str) -> ControlVector:
        """A control vector for this model, by emotion name (store or prebuilt) or file path."""
        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise EdgeemoError(f"an emotion is a name such as 'afraid' or a path to a .gguf "
                               f"vector, not {name_or_path!r}")
        if name_or_path in self.vectors:
            return self.vectors[name_or_path]
        if looks_like_file(name_or_path):
            path = Path(name_or_path)
            key = str(path)
        else:
            key = emotions.canonical(name_or_path, allow_custom=True)
            path = find_vector(self.model, key)
            if path is None:
                raise VectorFormatError(
                    f"no '{key}' vector for {self.model.name}: make one with "
                    f"`edgeemo export-vector --emotion {key} --model {self.model.name}`")
        vec = ControlVector.from_gguf(path)
        vec.check_compatible(self.arch, self.n_embd, self.n_layer, model_name=self.model.name)
        self.vectors[key] = vec
        return vec

    def load_vectors(self, directory: str | os.PathLike,
                     names: list[str] | None = None) -> dict[str, Path]:
        """Steer with ``directory/<emotion>.gguf`` instead of the store's or the prebuilt vector,
        for each of ``names`` (default: every .gguf file there), each checked against the model.
        Returns the files by emotion; raises VectorNotFound naming the first one missing."""
        if names is None:
            names = sorted(p.stem for p in Path(directory).glob("*.gguf"))
        paths = {}
        for name in names:
            path = Path(directory) / f"{name}.gguf"
            if not path.is_file():
                raise VectorNotFound(f"no {name}.gguf in {os.fspath(directory)}")
            self.vectors[name] = self.vector(str(path))
            paths[name] = path
        return paths

    def steer(self, mix: Mix | dict[str, float | None] | str | os.PathLike | None, *,
              layers: tuple[int, int] | None = None, keep_cache: bool = False,
              steer_prompt: bool | None = None) -> dict[str, float]:
        """Apply an emotion or a weighted mix ({"afraid": 0.06, "calm": -0.02}); None clears.

        ``mix`` is a :class:`~edgeemo.mix.Mix`, a dict of emotion names (custom concepts too) or
        vector paths to strengths, a string as ``--emotion`` takes ("fear:0.06,calm:-0.02"), or
        the path of one vector file. A strength is a fraction of each layer's typical residual
        norm; None means the vector's recommended strength for the steering that follows:
        reply-only, or the whole sequence with ``steer_prompt`` (default: the model's setting;
        ``vectors.recommended_strength``). Returns the applied mix with
        strengths filled in. The cached prompt is dropped, so the next reply is the one a fresh
        model gives, unless ``keep_cache``: then its unsteered part is kept (see
        :meth:`_keep_unsteered`), which saves reading a conversation's earlier turns again,
        though a reply read from a cached prefix may differ from a fresh one where two tokens are
        nearly tied (another order of float sums).
        """
        if isinstance(mix, str):
            mix = Mix.parse(mix)
        elif isinstance(mix, dict):
            mix = Mix.from_dict(mix, allow_custom=True)
        elif isinstance(mix, os.PathLike):
            mix = Mix.from_path(mix)
        elif mix is not None and not isinstance(mix, Mix):
            raise EdgeemoError(f"steer() takes a dict such as {{'afraid': 0.08}}, a string "
                               f"such as 'afraid:0.08' or a Mix, not {type(mix).__name__}")
        if not mix:
            return self.clear(keep_cache=keep_cache)
        parts, applied = [], {}
        for name, strength in mix.items():
            vec = self.vector(name)
            scale, applied[name] = scale_for(
                vec, strength, whole_sequence=self.steer_prompt if steer_prompt is None
                else steer_prompt)
            parts.append((restrict(vec, layers), scale))
        check_total(applied.values())        # with each vector's own strength filled in
        require_steerable(self.llm, self.model.name)   # once per architecture
        self._buffer = mix_buffer(parts, self.n_layer)
        _llama.set_control_vector(self.llm, self._buffer, reset=not keep_cache)
        self.mix, self.layers = applied, layers
        self._forget_or_keep(keep_cache)
        return applied

    def clear(self, *, keep_cache: bool = False) -> dict[str, float]:
        """Steer no more; ``keep_cache`` as in :meth:`steer`."""
        _llama.set_control_vector(self.llm, None, reset=not keep_cache)
        self.mix, self.layers, self._buffer = {}, None, None
        self._forget_or_keep(keep_cache)
        return {}

    def _forget_or_keep(self, keep_cache: bool) -> None:
        if keep_cache:
            self._keep_unsteered((self.mix, self.layers) if self._buffer is not None else None)
        else:                                 # the vector was set with a reset: nothing is cached
            self._cache, self._steered_from = None, None


def restrict(vec: ControlVector, layers: tuple[int, int] | None) -> ControlVector:
    """The vector with only llama.cpp layers in [a, b] kept."""
    if layers is None:
        return vec
    a, b = layers
    kept = {n: d for n, d in vec.directions.items() if a <= n <= b}
    if not kept:
        raise EdgeemoError(f"layers {a}-{b} hold none of this vector's layers "
                           f"({min(vec.directions)}-{max(vec.directions)})")
    return ControlVector(vec.model_hint, vec.n_embd, kept, dict(vec.metadata))


_STEERABLE: dict[str, bool] = {}     # architecture -> llama.cpp applies vectors (once a process)


def require_steerable(llm, name: str = "") -> None:
    """Raise NotSteerable if llama.cpp ignores control vectors for this model's architecture.

    Tested once per architecture and process, with a random vector at the middle layer (see
    ``_llama.layer_effects``; ``edgeemo check`` tests every layer); resets llama.cpp's cache.
    """
    arch, n_embd, n_layer = _llama.model_shape(llm)
    if arch not in _STEERABLE:
        effect = max(_llama.layer_effects(llm, layers=[max(1, n_layer // 2)]).values())
        _STEERABLE[arch] = effect > _llama.MIN_CHANGE
    if not _STEERABLE[arch]:
        raise NotSteerable(
            f"llama.cpp ignores control vectors for the '{arch}' architecture"
            f"{f' ({name})' if name else ''}: a test vector left the output unchanged, so "
            f"steering would do nothing; use a model of another architecture "
            f"(`edgeemo check MODEL` tells)")


def vector_dirs(model: models.Model) -> list[Path]:
    """Where vectors for a model are looked for: the store first, then the prebuilt ones."""
    dirs = [store.vector_dir(model.sha256)]
    if model.card is not None:
        dirs.append(models.shipped_dir("vectors") / model.card.name)
    return dirs


def find_vector(model: models.Model, emotion: str) -> Path | None:
    for directory in vector_dirs(model):
        path = directory / f"{emotion}.gguf"
        if path.is_file():
            return path
    return None


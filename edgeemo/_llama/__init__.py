"""The native layer: every call edgeemo makes into llama.cpp (through llama-cpp-python) or into C.

Other modules hold a ``llama_cpp.Llama`` only to hand it back to the functions here. What is here:

* loading: the generating model (:func:`load`), a quiet one for checks and the LLM judge
  (:func:`load_quiet`), a vocabulary-only one for tokenizing (:func:`load_vocab`) and a scorer
  that keeps every position's logits (:func:`load_scorer`); each raises llama-cpp-python's
  ValueError for a file llama.cpp cannot load, which the caller words for its user;
* shapes (:func:`model_shape`, :func:`n_params`, :func:`n_ctx_train`, :func:`n_vocab`), tokens,
  the chat template, generation, logits, the end-of-generation test and JSON grammars;
* the control-vector buffer (:func:`set_control_vector`) and the probe of which layers it reaches
  (:func:`layer_effects`);
* llama.cpp's quantizer, for the test models, and :func:`die_with_parent`, the one libc call
  (it runs in pip's process, which ``models`` starts).

Control vectors. llama-cpp-python has no high-level call for them, so we call the C API directly:

    int32_t llama_set_adapter_cvec(struct llama_context * ctx, const float * data, size_t len,
                                   int32_t n_embd, int32_t il_start, int32_t il_end);

(``llama_apply_adapter_cvec`` before llama-cpp-python 0.3.17, ``llama_control_vector_apply`` in
0.3.6 and earlier; all three take the context and the same arguments.) Invariants the C function
relies on and we enforce:

* ``data`` starts at layer 1 (llama.cpp keeps no layer-0 tensor) and we always pass the full
  ``n_embd * (n_layer - 1)`` floats: llama.cpp copies only the layers the buffer covers, so a short
  buffer would leave an earlier vector's values in the upper layers.
* ``data = NULL`` turns steering off (the tensors stay allocated).
* llama.cpp copies the buffer into its own tensors (``ggml_backend_tensor_set`` in
  ``llama_adapter_cvec::apply``), so the numpy buffer need not outlive the call.
* After any change we call ``Llama.reset()`` (unless asked not to): ``generate`` otherwise reuses
  the cached prompt prefix, whose keys and values were computed with the previous vector.

Layer indices follow :mod:`edgeemo.vectors`: layer N here is tensor ``direction.N``.

Importing this module loads llama.cpp (about 0.4 s with numpy), so ``models``, which every
command imports, imports it only where it starts pip.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from .sequences import Sequences  # noqa: F401  (several sequences decoded in one batch)

# --- llama.cpp's log ---------------------------------------------------------------------------
# llama-cpp-python 0.3.x reads ggml's log levels by an older numbering, in which the level that
# now means WARN was ERROR, so llama.cpp's warnings ("n_ctx_seq (512) > n_ctx_train (0) --
# possible training context overflow") reached the terminal on ordinary commands. We set our own
# callback with ggml's current levels: errors only, or everything with EDGEEMO_VERBOSE=1
# (``edgeemo --verbose``) or a model loaded with ``verbose=True``.
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_log_state = {"verbose": False, "level": GGML_LOG_LEVEL_ERROR}


def _verbose() -> bool:
    return _log_state["verbose"] or os.environ.get("EDGEEMO_VERBOSE", "") not in ("", "0")


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data) -> None:
    if level != GGML_LOG_LEVEL_CONT:              # a continued line keeps its first part's level
        _log_state["level"] = level
    if _log_state["level"] == GGML_LOG_LEVEL_ERROR or _verbose():
        print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)


llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))


def set_verbose(verbose: bool) -> None:
    """Show all of llama.cpp's log lines (True) or only its errors (False)."""
    _log_state["verbose"] = bool(verbose)


# --- loading -----------------------------------------------------------------------------------


def load(path: Path | str, *, n_ctx: int, seed: int, threads: int | None = None,
         verbose: bool = False) -> llama_cpp.Llama:
    """The model that generates (``steer.EmotionModel``); ``threads`` defaults to one per core,
    for the prompt's batches too."""
    threads = threads or os.cpu_count()
    if verbose:
        set_verbose(True)
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, n_threads=threads,
                           n_threads_batch=threads, verbose=verbose)


def load_quiet(path: Path | str, *, threads: int = 1, n_ctx: int = 64,
               embedding: bool = False) -> llama_cpp.Llama:
    """A quiet model for checks and the LLM judge; ``embedding`` keeps every position's final
    hidden state (no pooling), for :func:`hidden_states`."""
    kwargs = {"pooling_type": llama_cpp.LLAMA_POOLING_TYPE_NONE} if embedding else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                           embedding=embedding, verbose=False, **kwargs)


def load_vocab(path: Path | str) -> llama_cpp.Llama:
    """The vocabulary and metadata only (no weights): llama.cpp's own tokenizer for a GGUF."""
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def load_scorer(path: Path | str, *, n_ctx: int, threads: int | None = None) -> llama_cpp.Llama:
    """A model that keeps the logits of every position it evaluates (``logits_all``), for
    :func:`score_logits`."""
    threads = threads or os.cpu_count()
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def close(llm) -> None:
    """Free llama.cpp's model and context now (also safe to call twice)."""
    close = getattr(llm, "close", None)
    if close is not None:
        close()


# --- shapes ------------------------------------------------------------------------------------

def model_shape(llm) -> tuple[str, int, int]:
    """``(architecture, n_embd, n_layer)`` of a loaded model."""
    arch = llm.metadata.get("general.architecture", "")
    n_embd = int(llm.n_embd())
    n_layer_fn = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
    n_layer = int(n_layer_fn(llm._model.model))
    return arch, n_embd, n_layer


def n_params(llm) -> int:
    return int(llama_cpp.llama_model_n_params(llm._model.model))


def n_ctx_train(llm) -> int | None:
    """The context the model was trained with, from the GGUF's metadata (None if it names none)."""
    arch = llm.metadata.get("general.architecture", "")
    trained = llm.metadata.get(f"{arch}.context_length")
    return int(trained) if str(trained).isdigit() and int(trained) > 0 else None


def n_ctx(llm) -> int:
    """The context this model was loaded with."""
    return llm.n_ctx()


def n_vocab(llm) -> int:
    return llm.n_vocab()


def n_threads(llm) -> int:
    return llm.n_threads


# --- tokens ------------------------------------------------------------------------------------

def utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; characters that cannot be encoded (stray surrogates from invalid
    bytes on the command line) become U+FFFD instead of an error."""
    return text.encode("utf-8", errors="replace")


def tokenize(llm, text: str, *, bos: bool, special: bool = False) -> list[int]:
    """Token ids of ``text``, after the BOS token if ``bos`` (and the GGUF asks for one);
    ``special`` reads special-token strings such as ``<|im_start|>`` as those tokens."""
    return llm.tokenize(utf8(text), add_bos=bos, special=special)


def detokenize(llm, ids: Sequence[int], *, special: bool = False) -> bytes:
    """The bytes of ``ids`` (a piece may end inside a UTF-8 character)."""
    return llm.detokenize(ids, special=special)


def token_text(llm, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def chat_template(llm) -> str | None:
    """The GGUF's chat template (Jinja), or None for a base model."""
    return llm.metadata.get("tokenizer.chat_template") or None


def template_ids(llm, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the model's chat template, ready for the assistant's turn.

    What people wrote is tokenized as text, never as the template's special tokens: each content
    goes through the template as a placeholder and is tokenized on its own.
    """
    formatter = Jinja2ChatFormatter(chat_template(llm),
                                    eos_token=token_text(llm, llm.token_eos()),
                                    bos_token=token_text(llm, llm.token_bos()))
    marks = [f"\x00{i}\x00" for i in range(len(messages))]
    text = formatter(messages=[{**m, "content": mark} for m, mark in zip(messages, marks)]).prompt
    ids: list[int] = []
    for i, mark in enumerate(marks):
        head, found, text = text.partition(mark)
        ids += tokenize(llm, head, bos=False, special=True) if head else []
        if found:
            ids += tokenize(llm, messages[i]["content"], bos=False, special=False)
    return ids + (tokenize(llm, text, bos=False, special=True) if text else [])


def eog_test(llm) -> Callable[[int], bool]:
    """``is_eog(token)``: does the token end a generation (end of text, end of turn, …)?"""
    is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None) or llama_cpp.llama_token_is_eog
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    return lambda token: is_eog(vocab, token)


# --- generating --------------------------------------------------------------------------------

def set_seed(llm, seed: int) -> None:
    """Seed the sampler: the same seed, prompt and settings give the same reply."""
    llm.set_seed(seed)


def generate(llm, ids: Sequence[int], **sampling) -> Iterator[int]:
    """Sampled token ids after ``ids``, without end (``Llama.generate`` with its sampling options:
    temp, top_k, top_p, min_p, the penalties, grammar, logits_processor). The cached prefix that
    ``ids`` shares is reused; the last id is always evaluated again."""
    return llm.generate(ids, reset=True, **sampling)


# --- evaluating and logits ---------------------------------------------------------------------

def reset(llm) -> None:
    """Forget every cached position: the next evaluation starts from the first token."""
    llm.reset()


def cached_ids(llm) -> list[int]:
    """The token ids whose keys and values llama.cpp's cache holds, in order."""
    return llm.input_ids[:llm.n_tokens].tolist()


def cached_prefix(llm, ids: Sequence[int], limit: int | None = None) -> int:
    """How many leading tokens of ``ids`` the cache holds already (at most ``limit``)."""
    same = 0
    for a, b in zip(cached_ids(llm), ids[:limit]):
        if a != b:
            break
        same += 1
    return same


def evaluate(llm, ids: Sequence[int], *, cached: int = 0) -> None:
    """Evaluate ``ids`` after their first ``cached`` tokens, which the cache holds already
    (``Llama.eval`` writes from ``n_tokens`` on, so what follows them is dropped)."""
    llm.n_tokens = cached
    if ids[cached:]:
        llm.eval(ids[cached:])


def keep_cached(llm, n: int) -> None:
    """Keep at most the first ``n`` cached positions; the next generation evaluates again from
    there."""
    llm.n_tokens = min(llm.n_tokens, n)
    llm._requires_eval = True        # (llama-cpp-python >= 0.3.20) no stale logits


def last_logits(llm) -> np.ndarray:
    """The next-token logits after the last evaluation (float64, a copy). llama-cpp-python
    copies logits into ``Llama.scores`` only with ``logits_all=True``; llama.cpp itself keeps
    the batch's last token's logits, read here."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)


def score_logits(llm, ids: Sequence[int], first: int) -> np.ndarray:
    """Evaluate ``ids`` on a :func:`load_scorer` model; the logits that predict ``ids[first:]``
    (row j predicts ``ids[first + j]``), as float32 (a copy). The leading tokens the cache holds from the
    text before (a chat template's system prompt, the same request) are not read again, up to
    the prompt's last token, whose logits are always computed afresh."""
    evaluate(llm, ids, cached=cached_prefix(llm, ids, first - 1))
    return np.array(llm.scores[first - 1:len(ids) - 1], dtype=np.float32)


def hidden_states(llm, text: str) -> np.ndarray:
    """The final hidden state at every token of ``text`` (BOS first), (T, n_embd) float32, from a
    :func:`load_quiet` model loaded with ``embedding=True``."""
    return np.array(llm.embed(text, normalize=False), dtype=np.float32)


# --- grammars ----------------------------------------------------------------------------------

def json_grammar() -> LlamaGrammar:
    """llama.cpp's grammar for any JSON object."""
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def json_schema_grammar(schema: str) -> LlamaGrammar:
    """A grammar for JSON that follows ``schema`` (a JSON Schema, as JSON text); raises the
    converter's own errors for a schema it cannot turn into a grammar."""
    return LlamaGrammar.from_json_schema(schema, verbose=False)


# --- control vectors ---------------------------------------------------------------------------

# Newest name first: in 0.3.36 the middle one is a Python wrapper that warns it is deprecated.
_CVEC_FUNCTION_NAMES = ("llama_set_adapter_cvec", "llama_apply_adapter_cvec",
                        "llama_control_vector_apply")


def _cvec_function():
    for name in _CVEC_FUNCTION_NAMES:
        fn = getattr(llama_cpp, name, None)
        if fn is not None:
            return fn
    raise RuntimeError(f"llama_cpp {getattr(llama_cpp, '__version__', '?')} has none of "
                       f"{', '.join(_CVEC_FUNCTION_NAMES)}; install llama-cpp-python>=0.3.17")


def set_control_vector(llm, buffer: np.ndarray | None, *, il_start: int | None = None,
                       il_end: int | None = None, reset: bool = True) -> None:
    """Set ``buffer`` (from ``ControlVector.buffer`` or ``mix_buffer``) as the control vector.

    ``buffer=None`` clears it. ``il_start``/``il_end`` are the inclusive llama.cpp layer range
    that is steered; by default the layers whose part of the buffer is not zero, since llama.cpp
    adds the buffer at every layer of the range, zeros included. Raises ValueError for a buffer of
    the wrong type or size and RuntimeError if llama.cpp refuses it. ``reset=False`` keeps the
    cached keys and values (reply-only steering sets the vector between the prompt and the reply
    on purpose, see ``steer.EmotionModel.stream_ids``).
    """
    _, n_embd, n_layer = model_shape(llm)
    fn = _cvec_function()

    if buffer is None:
        data, length = None, 0
        il_start, il_end = il_start or 1, il_end or n_layer - 1
    else:
        if not isinstance(buffer, np.ndarray) or buffer.dtype != np.float32:
            raise ValueError(f"control-vector buffer must be a float32 numpy array, not "
                             f"{getattr(buffer, 'dtype', type(buffer).__name__)}")
        if buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise ValueError("control-vector buffer must be a 1-D contiguous array")
        expected = n_embd * (n_layer - 1)
        if buffer.size != expected:
            raise ValueError(f"control-vector buffer has {buffer.size} floats but this model needs "
                             f"n_embd * (n_layer - 1) = {n_embd} * {n_layer - 1} = {expected}")
        written = steered_layers(buffer, n_embd)
        il_start = (written[0] if written else 1) if il_start is None else il_start
        il_end = (written[-1] if written else n_layer - 1) if il_end is None else il_end
        if not 1 <= il_start <= il_end <= n_layer - 1:
            raise ValueError(f"layer range {il_start}..{il_end} is outside 1..{n_layer - 1}")
        data, length = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buffer.size

    rc = fn(llm._ctx.ctx, data, length, n_embd, il_start, il_end)
    if rc != 0:
        raise RuntimeError(f"llama.cpp refused the control vector (return code {rc}; "
                           f"n_embd {n_embd}, {length} floats, layers {il_start}..{il_end})")
    if reset:
        llm.reset()


def steered_layers(buffer: np.ndarray, n_embd: int) -> list[int]:
    """The llama.cpp layers (1-based rows of the buffer) that hold something other than zeros."""
    rows = buffer.reshape(-1, n_embd)
    return [int(i) + 1 for i in np.flatnonzero(np.any(rows != 0, axis=1))]


PROBE_PROMPT = "The weather today is"
# A layer counts as steered when the last-token logits move by more than this (absolute, in
# logits) beyond the run-to-run difference of the unsteered logits (which is 0 on one thread).
MIN_CHANGE = 1e-4


def layer_effects(llm, *, prompt: str = PROBE_PROMPT, seed: int = 0,
                  layers: list[int] | None = None) -> dict[int, float]:
    """For each llama.cpp layer N, the largest change in the last prompt token's logits when a
    random vector is set at N alone, minus the unsteered run-to-run difference.

    The prompt is evaluated once with the vector off; then, per layer, a random vector (norm
    sqrt(n_embd), about 1 per component) is set at that layer alone and only the last prompt
    token is evaluated again (the earlier tokens stay in the cache, unsteered). An architecture
    whose llama.cpp graph has no control-vector hook changes nothing, bit for bit. Leaves the
    vector cleared and llama.cpp's cache reset.
    """
    _, n_embd, n_layer = model_shape(llm)
    layers = list(range(1, n_layer)) if layers is None else layers
    ids = tokenize(llm, prompt, bos=True)
    rng = np.random.default_rng(seed)
    set_control_vector(llm, None)              # clears and resets
    llm.eval(ids[:-1])                         # the prefix, unsteered, evaluated once

    def logits_with(buffer):
        set_control_vector(llm, buffer, reset=False)
        llm.n_tokens = len(ids) - 1
        llm.eval(ids[-1:])
        return last_logits(llm)

    base = logits_with(None)
    noise = float(np.abs(logits_with(None) - base).max())
    effects = {}
    for n in layers:
        buffer = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
        buffer[(n - 1) * n_embd: n * n_embd] = rng.standard_normal(n_embd)   # norm ~ sqrt(n_embd)
        effects[n] = max(0.0, float(np.abs(logits_with(buffer) - base).max()) - noise)
    set_control_vector(llm, None)
    return effects


# --- outside a model ---------------------------------------------------------------------------

def quantize(src: Path, dst: Path, ftype: int, threads: int = 1) -> int:
    """llama.cpp's quantizer (the same code as its llama-quantize tool); its return code."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = threads
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)


def die_with_parent(parent: int) -> None:
    """In pip's process, on Linux: die when edgeemo (pid ``parent``) does, even by SIGKILL, so
    that pip never writes into a download directory that was already removed as stale.

    Runs between fork and exec: if edgeemo died before the death signal was armed, the parent
    is already someone else, and pip must not start at all.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

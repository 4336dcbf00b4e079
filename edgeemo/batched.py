"""Writing several texts at once: one llama.cpp batch decodes the next token of every sequence.

    from edgeemo.batched import write_many
    ids = write_many(runtime, [prompt_ids_a, prompt_ids_b], seeds=[0, 1], max_tokens=160,
                     temperature=0.8)

One sequence at a time, each token reads all of the model's weights for one row of arithmetic;
on a CPU that is bound by memory, not by arithmetic. Here up to ``n_seq`` sequences share each
step (``_llama.Sequences``), and a sequence that ends gives its place to the next prompt.

llama.cpp's sampler belongs to one context and one sequence, so tokens are drawn here, in numpy,
by the chain llama-cpp-python builds for ``generate``: repetition penalty over the last 64
generated tokens, top-k, top-p, min-p, temperature, then a draw; each sequence has a random
generator of its own seed, so a seed gives the same text whatever else shares its batch (but
where two tokens are all but tied, and float sums in another batch shape tip them). It is not
llama.cpp's random stream: a seed gives another text here than in ``EmotionModel.generate``.
Only unsteered text is written this way (the generation method's stories).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import _llama
from .errors import EdgeemoError

PENALTY_LAST_N = 64           # llama-cpp-python's last_n_tokens_size
N_SEQ = 16                    # sequences decoded together (95 vs 84 tokens/s for 8 on the 135M)


def sample(logits: np.ndarray, recent: Sequence[int], rng: np.random.Generator, *,
           temperature: float, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
           repeat_penalty: float = 1.1) -> int:
    """One token from next-token ``logits`` after the generated tokens ``recent``."""
    logits = np.asarray(logits, dtype=np.float64)
    if repeat_penalty != 1.0 and len(recent):
        logits = logits.copy()                   # the caller's array stays as it was
        seen = np.unique(np.asarray(recent[-PENALTY_LAST_N:]))
        hit = logits[seen]
        logits[seen] = np.where(hit > 0, hit / repeat_penalty, hit * repeat_penalty)
    if temperature <= 0:
        return int(np.argmax(logits))
    k = min(top_k, logits.size) if top_k > 0 else logits.size
    ids = np.argpartition(-logits, k - 1)[:k]
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    kept = logits[ids]
    p = _softmax(kept)
    if top_p < 1.0:                              # the fewest tokens whose mass reaches top_p
        n = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        ids, kept, p = ids[:n], kept[:n], _softmax(kept[:n])
    if min_p > 0:
        keep = p >= min_p * p[0]
        ids, kept = ids[keep], kept[keep]
    return int(rng.choice(ids, p=_softmax(kept / temperature)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def write_many(runtime, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int],
               max_tokens: int, temperature: float = 0.7, top_k: int = 40, top_p: float = 0.95,
               min_p: float = 0.05, repeat_penalty: float = 1.1, n_seq: int = N_SEQ,
               done: Callable[[int, list[int]], None] | None = None) -> list[list[int]]:
    """The generated token ids after each prompt (token ids), unsteered, until the end of turn or
    ``max_tokens``; ``done(i, ids)`` hears of each text as it ends (e.g. to cache it)."""
    if runtime.mix:
        raise EdgeemoError("texts written in a batch are unsteered: clear the steering first")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise EdgeemoError(f"max_tokens must be a whole number of at least 1, not {max_tokens!r}")
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        return []
    if min(len(p) for p in prompts) == 0:
        raise EdgeemoError("a prompt is empty: give some text to respond to")
    n_seq = max(1, min(n_seq, len(prompts)))
    seqs = _llama.Sequences(runtime.llm, n_seq, max(len(p) for p in prompts) + max_tokens)
    out: list[list[int] | None] = [None] * len(prompts)
    waiting = list(range(len(prompts)))[::-1]          # popped from the end: in order
    running: dict[int, dict] = {}                      # slot -> the text it writes
    try:
        while waiting or running:
            rows, wanted = [], {}
            for slot in range(n_seq):
                if slot not in running and waiting:     # a free place: the next prompt
                    i = waiting.pop()
                    seqs.forget(slot)
                    running[slot] = {"i": i, "ids": [], "start": len(prompts[i]),
                                     "rng": np.random.default_rng(seeds[i])}
                    rows += [(slot, pos, t) for pos, t in enumerate(prompts[i])]
                    wanted[len(rows) - 1] = slot
            for slot, text in running.items():
                if text["ids"]:                         # its last token, read next
                    rows.append((slot, text["start"] + len(text["ids"]) - 1, text["ids"][-1]))
                    wanted[len(rows) - 1] = slot
            logits = seqs.decode(rows, set(wanted))
            for row, slot in wanted.items():
                text = running[slot]
                token = sample(logits[row], text["ids"], text["rng"], temperature=temperature,
                               top_k=top_k, top_p=top_p, min_p=min_p,
                               repeat_penalty=repeat_penalty)
                ended = runtime.is_eog(token)
                if not ended:
                    text["ids"].append(token)
                if ended or len(text["ids"]) >= max_tokens:
                    out[text["i"]] = text["ids"]
                    del running[slot]
                    if done is not None:
                        done(text["i"], text["ids"])
    finally:
        seqs.close()
    return out

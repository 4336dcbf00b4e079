"""Several sequences decoded in one llama.cpp batch (part of the native layer, ``edgeemo._llama``)."""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals


class Sequences:
    """A second llama.cpp context on ``llm``'s weights (shared, not loaded again) that decodes up
    to ``n_seq`` sequences in one batch, each at its own positions in a cache of ``n_ctx`` cells
    per sequence: a step reads the weights once for all of them, where one sequence at a time
    reads them once per token. Unsteered (no control vector is ever set on it)."""

    def __init__(self, llm, n_seq: int, n_ctx: int):
        base = llm.context_params                  # the same settings as llm's own context
        params = type(base).from_buffer_copy(base)
        params.n_seq_max = n_seq
        params.n_ctx = n_seq * n_ctx
        params.n_batch = params.n_ubatch = max(n_seq, min(512, params.n_ctx))
        # a cache of its own for each sequence: in one shared cache (kv_unified) a sequence whose
        # cells are not the first ones got other logits (off by 0.6 on SmolLM2-135M, llama.cpp
        # in llama-cpp-python 0.3.36), each on its own they are the ones one sequence alone gets
        params.kv_unified = False
        params.no_perf = True
        self.n_seq, self.n_batch, self.n_vocab = n_seq, params.n_batch, llm.n_vocab()
        self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=n_seq,
                                            verbose=False)

    def forget(self, seq: int) -> None:
        """Forget sequence ``seq``'s cached positions (its place then holds a new text)."""
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)

    def decode(self, rows: Sequence[tuple[int, int, int]], wanted: set[int]) -> dict[int, np.ndarray]:
        """Evaluate ``rows`` of (sequence, position, token), in batches of at most ``n_batch``;
        return the next-token logits (float64) after the rows whose index is in ``wanted``."""
        out, batch = {}, self._batch.batch
        for start in range(0, len(rows), self.n_batch):
            chunk = rows[start:start + self.n_batch]
            for j, (seq, pos, token) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = start + j in wanted
            batch.n_tokens = len(chunk)
            self._ctx.decode(self._batch)
            for j in range(len(chunk)):
                if start + j in wanted:
                    out[start + j] = np.ctypeslib.as_array(
                        self._ctx.get_logits_ith(j), shape=(self.n_vocab,)).astype(np.float64)
        return out

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()

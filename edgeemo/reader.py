"""Read hidden states from an exported ONNX model with onnxruntime.

    reader = HiddenStateReader(export_dir)
    for states in reader.read(["I heard a noise downstairs.", ...], layers=[10, 15]):
        states   # (len(layers), n_tokens, n_embd) float32, one text at a time

Texts are batched with right padding; the attention mask hides the padding and position ids count
real tokens only, so a text's states do not depend on its batch neighbours. Only the requested
``hidden_states.k`` outputs are kept, so memory is bounded by one batch of the chosen layers, and
only the blocks below the highest of them are computed: onnxruntime runs every node of a graph
whatever is fetched, so the reader prunes the graph to the deepest layer asked for (reading the
middle of a 30-block model costs about 0.6 of a full pass). Items may also be lists of token
ids (for example a story llama.cpp generated).

A text longer than ``max_tokens`` (the model's training context, at most 2048) is cut to its first
``max_tokens`` tokens, with a notice ("read the first 2048 tokens of 25113"): attention over all
of a 100,000-character text would ask onnxruntime for a matrix of many gigabytes. Batches are
also limited to about ``TOKEN_BUDGET`` padded tokens, so many long texts do not share one batch.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import _llama, models
from .errors import EdgeemoError
from .export import MANIFEST, ONNX_NAME, TOKENIZER
from .chatformat import prompt_ids, transcript

MAX_TOKENS = 2048          # the most tokens of one text read at once
TOKEN_BUDGET = 8192        # padded tokens per batch (batch size × longest text), at most


def source_gguf(manifest: dict) -> Path | None:
    """The GGUF an export was made from, if it is still where it was (or in the store)."""
    card = models.cards().get(manifest.get("model", ""))
    candidates = [models.store_path(card)] if card else []
    if manifest.get("source_path"):
        candidates.append(Path(manifest["source_path"]))
    return next((p for p in candidates if p.is_file()), None)


class HiddenStateReader:
    def __init__(self, export_dir: Path | str, *, threads: int | None = None,
                 max_tokens: int | None = None, notice: Callable[[str], None] | None = None):
        """``max_tokens``: read at most this many tokens of each text (default: the model's
        training context, at most ``MAX_TOKENS``). ``notice(message)`` is told when a text is
        cut (default: ``warnings.warn``)."""
        import onnxruntime as ort

        self.dir = Path(export_dir)
        try:
            self.manifest = json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise EdgeemoError(f"{self.dir} is not a complete ONNX export ({MANIFEST}: "
                               f"{getattr(exc, 'strerror', None) or exc}); export it again with "
                               f"`edgeemo export-model --force`") from None
        self.n_layer: int = self.manifest["n_layer"]
        self.n_embd: int = self.manifest["n_embd"]
        self._vocab = None        # llama.cpp's own tokenizer, from the GGUF (vocabulary only)
        self.tokenizer = None     # else the tokenizer saved with the export
        self.notice = notice
        context = MAX_TOKENS
        gguf_path = source_gguf(self.manifest)
        if gguf_path is not None:
            try:
                self._vocab = _llama.load_vocab(gguf_path)
            except ValueError as exc:
                raise EdgeemoError(f"llama.cpp could not read the vocabulary of {gguf_path} "
                                   f"({exc}); check the model with `edgeemo pull`") from None
            trained = _llama.n_ctx_train(self._vocab)
            if trained is not None:
                context = min(context, trained)
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise EdgeemoError(f"max_tokens must be a whole number of at least 1, not "
                                   f"{max_tokens!r}")
            context = max_tokens
        self.max_tokens = context
        if gguf_path is None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.dir / TOKENIZER))
        self.threads = threads or os.cpu_count() or 1
        self._session, self._depth = None, None     # made by the first read (session_for)

    def session_for(self, depth: int):
        """An onnxruntime session computing hidden states 0..``depth`` (the graph pruned after
        block ``depth``; the whole graph for the last one). One is kept at a time."""
        import onnxruntime as ort

        if self._session is not None and self._depth == depth:
            return self._session
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads
        self._session = None                       # free the previous one's weights first
        try:
            model: str | bytes = str(self.dir / ONNX_NAME)
            if depth < self.n_layer:
                model = pruned_graph(self.dir / ONNX_NAME,
                                     [f"hidden_states.{k}" for k in range(depth + 1)])
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path", str(self.dir))
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnx's and onnxruntime's errors share no public base class
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise EdgeemoError(f"onnxruntime cannot load {self.dir / ONNX_NAME} ({first}); export "
                               f"it again with `edgeemo export-model --force`") from None
        self._depth = depth
        self.input_names = {i.name for i in self._session.get_inputs()}
        return self._session

    def tokenize(self, text: str) -> list[int]:
        """Token ids as llama.cpp makes them for the same GGUF (BOS only if the GGUF asks).

        llama.cpp's tokenizer is used when the GGUF is at hand: the tokenizer transformers
        converts from some GGUFs (Gemma 3's, for one) splits words differently.
        """
        if self._vocab is not None:
            return _llama.tokenize(self._vocab, text, bos=True)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.manifest.get("add_bos") and self.manifest.get("bos_token_id") is not None:
            ids = [self.manifest["bos_token_id"]] + ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as a continuation: no BOS, special-token strings read as text."""
        if self._vocab is not None:
            return _llama.tokenize(self._vocab, text, bos=False)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @property
    def has_template(self) -> bool:
        return bool(self._vocab is not None and _llama.chat_template(self._vocab))

    def turn_ids(self, request: str) -> list[int]:
        """A user turn, ready for the assistant's reply: the model's chat template if it has one,
        else a plain ``User: …\nAssistant:`` transcript (base models)."""
        messages = [{"role": "user", "content": request}]
        if self.has_template:
            return prompt_ids(self._vocab, messages)
        return self.tokenize(transcript(messages))

    def read(self, items: Iterable[str | Sequence[int]], layers: Sequence[int], *,
             batch_size: int = 8) -> Iterator[np.ndarray]:
        """Yield, per item and in order, its hidden states (len(layers), n_tokens, n_embd).

        ``layers`` are hidden-state indices 0..n_layer (0 = embeddings).
        """
        for k in layers:
            if not 0 <= k <= self.n_layer:
                raise ValueError(f"hidden-state index {k} is outside 0..{self.n_layer}")
        if not layers:
            raise ValueError("give at least one hidden-state index to read")
        outputs = [f"hidden_states.{k}" for k in layers]
        self.session_for(max(layers))
        batch: list[list[int]] = []
        for item in items:
            ids = self.tokenize(item) if isinstance(item, str) else list(item)
            if len(ids) > self.max_tokens:
                self._tell(f"read the first {self.max_tokens} tokens of {len(ids)}")
                ids = ids[: self.max_tokens]
            if batch and (len(batch) + 1) * max(len(ids), *map(len, batch)) > TOKEN_BUDGET:
                yield from self._run(batch, outputs)
                batch = []
            batch.append(ids)
            if len(batch) == batch_size:
                yield from self._run(batch, outputs)
                batch = []
        if batch:
            yield from self._run(batch, outputs)

    def _tell(self, message: str) -> None:
        if self.notice is not None:
            self.notice(message)
        else:
            warnings.warn(message, stacklevel=3)

    def _run(self, batch: list[list[int]], outputs: list[str]) -> Iterator[np.ndarray]:
        lengths = [len(ids) for ids in batch]
        if min(lengths) == 0:
            raise ValueError("cannot read hidden states of an empty text")
        width = max(lengths)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)     # (B, T), right-padded
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        states = self._session.run(outputs, feeds)                     # L × (B, T, d)
        for row, n in enumerate(lengths):
            yield np.stack([s[row, :n] for s in states])              # (L, n, d)


def pruned_graph(path: Path, outputs: list[str]) -> bytes:
    """The ONNX graph at ``path`` with only ``outputs`` and the nodes they depend on, serialized
    (its weights stay in the external data file beside it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    needed, nodes = set(outputs), []
    for node in reversed(graph.node):                # a graph's nodes are in topological order
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
            needed.update(name for attr in node.attribute for sub in attr.g.node
                          for name in sub.input)
    for field, keep in ((graph.node, nodes[::-1]),
                        (graph.output, [o for o in graph.output if o.name in outputs]),
                        (graph.initializer, [i for i in graph.initializer if i.name in needed]),
                        (graph.input, [i for i in graph.input if i.name in needed])):
        keep = list(keep)
        del field[:]
        field.extend(keep)
    return model.SerializeToString()

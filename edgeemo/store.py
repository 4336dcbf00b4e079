"""The store's paths: one user directory for models, exports, vectors and caches.

    $EDGEEMO_HOME                     (default: $XDG_CACHE_HOME/edgeemo, else ~/.cache/edgeemo)
      models/<name>.gguf              pulled GGUF files
      exports/<sha256[:16]>/<precision>/   model.onnx, tokenizer.json, manifest.json
      vectors/<sha256[:16]>/          control vectors made with export-vector
      cache/<kind>/<sha256[:16]>/     generated stories, activations and other reusable work
      reports/                        layer reports
      locks/                          lock files, so that two edgeemo processes take turns

Every path that belongs to one model is built here, from the model's GGUF sha256
(``Model.sha256``, computed once per model). Nothing is ever written inside the installed package.
How files are written there (atomically, under locks, with Ctrl-C held back during a commit) is in
``writes.py``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def home() -> Path:
    """The store's root directory (not created here)."""
    if os.environ.get("EDGEEMO_HOME"):
        return Path(os.environ["EDGEEMO_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "edgeemo"


# --- paths: the only place they are built ----------------------------------------------------

def model_key(sha256: str) -> str:
    """The directory name for one model's files: the first 16 hex digits of its GGUF's sha256."""
    return sha256[:16]


def model_file(name: str) -> Path:
    """Where a pulled model of that card name is kept."""
    return home() / "models" / f"{name}.gguf"


def export_dir(sha256: str, precision: str) -> Path:
    """A model's ONNX export at one precision (model.onnx, tokenizer.json, manifest.json)."""
    return home() / "exports" / model_key(sha256) / precision


EXPORT_PRECISIONS = ("fp32", "int8")
EXPORT_MANIFEST = "manifest.json"           # written last: an export without it is incomplete


def exports(sha256: str) -> list[Path]:
    """A model's complete exports, one directory per precision."""
    return [d for d in (export_dir(sha256, p) for p in EXPORT_PRECISIONS)
            if (d / EXPORT_MANIFEST).is_file()]


def exports_root(sha256: str) -> Path:
    return home() / "exports" / model_key(sha256)


def vector_dir(sha256: str) -> Path:
    """The control vectors made for a model."""
    return home() / "vectors" / model_key(sha256)


def cache_dir(kind: str, sha256: str) -> Path:
    """Reusable work for a model: ``stories``, ``activations``, ``probe``."""
    return home() / "cache" / kind / model_key(sha256)


def reports_dir() -> Path:
    return home() / "reports"


def locks_dir() -> Path:
    return home() / "locks"


def in_store(path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(home().resolve())
    except ValueError:
        return False
    return True


def closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (also by prefix, so 'smol' finds 'smollm2-135m-…'), or None."""
    import difflib

    def score(choice: str) -> float:
        whole = difflib.SequenceMatcher(None, word, choice).ratio()
        head = difflib.SequenceMatcher(None, word, choice[: len(word) + 1]).ratio()
        return max(whole, head)

    best = max(choices, key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

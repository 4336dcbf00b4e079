"""The store: one user directory for models, exports, vectors and caches.

    $EDGEEMO_HOME                     (default: $XDG_CACHE_HOME/edgeemo, else ~/.cache/edgeemo)
      models/<name>.gguf              pulled GGUF files
      exports/<sha256[:16]>/<precision>/   model.onnx, tokenizer.json, manifest.json
      vectors/<sha256[:16]>/          control vectors made with export-vector
      cache/<kind>/<sha256[:16]>/     generated stories, activations and other reusable work
      reports/                        layer reports

Every path that belongs to one model is built here, from the model's GGUF sha256 (``Model.sha256``,
computed once per model). Nothing is ever written inside the installed package. Every file is written under a temporary name
in its final directory and renamed into place, so a crash or a full disk leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import StoreError


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


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """One line that says why the store could not be written and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"the store is full: could not write {path} ({exc.strerror}); "
                f"free some space or set EDGEEMO_HOME to a directory with room")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"the store is read-only: cannot write {path} ({exc.strerror}); "
                f"set EDGEEMO_HOME to a writable directory")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        return (f"the store path is not usable: {path} ({exc.strerror}); "
                f"set EDGEEMO_HOME to a directory")
    return f"cannot write to the store at {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def store_errors(path: Path | str):
    """Turn OS errors raised while writing to the store into a one-line StoreError."""
    try:
        yield
    except OSError as exc:
        raise StoreError(describe_os_error(exc, path)) from exc


@contextlib.contextmanager
def atomic_path(final: Path | str, *, directory: bool = False):
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    On any error the temporary file or directory is removed, so ``final`` is either the complete
    old content or the complete new one. ``directory=True`` yields a fresh empty directory.
    """
    final = Path(final)
    with store_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
            os.chmod(tmp, 0o777 & ~current_umask())
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; files here are shared
    try:
        with store_errors(final):
            yield tmp
            if directory and final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def require_free(directory: Path, nbytes: int) -> None:
    """Fail early, with one line, when the store's disk cannot hold ``nbytes`` more."""
    with store_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise StoreError(f"the store is full: {directory} has {free / 1e6:.0f} MB free and this "
                         f"needs {nbytes / 1e6:.0f} MB; free some space or set EDGEEMO_HOME to a "
                         f"directory with room")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (also by prefix, so 'smol' finds 'smollm2-135m-…'), or None."""
    import difflib

    def score(choice: str) -> float:
        whole = difflib.SequenceMatcher(None, word, choice).ratio()
        head = difflib.SequenceMatcher(None, word, choice[: len(word) + 1]).ratio()
        return max(whole, head)

    best = max(choices, key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


def write_bytes(final: Path | str, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path | str, text: str) -> Path:
    return write_bytes(final, text.encode("utf-8"))


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

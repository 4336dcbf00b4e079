"""An emotion mix: which vectors to steer with, and how strongly.

    from edgeemo.mix import Mix
    Mix.parse("fear:0.06,calm:0.03")       # Mix(parts=(('afraid', 0.06), ('calm', 0.03)))
    Mix.from_dict({"joy": None})           # None: the vector's own (calibrated) strength
    Mix.from_path("vectors/mine.gguf", 0.1)

Every front end (``--emotion``, the chat's ``/emotion``, the server's ``emotion`` field and model
names, ``EmotionModel.steer``) builds one of these, so a mix is read by one set of rules and
refused with one set of messages (:class:`~edgeemo.errors.EdgeemoError`, or
:class:`~edgeemo.errors.UnknownEmotion` for a name that is no emotion).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from . import emotions
from .errors import EdgeemoError
from .vectors import MAX_STRENGTH, check_strength

EXAMPLES = "fear, fear:0.1 or fear:0.1,calm:0.05"


def looks_like_file(name: str) -> bool:
    """The rule for what, in a mix, is a vector file rather than an emotion: a name that ends in
    ``.gguf`` (in any case) or holds a path separator. A bare word is always an emotion, even when
    a file of that name is in the working directory (``./calm`` is that file)."""
    return (name.lower().endswith(".gguf") or "/" in name or os.sep in name
            or bool(os.altsep and os.altsep in name))


def parse_strength(text: str, *, example: str = "0.08") -> float:
    """A strength as typed ("0.08", "-0.03", "1e-2"), checked by :func:`vectors.check_strength`:
    a finite number within ±MAX_STRENGTH."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        shown = text.strip() if isinstance(text, str) else text
        raise EdgeemoError(f"bad strength {shown!r}: write a number such as {example}") from None
    return check_strength(value)


def check_total(strengths: Iterable[float]) -> None:
    """Refuse a mix of several vectors whose strengths add up (in absolute value) beyond
    MAX_STRENGTH. A single vector is bounded by :func:`vectors.check_strength` instead."""
    values = list(strengths)
    total = sum(abs(s) for s in values)
    if len(values) > 1 and total > MAX_STRENGTH:
        raise EdgeemoError(f"the mix adds up to {total:g} (the sum of its strengths), beyond "
                           f"{MAX_STRENGTH:g}, a whole residual norm, where text is noise; "
                           f"lower the strengths (useful mixes add up to about 0.05-0.2)")


@dataclass(frozen=True)
class Mix:
    """Emotions or vector files with a strength each (None: the vector's own strength).

    ``parts`` holds ``(key, strength)`` pairs in the order given, each key once: a canonical
    emotion name (``fear`` and ``scared`` are both ``afraid``) or a vector file's path as given.
    A part is a file when it ends in ``.gguf`` (in any case) or holds a path separator
    (:func:`looks_like_file`); anything else is an emotion name, even if a file of that name
    exists. Strengths are checked (finite, within ±1) and so is their sum when several are
    given. An emotion given twice (``fear,scared``) is refused, not merged.

    Build a Mix with :meth:`parse`, :meth:`from_dict` or :meth:`from_path`; the constructor takes
    parts that are already checked. An empty Mix means no steering.
    """

    parts: tuple[tuple[str, float | None], ...] = ()

    @classmethod
    def parse(cls, spec: str, *, allow_custom: bool = False) -> Mix:
        """Read a mix as written on the command line: ``fear``, ``fear:0.1``,
        ``fear:0.1,calm:-0.05``, ``./mine.gguf:0.1``. Parts are separated by ',' and a strength
        follows the name after ':', so a path holding ',' or ':' needs :meth:`from_path`.

        Names must be emotions or their aliases; ``allow_custom`` also takes other short words
        (custom concepts made with ``export-vector``), as :func:`emotions.canonical` does."""
        if not isinstance(spec, str) or not spec.strip():
            raise EdgeemoError(f"empty emotion spec: write e.g. {EXAMPLES}")
        pairs: list[tuple[str, float | None]] = []
        for raw in spec.split(","):
            part = raw.strip()
            if not part:
                raise EdgeemoError(
                    f"empty part in emotion spec {spec.strip()!r}: remove the extra comma, "
                    f"e.g. fear:0.1,calm:0.05")
            if part.count(":") > 1:
                raise EdgeemoError(
                    f"bad emotion spec part {part!r}: write name or name:strength, e.g. fear:0.1")
            name, sep, text = part.partition(":")
            name, text = name.strip(), text.strip()
            if not name:
                raise EdgeemoError(
                    f"missing emotion name in {part!r}: write name:strength, e.g. fear:0.1")
            if sep and not text:
                raise EdgeemoError(
                    f"missing strength after ':' in {part!r}: write e.g. {name}:0.1 or just {name}")
            pairs.append((name, parse_strength(text, example=f"{name}:0.1") if sep else None))
        return cls._checked(pairs, allow_custom)

    @classmethod
    def from_dict(cls, mix: Mapping, *, allow_custom: bool = False) -> Mix:
        """A mix from ``{name or path: strength or None}``; a key is one name or one path, never
        ``name:strength``. ``allow_custom`` as in :meth:`parse`."""
        return cls._checked(list(mix.items()), allow_custom)

    @classmethod
    def from_path(cls, path: str | os.PathLike, strength: float | None = None) -> Mix:
        """One vector file. A bare file name is written ``./name`` so that it stays a path."""
        name = os.fspath(path)
        if isinstance(name, str) and name.strip() and not looks_like_file(name):
            name = os.path.join(os.curdir, name)
        return cls._checked([(name, strength)], allow_custom=False)

    @classmethod
    def _checked(cls, pairs: list[tuple], allow_custom: bool) -> Mix:
        parts: dict[str, float | None] = {}
        given: dict[str, str] = {}                   # key -> the name as the user wrote it
        for name, strength in pairs:
            if not isinstance(name, str) or not name.strip():
                raise EdgeemoError(f"an emotion is a name such as 'afraid' or a path to a .gguf "
                                   f"vector, not {name!r}")
            key = name if looks_like_file(name) else emotions.canonical(
                name, allow_custom=allow_custom)
            if key in parts:
                also = f" (as {given[key]!r} and {name!r})" if given[key] != name else ""
                raise EdgeemoError(f"{key!r} appears twice in the mix{also}: give each emotion "
                                   f"once")
            given[key] = name
            parts[key] = None if strength is None else check_strength(strength)
        check_total(s for s in parts.values() if s is not None)
        return cls(tuple(parts.items()))

    def with_default(self, strength: float | None) -> Mix:
        """The mix with ``strength`` for the parts given without one (``--strength``)."""
        if strength is None or all(s is not None for _, s in self.parts):
            return self
        strength = check_strength(strength)
        parts = tuple((key, strength if s is None else s) for key, s in self.parts)
        check_total(s for _, s in parts)
        return Mix(parts)

    @property
    def names(self) -> list[str]:
        """The keys: canonical emotion names and file paths, in order."""
        return [key for key, _ in self.parts]

    @property
    def files(self) -> list[str]:
        """The keys that are vector files."""
        return [key for key in self.names if looks_like_file(key)]

    def as_dict(self) -> dict[str, float | None]:
        return dict(self.parts)

    def items(self) -> Iterator[tuple[str, float | None]]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

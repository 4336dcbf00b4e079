"""Stimuli: the texts and prompts that emotion directions are extracted from and evaluated on.

The shipped data lives in ``edgeemo/data`` as JSONL (UTF-8, one JSON object per line):

    comprehension.jsonl   {"emotion": ..., "text": ...}   short vignettes that show an emotion
                          without naming it, plus "neutral" texts as the baseline
    neutral_facts.jsonl   {"text": ...}                   flat encyclopedic sentences
    heldout.jsonl         {"emotion": ..., "text": ...}   unseen vignettes for testing only
    generation.jsonl      {"emotion": ..., "prompt": ...} story prompts; "*" marks a generic template,
                          "neutral" a plain topic; templates contain the placeholder {emotion}
    scenarios.jsonl       {"id", "kind", "prompt"}        prompts for steering evaluation
    dialogue.jsonl        {"request", "emotion", "text"}  assistant replies to everyday requests,
                          each request answered neutrally and in each of the 20 emotions with the
                          same content: only the tone differs (the dialogue method)
    requests.jsonl        {"id", "kind", "prompt"}        everyday requests for evaluating steered
                          chat; none of them is in dialogue.jsonl

Users can bring their own vignettes with ``--stimuli FILE.jsonl`` (see :func:`load_user_stimuli`).
Every problem is reported as a one-line :class:`StimuliError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .emotions import NEUTRAL, canonical
from .errors import EdgeemoError, UnknownEmotion

DATA = Path(__file__).parent / "data"

GENERIC = "*"
PLACEHOLDER = "{emotion}"
SCENARIO_KINDS = ("neutral", "opposite", "conversational", "story")
MIN_USER_TEXTS = 2

_TEXT_SHAPE = '{"emotion": ..., "text": ...}'
_DIALOGUE_SHAPE = '{"request": ..., "emotion": ..., "text": ...}'


class StimuliError(EdgeemoError):
    """A stimuli file that cannot be read or does not have the expected shape."""


def _numbered_records(path: Path | str) -> tuple[str, list[tuple[int, dict]]]:
    """The file's label (the path as given) and its ``(line number, object)`` pairs."""
    path = Path(path)
    label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StimuliError(f"{label}: file not found; check the path") from None
    except IsADirectoryError:
        raise StimuliError(f"{label}: is a directory; give a .jsonl file") from None
    except OSError as exc:
        raise StimuliError(f"{label}: cannot read ({exc.strerror or exc}); "
                           f"check the file's permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = raw[:exc.start].count(b"\n") + 1
        raise StimuliError(f"{label}:{lineno}: not valid UTF-8; save the file as UTF-8") from None

    records: list[tuple[int, dict]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StimuliError(f"{label}:{lineno}: invalid JSON ({exc.msg}, column {exc.colno}); "
                               f"each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise StimuliError(f"{label}:{lineno}: expected a JSON object, got "
                               f"{type(obj).__name__}; each line must be one JSON object")
        records.append((lineno, obj))
    if not records:
        raise StimuliError(f"{label}: the file is empty; add one JSON object per line")
    return label, records


def load_jsonl(path: Path | str) -> list[dict]:
    """Read a JSONL file into a list of objects; blank lines are skipped.

    Raises :class:`StimuliError` for a missing or unreadable file, a line that is not a JSON
    object, or a file with no records.
    """
    return [obj for _, obj in _numbered_records(path)[1]]


def _field(obj: dict, key: str, where: str, shape: str) -> str:
    """A required non-empty string field of a record (stripped), or a one-line error."""
    if key not in obj:
        raise StimuliError(f'{where}: missing "{key}"; each line must be {shape}')
    value = obj[key]
    if not isinstance(value, str):
        raise StimuliError(f'{where}: "{key}" must be a string, not {type(value).__name__}; '
                           f"each line must be {shape}")
    if not value.strip():
        raise StimuliError(f'{where}: "{key}" is empty; write some text or remove the line')
    return value.strip()


def _emotion_field(obj: dict, where: str, shape: str, *, allow_custom: bool) -> str:
    raw = _field(obj, "emotion", where, shape)
    try:
        return canonical(raw, allow_neutral=True, allow_custom=allow_custom)
    except UnknownEmotion as exc:
        raise StimuliError(f"{where}: {exc}") from None


def _by_emotion(path: Path | str, *, allow_custom: bool) -> tuple[str, dict[str, list[str]]]:
    """Group the ``{"emotion", "text"}`` records of a file by canonical emotion, in file order."""
    label, records = _numbered_records(path)
    grouped: dict[str, list[str]] = {}
    for lineno, obj in records:
        where = f"{label}:{lineno}"
        emotion = _emotion_field(obj, where, _TEXT_SHAPE, allow_custom=allow_custom)
        text = _field(obj, "text", where, _TEXT_SHAPE)
        grouped.setdefault(emotion, []).append(text)
    return label, grouped


@lru_cache(maxsize=None)
def _shipped(filename: str) -> dict[str, tuple[str, ...]]:
    _, grouped = _by_emotion(DATA / filename, allow_custom=False)
    return {emotion: tuple(texts) for emotion, texts in grouped.items()}


def _select(grouped: dict[str, tuple[str, ...]],
            wanted: Iterable[str] | None) -> dict[str, list[str]]:
    if wanted is None:
        return {emotion: list(texts) for emotion, texts in grouped.items()}
    if isinstance(wanted, str):
        wanted = [wanted]
    keys = []
    for name in wanted:
        key = canonical(name, allow_neutral=True)
        if key not in keys:
            keys.append(key)
    if NEUTRAL not in keys:
        keys.append(NEUTRAL)
    return {key: list(grouped.get(key, ())) for key in keys}


def comprehension(emotions: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Shipped vignettes as ``{emotion: [text, ...]}``, always including ``"neutral"``.

    With ``emotions`` (names or aliases) only those emotions, plus neutral, are returned.
    """
    return _select(_shipped("comprehension.jsonl"), emotions)


def heldout(emotions: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Held-out vignettes, never used for extraction: ``{emotion: [text, ...]}`` with neutral."""
    return _select(_shipped("heldout.jsonl"), emotions)


@lru_cache(maxsize=None)
def _neutral_facts() -> tuple[str, ...]:
    label, records = _numbered_records(DATA / "neutral_facts.jsonl")
    return tuple(_field(obj, "text", f"{label}:{n}", '{"text": ...}') for n, obj in records)


def neutral_facts() -> list[str]:
    """Flat encyclopedic sentences: the baseline for measuring anisotropy."""
    return list(_neutral_facts())


@lru_cache(maxsize=None)
def _scenarios() -> tuple[dict, ...]:
    label, records = _numbered_records(DATA / "scenarios.jsonl")
    shape = '{"id": ..., "kind": ..., "prompt": ...}'
    seen: set[str] = set()
    rows = []
    for lineno, obj in records:
        where = f"{label}:{lineno}"
        sid = _field(obj, "id", where, shape)
        kind = _field(obj, "kind", where, shape)
        prompt = _field(obj, "prompt", where, shape)
        if kind not in SCENARIO_KINDS:
            raise StimuliError(f"{where}: unknown kind {kind!r}; "
                               f"use one of {', '.join(SCENARIO_KINDS)}")
        if sid in seen:
            raise StimuliError(f"{where}: duplicate id {sid!r}; give each scenario its own id")
        seen.add(sid)
        rows.append({"id": sid, "kind": kind, "prompt": prompt})
    return tuple(rows)


def scenarios() -> list[dict]:
    """Steering evaluation prompts, ``[{"id", "kind", "prompt"}, ...]``, in file order."""
    return [dict(row) for row in _scenarios()]


@lru_cache(maxsize=None)
def _generation() -> dict[str, tuple[str, ...]]:
    label, records = _numbered_records(DATA / "generation.jsonl")
    shape = '{"emotion": ..., "prompt": ...}'
    grouped: dict[str, list[str]] = {}
    for lineno, obj in records:
        where = f"{label}:{lineno}"
        raw = _field(obj, "emotion", where, shape)
        key = GENERIC if raw == GENERIC else _emotion_field(obj, where, shape, allow_custom=False)
        prompt = _field(obj, "prompt", where, shape)
        if key != NEUTRAL and PLACEHOLDER not in prompt:
            raise StimuliError(f"{where}: the prompt has no {PLACEHOLDER} placeholder; "
                               f"put {PLACEHOLDER} where the emotion word goes")
        grouped.setdefault(key, []).append(prompt)
    return {key: tuple(prompts) for key, prompts in grouped.items()}


def generation_prompts(emotion: str) -> list[str]:
    """Story prompts for ``emotion``: the generic templates plus its own, with the word filled in.

    ``emotion`` may be an alias. A custom concept (any word accepted by
    ``canonical(..., allow_custom=True)``) gets only the generic templates.
    """
    word = canonical(emotion, allow_custom=True)
    templates = _generation()
    chosen = list(templates.get(GENERIC, ())) + list(templates.get(word, ()))
    return [template.replace(PLACEHOLDER, word) for template in chosen]


def neutral_topics() -> list[str]:
    """Prompts for plain, emotionally flat stories: the baseline for generated stimuli."""
    return list(_generation().get(NEUTRAL, ()))


def load_user_stimuli(path: Path | str) -> dict[str, list[str]]:
    """A user's ``--stimuli`` file as ``{emotion: [text, ...]}``, always including ``"neutral"``.

    Each line is ``{"emotion": ..., "text": ...}``; emotion names may be aliases or custom
    concepts. Every emotion named needs at least two texts, and at least two neutral texts are
    required as the baseline.
    """
    label, grouped = _by_emotion(path, allow_custom=True)
    neutral = grouped.get(NEUTRAL, [])
    if not neutral:
        raise StimuliError(f'{label}: no neutral texts; add lines with "emotion": "neutral" '
                           f"as the baseline")
    if len(neutral) < MIN_USER_TEXTS:
        raise StimuliError(f'{label}: only {len(neutral)} neutral text; add at least '
                           f'{MIN_USER_TEXTS} lines with "emotion": "neutral"')
    named = [emotion for emotion in grouped if emotion != NEUTRAL]
    if not named:
        raise StimuliError(f"{label}: only neutral texts; add lines for at least one emotion, "
                           f'e.g. {{"emotion": "afraid", "text": ...}}')
    for emotion in named:
        count = len(grouped[emotion])
        if count < MIN_USER_TEXTS:
            raise StimuliError(f"{label}: only {count} text for {emotion!r}; add at least "
                               f"{MIN_USER_TEXTS} lines for each emotion")
    return grouped


def _dialogue_records(path: Path | str, *, allow_custom: bool) -> tuple[str, list[dict]]:
    label, records = _numbered_records(path)
    out, seen = [], set()
    for lineno, obj in records:
        where = f"{label}:{lineno}"
        row = {"request": _field(obj, "request", where, _DIALOGUE_SHAPE),
               "emotion": _emotion_field(obj, where, _DIALOGUE_SHAPE, allow_custom=allow_custom),
               "text": _field(obj, "text", where, _DIALOGUE_SHAPE)}
        if (row["request"], row["emotion"]) in seen:
            raise StimuliError(f"{where}: a second {row['emotion']!r} reply to the same request; "
                               f"give each request one reply per emotion")
        seen.add((row["request"], row["emotion"]))
        out.append(row)
    return label, out


def check_dialogue(label: str, rows: list[dict]) -> list[dict]:
    """Every request with an emotional reply has a neutral one (the pair a direction is made of),
    and every emotion has replies to at least two requests."""
    neutral = {r["request"] for r in rows if r["emotion"] == NEUTRAL}
    unpaired = [r["request"] for r in rows if r["emotion"] != NEUTRAL and r["request"] not in neutral]
    if unpaired:
        raise StimuliError(f'{label}: the request {unpaired[0]!r} has no neutral reply; add a line '
                           f'with "emotion": "neutral" for it (each emotional reply is compared '
                           f"with the neutral reply to the same request)")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["emotion"]] = counts.get(r["emotion"], 0) + 1
    if set(counts) == {NEUTRAL}:
        raise StimuliError(f"{label}: only neutral replies; add replies in at least one emotion")
    for emotion, count in counts.items():
        if count < MIN_USER_TEXTS:
            raise StimuliError(f"{label}: only {count} reply for {emotion!r}; give at least "
                               f"{MIN_USER_TEXTS} requests a reply in each emotion")
    return rows


@lru_cache(maxsize=None)
def _dialogue() -> tuple[dict, ...]:
    label, rows = _dialogue_records(DATA / "dialogue.jsonl", allow_custom=False)
    return tuple(check_dialogue(label, rows))


def dialogue(emotions: Iterable[str] | None = None) -> list[dict]:
    """The shipped replies (``{"request", "emotion", "text"}``), neutral ones always included."""
    wanted = None if emotions is None else {canonical(e) for e in emotions} | {NEUTRAL}
    return [dict(r) for r in _dialogue() if wanted is None or r["emotion"] in wanted]


def user_file_method(path: Path | str) -> str:
    """The reading method a user's ``--stimuli`` file is shaped for: dialogue when its first
    record has a ``"request"``, else comprehension (a bad file is reported by its loader)."""
    try:
        _, records = _numbered_records(path)
    except StimuliError:
        return "comprehension"
    return "dialogue" if records and "request" in records[0][1] else "comprehension"


def load_user_dialogue(path: Path | str) -> list[dict]:
    """A user's ``--stimuli`` file for the dialogue method, checked line by line."""
    label, rows = _dialogue_records(path, allow_custom=True)
    return check_dialogue(label, rows)


@lru_cache(maxsize=None)
def _requests() -> tuple[dict, ...]:
    label, records = _numbered_records(DATA / "requests.jsonl")
    shape = '{"id": ..., "kind": ..., "prompt": ...}'
    return tuple({k: _field(obj, k, f"{label}:{n}", shape) for k in ("id", "kind", "prompt")}
                 for n, obj in records)


def requests() -> list[dict]:
    """Everyday requests for evaluating steered chat (shaped like scenarios; none is in the
    dialogue data the dialogue vectors are made from)."""
    return [dict(r) for r in _requests()]


def stimuli_hash(*objects) -> str:
    """sha256 (hex) of a canonical JSON dump of ``objects``: records which stimuli made a vector.

    Dict key order does not matter; list order does. Sets and paths are accepted.
    """
    dump = json.dumps(objects, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_jsonable)
    return hashlib.sha256(dump.encode("utf-8")).hexdigest()


def _jsonable(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"stimuli_hash cannot encode an object of type {type(obj).__name__}")

"""The emotion vocabulary: canonical names, aliases and rough valence/arousal.

Everything that takes an emotion name from a user goes through :func:`canonical`, so ``fear``,
``Scared`` and ``afraid`` all mean the same vector. A mix of emotions with strengths
(``fear:0.1,calm:0.05``) is read by :class:`edgeemo.mix.Mix`.

The valence and arousal numbers are approximate placements on the usual circumplex model. They are
only used to order and colour reports; nothing is computed from them.
"""

from __future__ import annotations

import difflib
import re

from .errors import UnknownEmotion

EMOTIONS: tuple[str, ...] = (
    "happy", "sad", "calm", "desperate", "afraid", "angry", "proud", "guilty", "nervous", "hopeful",
    "brooding", "gloomy", "reflective", "enthusiastic", "hostile", "loving", "exasperated",
    "blissful", "anxious", "grateful",
)

NEUTRAL = "neutral"

# Approximate valence in [-1, 1] (unpleasant .. pleasant), for reports only.
VALENCE: dict[str, float] = {
    "happy": 0.8, "sad": -0.7, "calm": 0.4, "desperate": -0.8, "afraid": -0.7,
    "angry": -0.7, "proud": 0.7, "guilty": -0.6, "nervous": -0.4, "hopeful": 0.6,
    "brooding": -0.5, "gloomy": -0.6, "reflective": 0.1, "enthusiastic": 0.8, "hostile": -0.8,
    "loving": 0.9, "exasperated": -0.5, "blissful": 0.95, "anxious": -0.6, "grateful": 0.8,
}

# Approximate arousal in [0, 1] (sleepy .. activated), for reports only.
AROUSAL: dict[str, float] = {
    "happy": 0.6, "sad": 0.25, "calm": 0.1, "desperate": 0.85, "afraid": 0.85,
    "angry": 0.9, "proud": 0.55, "guilty": 0.45, "nervous": 0.7, "hopeful": 0.5,
    "brooding": 0.35, "gloomy": 0.2, "reflective": 0.2, "enthusiastic": 0.9, "hostile": 0.8,
    "loving": 0.45, "exasperated": 0.7, "blissful": 0.5, "anxious": 0.75, "grateful": 0.4,
}

# Other words people type for the same emotion. Keys are lower-case.
ALIASES: dict[str, str] = {
    # afraid
    "fear": "afraid", "scared": "afraid", "frightened": "afraid", "terrified": "afraid",
    "afraid": "afraid", "fearful": "afraid", "terror": "afraid",
    # happy
    "joy": "happy", "joyful": "happy", "happiness": "happy", "glad": "happy", "cheerful": "happy",
    # angry
    "anger": "angry", "mad": "angry", "furious": "angry", "rage": "angry", "fury": "angry",
    # sad
    "sadness": "sad", "unhappy": "sad", "sorrow": "sad", "sorrowful": "sad",
    # loving
    "love": "loving", "affection": "loving", "affectionate": "loving",
    # grateful
    "gratitude": "grateful", "thankful": "grateful", "thanks": "grateful",
    # anxious
    "anxiety": "anxious", "worry": "anxious", "worried": "anxious",
    # nervous
    "nervousness": "nervous",
    # calm
    "calmness": "calm", "serene": "calm", "peaceful": "calm",
    # desperate
    "desperation": "desperate",
    # proud
    "pride": "proud",
    # guilty
    "guilt": "guilty",
    # hopeful
    "hope": "hopeful",
    # gloomy
    "gloom": "gloomy",
    # reflective
    "reflection": "reflective", "pensive": "reflective", "thoughtful": "reflective",
    # enthusiastic
    "enthusiasm": "enthusiastic", "excited": "enthusiastic", "excitement": "enthusiastic",
    # hostile
    "hostility": "hostile",
    # exasperated
    "exasperation": "exasperated", "frustrated": "exasperated", "frustration": "exasperated",
    # blissful
    "bliss": "blissful", "ecstatic": "blissful",
    # brooding
    "brood": "brooding",
    # the baseline
    "neutral": NEUTRAL, "none": NEUTRAL,
}

# A custom concept: letters (any script), digits, spaces, '-' and '_', at most 40 characters.
_CUSTOM_RE = re.compile(r"^[^\W_](?:[\w \-]*[\w])?$")
_CUSTOM_MAX = 40


def _valid_list() -> str:
    return ", ".join(EMOTIONS)


def _suggestion(key: str, allow_neutral: bool) -> str | None:
    """The closest known name, mapped to its canonical form, or None."""
    candidates = list(EMOTIONS) + [a for a in ALIASES if allow_neutral or ALIASES[a] != NEUTRAL]
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not matches:
        return None
    return ALIASES.get(matches[0], matches[0])


def _unknown(name: str, key: str, allow_neutral: bool, allow_custom: bool) -> UnknownEmotion:
    hint = _suggestion(key, allow_neutral) if key else None
    shown = name.strip() if isinstance(name, str) else repr(name)
    head = f"unknown emotion {shown!r}"
    if hint:
        head += f": did you mean {hint!r}?"
    else:
        head += ":"
    tail = f" valid emotions: {_valid_list()}"
    if allow_neutral:
        tail += f", {NEUTRAL}"
    tail += " (aliases such as fear, joy, anger are accepted)"
    if allow_custom:
        tail += (f"; a custom concept must be a word of letters, digits, spaces, '-' or '_', "
                 f"at most {_CUSTOM_MAX} characters")
    return UnknownEmotion(head + tail)


def canonical(name: str, *, allow_neutral: bool = False, allow_custom: bool = False) -> str:
    """The canonical emotion for ``name`` (case and surrounding whitespace are ignored).

    ``neutral`` (or ``none``) is only accepted with ``allow_neutral``. With ``allow_custom`` any
    other short word is returned lower-cased as a custom concept; its vector is then built from
    stories generated about that word alone. Anything else raises :class:`UnknownEmotion`.
    """
    key = " ".join(name.split()).lower() if isinstance(name, str) else ""
    if key in EMOTIONS:
        return key
    if key in ALIASES:
        target = ALIASES[key]
        if target != NEUTRAL or allow_neutral:
            return target
        raise UnknownEmotion(
            f"{NEUTRAL!r} is the baseline, not an emotion to steer towards; "
            f"choose one of: {_valid_list()}")
    if allow_custom and key and len(key) <= _CUSTOM_MAX and _CUSTOM_RE.match(key):
        return key
    raise _unknown(name, key, allow_neutral, allow_custom)

"""Fast checks of the emotion vocabulary and the shipped stimuli (no model needed)."""

from __future__ import annotations

import json
import re

import pytest

from edgeemo import stimuli
from edgeemo.emotions import ALIASES, AROUSAL, EMOTIONS, NEUTRAL, VALENCE, canonical
from edgeemo.errors import EdgeemoError, UnknownEmotion
from edgeemo.mix import Mix, looks_like_file, parse_strength
from edgeemo.stimuli import StimuliError

# Words a vignette must not contain for its own emotion: the name, its aliases and the obvious
# word forms. A vignette has to show the emotion, not say it.
FORBIDDEN = {
    "happy": ["happy", "happily", "happiness", "joy", "joyful", "joyous", "glad", "gladly",
              "cheerful", "cheerfully"],
    "sad": ["sad", "sadly", "sadness", "unhappy", "sorrow", "sorrowful"],
    "calm": ["calm", "calmly", "calmness", "serene", "serenity", "peaceful", "peacefully"],
    "desperate": ["desperate", "desperately", "desperation"],
    "afraid": ["afraid", "fear", "feared", "fearful", "scared", "frightened", "terrified",
               "terror"],
    "angry": ["angry", "angrily", "anger", "mad", "furious", "furiously", "fury", "rage"],
    "proud": ["proud", "proudly", "pride"],
    "guilty": ["guilty", "guilt"],
    "nervous": ["nervous", "nervously", "nervousness"],
    "hopeful": ["hopeful", "hopefully", "hope", "hoped", "hopes", "hoping"],
    "brooding": ["brooding", "brood", "brooded", "broods"],
    "gloomy": ["gloomy", "gloom"],
    "reflective": ["reflective", "reflection", "reflect", "reflected", "pensive", "thoughtful"],
    "enthusiastic": ["enthusiastic", "enthusiasm", "excited", "excitement", "exciting"],
    "hostile": ["hostile", "hostility"],
    "loving": ["loving", "lovingly", "love", "loved", "loves", "affection", "affectionate"],
    "exasperated": ["exasperated", "exasperation", "exasperating", "frustrated", "frustration"],
    "blissful": ["blissful", "bliss", "ecstatic"],
    "anxious": ["anxious", "anxiously", "anxiety", "worry", "worried", "worrying", "worries"],
    "grateful": ["grateful", "gratitude", "thankful", "thanks", "thank", "thanked"],
}


def _words_pattern(words):
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def test_forbidden_map_covers_every_emotion_and_its_aliases():
    assert set(FORBIDDEN) == set(EMOTIONS)
    for alias, target in ALIASES.items():
        if target != NEUTRAL:
            assert alias in FORBIDDEN[target], alias


def test_vocabulary_tables_are_complete():
    assert len(EMOTIONS) == 20 and len(set(EMOTIONS)) == 20
    assert NEUTRAL not in EMOTIONS
    for emotion in EMOTIONS:
        assert -1.0 <= VALENCE[emotion] <= 1.0
        assert 0.0 <= AROUSAL[emotion] <= 1.0
    assert all(target in EMOTIONS or target == NEUTRAL for target in ALIASES.values())


# --- shipped data ---------------------------------------------------------------------------

def test_comprehension_counts():
    data = stimuli.comprehension()
    for emotion in EMOTIONS:
        assert len(data[emotion]) >= 14, emotion
    assert len(data[NEUTRAL]) >= 60
    assert set(data) == set(EMOTIONS) | {NEUTRAL}


def test_comprehension_subset_always_has_neutral():
    data = stimuli.comprehension(["fear", "calm"])
    assert list(data) == ["afraid", "calm", NEUTRAL]
    assert all(data.values())


def test_generation_templates():
    generic = stimuli.generation_prompts("nostalgic")
    assert len(generic) >= 8
    for emotion in EMOTIONS:
        prompts = stimuli.generation_prompts(emotion)
        assert len(prompts) - len(generic) >= 3, emotion
        assert all("{emotion}" not in p for p in prompts)
        assert sum(emotion in p for p in prompts) == len(prompts)
    assert len(stimuli.neutral_topics()) >= 30


def test_generation_prompts_accept_aliases():
    assert stimuli.generation_prompts("fear") == stimuli.generation_prompts("afraid")


def test_heldout_and_facts_counts():
    data = stimuli.heldout()
    for emotion in EMOTIONS:
        assert len(data[emotion]) >= 5, emotion
    assert len(stimuli.neutral_facts()) >= 40


def test_scenarios():
    rows = stimuli.scenarios()
    assert len(rows) >= 44
    kinds = {row["kind"] for row in rows}
    assert kinds == {"neutral", "opposite", "conversational", "story"}
    for kind in kinds:
        assert sum(row["kind"] == kind for row in rows) >= 10, kind
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.parametrize("source", ["comprehension", "heldout"])
def test_vignettes_never_name_their_emotion(source):
    data = getattr(stimuli, source)()
    problems = []
    for emotion in EMOTIONS:
        pattern = _words_pattern(FORBIDDEN[emotion])
        for text in data[emotion]:
            hit = pattern.search(text)
            if hit:
                problems.append(f"{emotion}: {hit.group(0)!r} in {text[:60]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source", ["comprehension", "heldout"])
def test_neutral_texts_use_no_emotion_words(source):
    pattern = _words_pattern(sorted({w for words in FORBIDDEN.values() for w in words}))
    texts = getattr(stimuli, source)()[NEUTRAL] + stimuli.neutral_facts()
    problems = [f"{pattern.search(t).group(0)!r} in {t[:60]!r}" for t in texts if pattern.search(t)]
    assert not problems, "\n".join(problems)


def test_no_duplicate_texts():
    comp = [t for texts in stimuli.comprehension().values() for t in texts]
    held = [t for texts in stimuli.heldout().values() for t in texts]
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    assert len(set(map(norm, comp))) == len(comp)
    assert len(set(map(norm, held))) == len(held)
    assert not set(map(norm, comp)) & set(map(norm, held))


def test_vignette_lengths_vary():
    lengths = [len(t.split()) for texts in stimuli.comprehension().values() for t in texts]
    assert min(lengths) >= 8
    assert max(lengths) <= 110
    assert sum(n <= 25 for n in lengths) >= 20
    assert sum(n >= 50 for n in lengths) >= 20


# --- emotion names --------------------------------------------------------------------------

@pytest.mark.parametrize("alias,expected", [
    ("fear", "afraid"), ("scared", "afraid"), ("joy", "happy"), ("anger", "angry"),
    ("sadness", "sad"), ("love", "loving"), ("gratitude", "grateful"), ("anxiety", "anxious"),
    ("  Terrified ", "afraid"), ("ECSTATIC", "blissful"), ("frustrated", "exasperated"),
    ("calm", "calm"),
])
def test_aliases(alias, expected):
    assert canonical(alias) == expected


def test_neutral_needs_permission():
    assert canonical("None", allow_neutral=True) == NEUTRAL
    with pytest.raises(UnknownEmotion):
        canonical("neutral")


def test_unknown_emotion_message():
    with pytest.raises(UnknownEmotion) as info:
        canonical("feer")
    message = str(info.value)
    assert "\n" not in message
    assert "'feer'" in message
    assert "did you mean 'afraid'?" in message
    assert "valid emotions: " + ", ".join(EMOTIONS) in message
    assert "aliases such as" in message


def test_unknown_emotion_suggests_canonical_for_alias_typo():
    with pytest.raises(UnknownEmotion, match="did you mean 'grateful'"):
        canonical("gratitdue")


def test_custom_concepts():
    assert canonical("Nostalgic", allow_custom=True) == "nostalgic"
    assert canonical(" deja-vu_2 ", allow_custom=True) == "deja-vu_2"
    assert canonical("fear", allow_custom=True) == "afraid"
    for bad in ["", "   ", "x" * 41, "rm -rf /", "a;b", "{emotion}"]:
        with pytest.raises(UnknownEmotion):
            canonical(bad, allow_custom=True)
    with pytest.raises(UnknownEmotion):
        canonical("nostalgic")


def test_custom_concept_gets_generic_prompts_only():
    prompts = stimuli.generation_prompts("nostalgic")
    assert prompts and all("nostalgic" in p for p in prompts)
    assert len(prompts) < len(stimuli.generation_prompts("afraid"))


# --- emotion mixes ---------------------------------------------------------------------------

def parse_mix(spec: str) -> dict:
    return Mix.parse(spec).as_dict()


@pytest.mark.parametrize("spec,expected", [
    ("fear", {"afraid": None}),
    ("fear:0.1", {"afraid": 0.1}),
    ("fear:0.1,calm:0.05", {"afraid": 0.1, "calm": 0.05}),
    (" fear : 0.1 ,  Calm:0.05 ", {"afraid": 0.1, "calm": 0.05}),
    ("afraid:-0.05", {"afraid": -0.05}),
    ("joy,anger:1e-2", {"happy": None, "angry": 0.01}),
    ("fear:1", {"afraid": 1.0}),                               # a single part up to ±1
    ("fear:0.6,calm", {"afraid": 0.6, "calm": None}),          # calm's own strength: at steer()
    ("my-concept.gguf:0.1", {"my-concept.gguf": 0.1}),
    ("dir/x.gguf:0.1", {"dir/x.gguf": 0.1}),
    (" ./Mine.GGUF ", {"./Mine.GGUF": None}),                 # a path is kept as written
    ("dir/x.gguf,fear:0.02", {"dir/x.gguf": None, "afraid": 0.02}),
])
def test_parse_mix(spec, expected):
    assert parse_mix(spec) == expected
    assert list(parse_mix(spec)) == list(expected)             # in the order given


@pytest.mark.parametrize("spec", [
    "fear:nan", "fear:inf", "fear:-inf", "fear:abc", "fear:", ":0.1", "fear,,calm", "fear,",
    "", "   ", "fear:0.1:2", "fear,scared", "afraid:0.1,fear:0.2",
    "fear:5", "fear:-1.5", "fear:0.6,calm:0.5", "fear:0.6,calm:-0.5", "./a.gguf,./a.gguf",
])
def test_parse_mix_malformed(spec):
    with pytest.raises(EdgeemoError) as info:
        parse_mix(spec)
    assert "\n" not in str(info.value)


def test_parse_mix_unknown_name():
    with pytest.raises(UnknownEmotion, match="did you mean 'afraid'"):
        parse_mix("feer:0.1")
    with pytest.raises(UnknownEmotion):
        parse_mix("neutral:0.1")
    with pytest.raises(UnknownEmotion):
        parse_mix("nostalgic")                                  # custom concepts: asked for
    assert Mix.parse("nostalgic:0.1", allow_custom=True).as_dict() == {"nostalgic": 0.1}


@pytest.mark.parametrize("spec, words", [
    ("", "empty emotion spec"),
    ("fear,scared", "'afraid' appears twice in the mix (as 'fear' and 'scared'): give each "
                    "emotion once"),
    ("fear,fear", "'afraid' appears twice in the mix: give each emotion once"),
    ("fear:abc", "bad strength 'abc': write a number such as fear:0.1"),
    ("fear:nan", "finite"),
    ("fear:5", "beyond"),
    ("fear:0.6,calm:0.5", "the mix adds up to 1.1"),
    ("fear:0.1:2", "write name or name:strength"),
])
def test_mix_errors_say_what_to_do(spec, words):
    with pytest.raises(EdgeemoError) as info:
        Mix.parse(spec)
    assert words in str(info.value)


def test_the_one_rule_for_vector_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calm").write_text("not a vector")
    for file in ("calm.gguf", "X.GGUF", "./calm", "a/b", "/abs/path", "dir/x"):
        assert looks_like_file(file), file
    for word in ("calm", "fear", "nostalgic", "deja-vu_2", "my concept"):
        assert not looks_like_file(word), word
    # a bare word is an emotion even with a file of that name here
    assert Mix.parse("calm").as_dict() == {"calm": None}
    assert Mix.parse("./calm:0.1").files == ["./calm"]
    # a path without .gguf is a file in a string too, as it was in a dict (it was an unknown
    # emotion in a string)
    assert Mix.parse("dir/x:0.1").as_dict() == {"dir/x": 0.1}
    assert Mix.parse("dir/x:0.1").files == ["dir/x"]
    assert Mix.from_dict({"dir/x": 0.1}) == Mix.parse("dir/x:0.1")


def test_mix_from_a_dict():
    assert Mix.from_dict({"fear": 0.1, "Calm": None}).as_dict() == {"afraid": 0.1, "calm": None}
    assert Mix.from_dict({"scared": 0.1}) == Mix.parse("scared:0.1") == Mix.parse("afraid:0.1")
    assert Mix.from_dict({"dir/x.gguf": -0.05}).files == ["dir/x.gguf"]
    assert Mix.from_dict({}) == Mix() and not Mix() and len(Mix.parse("fear,calm")) == 2
    assert Mix.from_dict({"nostalgic": 0.1}, allow_custom=True).names == ["nostalgic"]
    for bad, words in [({"nostalgic": 0.1}, "unknown emotion"),
                       ({"fear:0.1": None}, "unknown emotion"),     # a key is never name:strength
                       ({"afraid": 0.1, "fear": 0.2}, "give each emotion once"),
                       ({"afraid": "0.1"}, "must be a number"),
                       ({"afraid": True}, "must be a number"),
                       ({"afraid": float("nan")}, "finite"),
                       ({"afraid": 2.0}, "beyond"),
                       ({"afraid": 0.8, "calm": -0.8}, "adds up to 1.6"),
                       ({"": 0.1}, "an emotion is a name"),
                       ({"  ": 0.1}, "an emotion is a name"),
                       ({3: 0.1}, "an emotion is a name")]:
        with pytest.raises(EdgeemoError, match=re.escape(words)):
            Mix.from_dict(bad)


def test_mix_from_a_path(tmp_path):
    assert Mix.from_path(tmp_path / "v.gguf", 0.1).as_dict() == {str(tmp_path / "v.gguf"): 0.1}
    assert Mix.from_path("calm").as_dict() == {"./calm": None}       # stays a file, not calm
    assert Mix.from_path("calm").files == ["./calm"]
    assert Mix.from_path("dir,with:odd.gguf").names == ["dir,with:odd.gguf"]
    with pytest.raises(EdgeemoError, match="beyond"):
        Mix.from_path("v.gguf", 3)
    with pytest.raises(EdgeemoError, match="an emotion is a name"):
        Mix.from_path("")


def test_a_default_strength_fills_the_parts_given_without_one():
    assert Mix.parse("fear,calm:0.03").with_default(0.1).as_dict() == {"afraid": 0.1, "calm": 0.03}
    assert Mix.parse("fear").with_default(None) == Mix.parse("fear")
    # checked only where it is used, as --strength always was
    assert Mix.parse("fear:0.1").with_default(float("nan")) == Mix.parse("fear:0.1")
    with pytest.raises(EdgeemoError, match="finite"):
        Mix.parse("fear").with_default(float("nan"))
    with pytest.raises(EdgeemoError, match="adds up to"):
        Mix.parse("fear,calm").with_default(0.6)


def test_parse_strength():
    assert parse_strength(" 0.05 ") == 0.05 and parse_strength("-1e-2") == -0.01
    for text, words in [("abc", "bad strength 'abc': write a number such as 0.08"),
                        ("", "bad strength ''"), ("nan", "finite"), ("inf", "finite"),
                        ("1.5", "beyond")]:
        with pytest.raises(EdgeemoError, match=re.escape(words)):
            parse_strength(text)


# --- user stimuli files ---------------------------------------------------------------------

def _write(tmp_path, lines, name="my.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(emotion, text):
    return json.dumps({"emotion": emotion, "text": text})


GOOD = [
    _row("fear", "The floor creaked behind her."),
    _row("afraid", "He ran without looking back."),
    "",
    _row("nostalgic", "The old song came on the radio."),
    _row("Nostalgic", "She found her school tie in a drawer."),
    _row("neutral", "The bus leaves at nine."),
    _row("none", "The table has four legs."),
]


def test_load_user_stimuli_ok(tmp_path):
    data = stimuli.load_user_stimuli(_write(tmp_path, GOOD))
    assert data == {
        "afraid": ["The floor creaked behind her.", "He ran without looking back."],
        "nostalgic": ["The old song came on the radio.", "She found her school tie in a drawer."],
        NEUTRAL: ["The bus leaves at nine.", "The table has four legs."],
    }


def test_user_stimuli_bad_json_names_line(tmp_path):
    lines = GOOD[:3] + ['{"emotion": "fear", "text": "unterminated}'] + GOOD[3:]
    with pytest.raises(StimuliError) as info:
        stimuli.load_user_stimuli(_write(tmp_path, lines))
    message = str(info.value)
    assert "my.jsonl:4:" in message and "invalid JSON" in message and "\n" not in message


def test_user_stimuli_not_an_object(tmp_path):
    with pytest.raises(StimuliError, match=r"my\.jsonl:2: expected a JSON object"):
        stimuli.load_user_stimuli(_write(tmp_path, [GOOD[0], '["fear", "text"]']))


def test_user_stimuli_missing_field_names_line(tmp_path):
    lines = GOOD + [json.dumps({"emotion": "calm"})]
    with pytest.raises(StimuliError) as info:
        stimuli.load_user_stimuli(_write(tmp_path, lines))
    message = str(info.value)
    assert "my.jsonl:8:" in message and 'missing "text"' in message
    assert '{"emotion": ..., "text": ...}' in message


def test_user_stimuli_empty_text_names_line(tmp_path):
    lines = [_row("fear", "   ")] + GOOD
    with pytest.raises(StimuliError, match=r"my\.jsonl:1: \"text\" is empty"):
        stimuli.load_user_stimuli(_write(tmp_path, lines))


def test_user_stimuli_bad_emotion_names_line(tmp_path):
    lines = GOOD[:2] + [_row("!!!", "text")]
    with pytest.raises(StimuliError, match=r"my\.jsonl:3: unknown emotion"):
        stimuli.load_user_stimuli(_write(tmp_path, lines))


def test_user_stimuli_missing_neutral(tmp_path):
    lines = [row for row in GOOD if "neutral" not in row and "none" not in row]
    with pytest.raises(StimuliError) as info:
        stimuli.load_user_stimuli(_write(tmp_path, lines))
    assert "no neutral texts" in str(info.value)
    assert '"emotion": "neutral"' in str(info.value)


def test_user_stimuli_too_few_texts(tmp_path):
    lines = GOOD + [_row("calm", "The lake was still.")]
    with pytest.raises(StimuliError, match="only 1 text for 'calm'"):
        stimuli.load_user_stimuli(_write(tmp_path, lines))
    with pytest.raises(StimuliError, match="only 1 neutral text"):
        stimuli.load_user_stimuli(_write(tmp_path, GOOD[:-1]))


def test_user_stimuli_empty_or_missing_file(tmp_path):
    with pytest.raises(StimuliError, match="empty"):
        stimuli.load_user_stimuli(_write(tmp_path, ["", "  "]))
    with pytest.raises(StimuliError, match="not found"):
        stimuli.load_user_stimuli(tmp_path / "absent.jsonl")


def test_load_jsonl_skips_blank_lines(tmp_path):
    path = _write(tmp_path, ['{"a": 1}', "", "   ", '{"b": 2}'])
    assert stimuli.load_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_stimuli_hash_is_stable_and_sensitive():
    a = {"afraid": ["x", "y"], NEUTRAL: ["z"]}
    b = {NEUTRAL: ["z"], "afraid": ["x", "y"]}
    assert stimuli.stimuli_hash(a) == stimuli.stimuli_hash(b)
    assert len(stimuli.stimuli_hash(a)) == 64
    assert stimuli.stimuli_hash(a) != stimuli.stimuli_hash({"afraid": ["y", "x"], NEUTRAL: ["z"]})
    assert stimuli.stimuli_hash(a, "v1") != stimuli.stimuli_hash(a, "v2")


# --- dialogue data --------------------------------------------------------------------------------

def test_shipped_dialogue_pairs_every_request_with_all_21_tones():
    rows = stimuli.dialogue()
    by_request: dict[str, set] = {}
    for r in rows:
        by_request.setdefault(r["request"], set()).add(r["emotion"])
    assert len(by_request) >= 24
    assert all(tones == set(EMOTIONS) | {NEUTRAL} for tones in by_request.values())
    # the evaluation requests are not among them
    assert not {r["prompt"] for r in stimuli.requests()} & set(by_request)
    assert len(stimuli.dialogue(["fear"])) == 2 * len(by_request)       # afraid + neutral


def _dialogue_file(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    return path


def test_user_dialogue_is_checked_line_by_line(tmp_path):
    good = [{"request": q, "emotion": e, "text": f"{e} reply to {q}"}
            for q in ("a?", "b?") for e in ("neutral", "wistful")]
    assert len(stimuli.load_user_dialogue(_dialogue_file(tmp_path, good))) == 4
    cases = [
        (good[:1] + [{"request": "a?", "emotion": "wistful"}], "d.jsonl:2", '"text"'),
        (good[1:], "has no neutral reply", "a?"),
        (good + [good[0]], "d.jsonl:5", "second"),
        (good[:2], "only 1 reply", "give at least"),
        ([{"emotion": "neutral", "text": "x"}], "d.jsonl:1", 'missing "request"'),
    ]
    for lines, where, what in cases:
        with pytest.raises(StimuliError) as err:
            stimuli.load_user_dialogue(_dialogue_file(tmp_path, lines))
        assert where in str(err.value) and what in str(err.value), str(err.value)

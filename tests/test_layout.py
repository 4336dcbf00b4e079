"""The library's shape: the public API, strength in one place, the judge seam, missing extras."""

from __future__ import annotations

import numpy as np
import pytest

import edgeemo
from edgeemo import vectors
from edgeemo.errors import EdgeemoError, MissingExtra, require
from edgeemo.vectors import ControlVector


def test_public_api_is_importable_from_the_package():
    from edgeemo import ChatSession, ControlVector, EmotionModel, make_vectors  # noqa: F401

    for name in edgeemo.__all__:
        assert getattr(edgeemo, name) is not None
    with pytest.raises(AttributeError):
        edgeemo.no_such_thing


def _raw(norms=(100.0, 200.0), strength=None):
    rng = np.random.default_rng(0)
    meta = {"residual_norm": list(norms)}
    if strength is not None:
        meta["strength"] = strength
    return ControlVector("llama", 8, {3: rng.normal(size=8), 4: rng.normal(size=8)}, meta)


def test_at_strength_sets_unit_direction_times_strength_times_norm():
    vec = vectors.at_strength(_raw(), 0.05, calibrated=True)
    assert vec.metadata["strength"] == 0.05 and vec.metadata["calibrated"] is True
    for layer, norm in zip(vec.layers, (100.0, 200.0)):
        assert np.linalg.norm(vec.directions[layer]) == pytest.approx(0.05 * norm, rel=1e-6)
    assert vec.metadata["direction_scale"] == pytest.approx([5.0, 10.0], rel=1e-6)
    again = vectors.at_strength(vec, 0.05)
    for layer in vec.layers:
        np.testing.assert_allclose(again.directions[layer], vec.directions[layer], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "0.1", None, True])
def test_at_strength_refuses_bad_strengths(bad):
    with pytest.raises(EdgeemoError):
        vectors.at_strength(_raw(), bad)


def test_scale_for_own_foreign_and_asked_strengths():
    own = vectors.at_strength(_raw(), 0.08)
    assert vectors.scale_for(own, None) == (1.0, 0.08)
    assert vectors.scale_for(own, 0.04) == pytest.approx((0.5, 0.04))
    foreign = ControlVector("llama", 8, {3: np.ones(8)})                 # cvector-generator, repeng
    assert vectors.scale_for(foreign, None) == (1.0, 1.0)
    assert vectors.scale_for(foreign, 0.5) == (0.5, 0.5)
    odd = ControlVector("llama", 8, {3: np.ones(8)}, {"strength": "strong"})
    assert vectors.scale_for(odd, None) == (1.0, 1.0)
    with pytest.raises(EdgeemoError, match="number"):
        vectors.scale_for(own, "0.1")


def test_a_file_safe_for_stock_llama_cpp_keeps_its_reply_strength_for_edgeemo():
    """Tensors at the strength stock llama.cpp can take (prompt steered too); edgeemo's
    reply-only steering at the larger calibrated one, whole-sequence at the tensors' own."""
    vec = vectors.at_strength(_raw(), 0.04, reply_strength=0.08)
    assert vec.metadata["strength"] == 0.04 and vec.metadata["reply_strength"] == 0.08
    for layer, norm in zip(vec.layers, (100.0, 200.0)):
        assert np.linalg.norm(vec.directions[layer]) == pytest.approx(0.04 * norm, rel=1e-6)
    assert vectors.recommended_strength(vec) == 0.08
    assert vectors.recommended_strength(vec, whole_sequence=True) == 0.04
    assert vectors.scale_for(vec, None) == pytest.approx((2.0, 0.08))
    assert vectors.scale_for(vec, None, whole_sequence=True) == (1.0, 0.04)
    assert vectors.scale_for(vec, 0.02) == pytest.approx((0.5, 0.02))
    # a re-scale that does not give it drops the old one; an equal one is not stored
    assert "reply_strength" not in vectors.at_strength(vec, 0.06).metadata
    assert "reply_strength" not in vectors.at_strength(_raw(), 0.05, reply_strength=0.05).metadata
    with pytest.raises(EdgeemoError):
        vectors.at_strength(_raw(), 0.04, reply_strength=-0.1)


def test_calibration_sets_the_stock_strength_never_above_the_reply_one():
    from edgeemo.evaluation import calibration

    vec = calibration.with_stock(_raw(), 0.08, {"strength": 0.04, "held": True})
    assert vec.metadata["strength"] == 0.04 and vec.metadata["reply_strength"] == 0.08
    assert vec.metadata["calibration_stock_held"] is True
    again = calibration.with_stock(vec, 0.06, None)          # calibrated again, no stock check
    assert again.metadata["strength"] == 0.06
    assert not {"reply_strength", "calibration_stock_held"} & set(again.metadata)
    held = calibration.with_stock(_raw(), 0.05, {"strength": 0.05, "held": True})
    assert held.metadata["strength"] == 0.05 and "reply_strength" not in held.metadata


def test_a_missing_extra_names_the_pip_install():
    with pytest.raises(MissingExtra) as err:
        require("eval", "edgeemo_no_such_module")
    message = str(err.value)
    assert "pip install 'edgeemo[eval]'" in message and "\n" not in message


def test_every_judge_implements_the_interface():
    from edgeemo.evaluation.judges import JUDGES, Judge

    assert {"lexicon", "probe", "reader-smollm2", "reader-gemma3"} <= set(JUDGES)
    for name, judge in JUDGES.items():
        assert issubclass(judge, Judge) and judge.name == name
        assert judge.read is not Judge.read
        assert isinstance(judge.margin({"measure": "valence", "margin": 0.1}), float)


def test_store_paths_come_from_the_model_sha256(tmp_path, monkeypatch):
    from edgeemo import models, store

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    model = models.Model("m", gguf)
    calls = []
    real = store.sha256_file
    monkeypatch.setattr(store, "sha256_file", lambda p: calls.append(p) or real(p))
    key = model.sha256[:16]
    assert store.vector_dir(model.sha256).name == key
    assert store.export_dir(model.sha256, "int8").parent.name == key
    assert store.cache_dir("stories", model.sha256).name == key
    assert len(calls) == 1                                  # hashed once, then remembered


def test_the_wheel_holds_the_library_its_data_and_licence_but_no_test_fixtures(tmp_path):
    """What `pip install` of a release gets: every module but the random-model maker (tests and
    benchmarks use it from a checkout), the model cards and prebuilt vectors, the licence."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(root)], check=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("edgeemo-*.whl"))).namelist())
    modules = {str(p.relative_to(root)) for p in (root / "edgeemo").rglob("*.py")}
    assert modules - names == {"edgeemo/testmodels.py"}
    cards = {f"edgeemo/_data/models/{p.name}" for p in (root / "models").glob("*.toml")}
    assert cards and cards <= names
    shipped = {f"edgeemo/_data/vectors/{p.relative_to(root / 'vectors')}"
               for p in (root / "vectors").rglob("*.gguf")}
    assert len(shipped) >= 60 and shipped <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)

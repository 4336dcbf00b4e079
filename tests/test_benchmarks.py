"""The benchmark scripts keep working: a --quick run of every one (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TEST_STORE

pytestmark = pytest.mark.slow


def test_quick_benchmark_run_completes_every_benchmark(tmp_path, default_export):
    env = {**os.environ, "EDGEEMO_HOME": str(TEST_STORE)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                             "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["quick"] is True
    assert set(doc["benchmarks"]) == {"steering", "latency", "engine", "endtoend", "stories",
                                      "peer", "scaling", "serve", "sizes"}
    for name, bench in doc["benchmarks"].items():
        assert bench["status"] == "ok" and not bench["errors"], (name, bench["errors"])
        for skipped in bench["skipped"]:
            assert skipped["reason"]
    assert "| " in (tmp_path / "RESULTS.md").read_text()
    assert isinstance(doc["machine"]["load_average_start"], float)

    # RESULTS.md can be rewritten from results.json alone, with a note on the conditions
    rendered = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--render",
                               "--out", str(tmp_path), "--note", "a quiet afternoon"], env=env,
                              capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "Conditions: a quiet afternoon" in (tmp_path / "RESULTS.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["note"] == "a quiet afternoon"

    # one benchmark run again replaces its entry in the record, and the rerun is listed
    before = json.loads((tmp_path / "results.json").read_text())
    rerun = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                            "--only", "latency", "--update", "--out", str(tmp_path)], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = json.loads((tmp_path / "results.json").read_text())
    assert set(after["benchmarks"]) == set(before["benchmarks"])
    assert after["benchmarks"]["steering"] == before["benchmarks"]["steering"]
    assert after["reruns"][-1]["benchmarks"] == ["latency"]
    assert "Rerun later: latency" in (tmp_path / "RESULTS.md").read_text()

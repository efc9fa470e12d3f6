"""The load test of `pld serve`, shortened: bench/load_serve.py's ``load`` run the way a user
runs it, with few clients and requests, and a real `pld device pull` of new versions and a
`pld device rollback` in the middle. The full run's command is in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pld.bench.load_serve import valid_version
from pld.bench.serve_harness import VERSIONS, Answer

OLD, NEW = VERSIONS


def test_the_version_check_refuses_a_version_that_was_not_active() -> None:
    """The load test's own check can fail: each window of the swap accepts only what was active."""
    marks = {"pull": 10.0, "v2": 20.0, "rollback": 30.0, "v1": 40.0}

    def ok(sent: float, got: float, version: str) -> bool:
        return valid_version(Answer(0, sent, got, 200, version, 1), marks)

    assert ok(1, 9, OLD) and not ok(1, 9, NEW)  # answered before the pull started
    assert ok(5, 15, OLD) and ok(5, 15, NEW)  # answered while the new versions came in
    assert ok(21, 29, NEW) and not ok(21, 29, OLD)  # sent once they were all visible
    assert ok(25, 35, OLD) and ok(25, 35, NEW)  # answered while rolling back
    assert ok(41, 45, OLD) and not ok(41, 45, NEW)  # sent after the rollback was visible
    assert not ok(5, 15, "9.9.9") and not ok(5, 15, "")  # never active


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_with_a_pull_and_a_rollback_in_the_middle() -> None:
    third = 8
    cmd = [
        sys.executable, "-m", "pld.bench.load_serve", "load",
        "--clients", "4", "--requests", str(3 * third), "--batches", "1,1,2,4",
        "--compare", "4", "--threads", "1",
        "--pull-nice", "0",  # the pull at full priority: a shorter test (the bench keeps 19)
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=840)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["failed"] == 0, result["failures"]
    assert result["wrong_version"] == 0, result["wrong"]
    assert result["exit_code"] == 0  # SIGTERM drained and exited cleanly
    assert result["phase_requests"] == third
    assert set(result["tasks"]) == {"stereoset", "contractnli", "logiqa"}
    assert result["inputs"] > result["requests"]  # some requests carried several inputs

    # the swap really happened: the new version answered between the pull and the rollback,
    # and only the old one before the pull and after the rollback
    phases = {r["phase"]: r for r in result["phases"]}
    assert list(phases) == ["before", "during", "after"]
    assert phases["before"]["versions"] == {OLD: phases["before"]["requests"]}
    assert phases["during"]["versions"].get(NEW, 0) >= third, phases["during"]
    assert phases["after"]["versions"] == {OLD: phases["after"]["requests"]}
    assert phases["after"]["requests"] >= third
    assert result["pull_s"] > 0 and result["rollback_s"] > 0
    marks = result["marks_s"]
    assert marks["pull"] < marks["v2"] < marks["rollback"] < marks["v1"]

    for r in phases.values():
        assert 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["inputs_per_s"] > 0
    ratio = result["inprocess_inputs_per_s"] / phases["before"]["inputs_per_s"]
    assert result["overhead_ratio"] == pytest.approx(ratio, rel=0.01)

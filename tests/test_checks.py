"""Lint, formatting and strict type checks are part of the test run (the README's test command
and CI run them): a lint or type error fails the suite like any failing test."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("check", ["ruff", "format", "mypy"])
def test_check_passes(check: str) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check.py"), check],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=580,
    )
    assert run.returncode == 0, f"{check} failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"

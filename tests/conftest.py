"""Shared fixtures: real models and real data, nothing from the network, state in tmp dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pld.runtime import Model

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
# The core tests read this small committed sample of the benchmarks (scripts/make_fixtures.py
# writes it from ../shared/data), so they run, and never skip, without the shared data.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
DATA = Path(os.environ.get("PLD_DATA_DIR", REPO.parent / "shared" / "data"))


def data_file(task: str, split: str = "dev") -> Path:
    """The committed fixture of a benchmark split (a few dozen records, all labels)."""
    path = FIXTURES / task / f"{split}.jsonl"
    assert path.is_file(), f"{path} is missing; run python scripts/make_fixtures.py"
    return path


def full_data_file(task: str, split: str = "dev") -> Path:
    """A whole benchmark split from ../shared/data; the test is skipped where it is missing."""
    path = DATA / task / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}; set PLD_DATA_DIR")
    return path


def records(task: str, split: str = "dev", n: int = 10) -> list[dict]:
    """The first ``n`` records of a split's fixture (there must be at least ``n``)."""
    out = []
    with data_file(task, split).open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) == n:
                return out
    raise AssertionError(f"the {task} {split} fixture has {len(out)} records, not {n}")


def pld_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The `pld` command as a user starts it, with stdout and stderr piped, interruptible."""

    def interruptible() -> None:
        # a job started in the background by a shell (as CI may run us) ignores SIGINT, and a
        # child inherits that; a user's terminal does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        [str(Path(sys.executable).parent / "pld"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=interruptible,
    )


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep prefix states and hashes in a per-run directory; reuse the assembled default model."""
    if "PLD_CACHE_DIR" not in os.environ:
        os.environ["PLD_CACHE_DIR"] = str(tmp_path_factory.mktemp("pld-cache"))


@pytest.fixture(scope="session")
def gemma() -> Iterator[Model]:
    """The default student, Gemma-3 270M, loaded once for the session: pass it as ``model=`` to
    ``Classifier.open`` or ``evaluate``, which leave it open. Safe to share: the weights are
    read-only and each classifier has its own context; a test must not close it."""
    from pld.runtime import Model

    with Model.open("gemma-3-270m") as model:
        yield model

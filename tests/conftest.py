"""Shared fixtures: real models and real data, nothing from the network, state in tmp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PLD_DATA_DIR", REPO.parent / "shared" / "data"))


def data_file(task: str, split: str = "dev") -> Path:
    """A benchmark split's file in ../shared/data (the test is skipped where it is missing)."""
    path = DATA / task / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}; set PLD_DATA_DIR")
    return path


def records(task: str, split: str = "dev", n: int = 10) -> list[dict]:
    """The first ``n`` records of a benchmark split from ../shared/data."""
    path = data_file(task, split)
    out = []
    with path.open() as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep prefix states and hashes in a per-run directory; reuse the assembled default model."""
    if "PLD_CACHE_DIR" not in os.environ:
        os.environ["PLD_CACHE_DIR"] = str(tmp_path_factory.mktemp("pld-cache"))

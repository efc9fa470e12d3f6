"""What every benchmark runs on unless told otherwise, shipped as package data (``bench/data``):
the long Contract-NLI bundle (about 4,600 tokens of rules) and the first 64 StereoSet dev records.
Knows file names, nothing of how they are measured.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["default_bundle", "default_inputs", "default_texts"]


def default_bundle() -> str:
    """The benchmark bundle: Contract-NLI with about 4,600 tokens of rules."""
    return str(resources.files("pld.bench.data").joinpath("contractnli-long.pld.json"))


def default_inputs() -> str:
    """The benchmark inputs: the first 64 StereoSet dev records, shipped with pld."""
    return str(resources.files("pld.bench.data").joinpath("stereoset-dev-64.jsonl"))


def default_texts() -> list[str]:
    """The text of each of ``default_inputs()``'s records, in order."""
    data = resources.files("pld.bench.data").joinpath("stereoset-dev-64.jsonl").read_text()
    return [json.loads(line)["text"] for line in data.splitlines() if line.strip()]

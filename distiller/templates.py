"""The teacher's prompt templates: ``prompts/NAME.md`` files with ``$name`` placeholders.

Loaded with importlib.resources from the package ``pld.distiller.prompts`` and rendered
strictly (a missing value raises); their hashes go into a bundle's provenance. Knows nothing
about teachers or what the stages do with the replies.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from string import Template

__all__ = ["PROMPTS", "prompt", "prompt_hashes", "prompt_prefix"]

PROMPTS = ("extract", "consolidate", "revise", "target")


@cache
def _prompt_bytes(name: str) -> bytes:
    return (resources.files("pld.distiller.prompts") / f"{name}.md").read_bytes()


def prompt(name: str, **values: object) -> str:
    """Fill the ``$placeholders`` of ``prompts/NAME.md``; a missing value is an error."""
    return (
        Template(_prompt_bytes(name).decode("utf-8"))
        .substitute({k: str(v) for k, v in values.items()})
        .strip()
    )


def prompt_hashes() -> dict[str, str]:
    """``sha256:`` of each prompt file, for a bundle's provenance."""
    return {n: "sha256:" + hashlib.sha256(_prompt_bytes(n)).hexdigest() for n in PROMPTS}


def prompt_prefix(name: str) -> str:
    """The fixed text every rendering of ``prompts/NAME.md`` starts with (up to its first
    placeholder): how a cached request is recognised as one of that stage's."""
    text = _prompt_bytes(name).decode("utf-8").lstrip()
    return text[: text.find("$")] if "$" in text else text

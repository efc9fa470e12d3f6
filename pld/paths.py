"""Where pld keeps its files: the cache directory and its layout, in one place.

``$PLD_CACHE_DIR``, else ``$XDG_CACHE_HOME/pld``, else ``~/.cache/pld``; one folder per kind
of entry. Knows paths only, never what is stored in them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "cache_dir",
    "hashes_file",
    "models_dir",
    "prefix_states_dir",
    "teacher_cache_dir",
]


def cache_dir() -> Path:
    """pld's cache directory ($PLD_CACHE_DIR, else $XDG_CACHE_HOME/pld), created if missing."""
    if env := os.environ.get("PLD_CACHE_DIR"):
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "pld"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Model files assembled from chunk packages (``models/``)."""
    return _sub("models")


def prefix_states_dir() -> Path:
    """Saved KV states of primed system prompts (``prefix-states/``)."""
    return _sub("prefix-states")


def teacher_cache_dir() -> Path:
    """Teacher replies and the student's cached predictions (``teacher-cache/``)."""
    return _sub("teacher-cache")


def hashes_file() -> Path:
    """The sha256 cache of model files, keyed by file identity (``hashes.json``)."""
    return cache_dir() / "hashes.json"

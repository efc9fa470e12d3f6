"""Prefix-state files: the primed KV cache of a bundle's system prompt, saved to disk.

A cold start on a device should not re-read a 4,600-token prompt. A state file is keyed by
everything that changes its bytes (model file, prefix tokens, llama.cpp version, context and
cache settings), so a file made for another bundle or model is never used. Files are written
atomically and the directory keeps only the most recently used few.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pld.files import atomic_writer

__all__ = ["PrefixStateStore", "state_key"]

_MAGIC = b"PLDSTATE1\n"


def state_key(**parts: Any) -> str:
    """A stable hex key over the given settings (order-independent)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class PrefixStateStore:
    """A directory of ``<key>.state`` files: a JSON header line, then llama.cpp's state bytes."""

    def __init__(self, directory: Path, *, keep: int = 8) -> None:
        self.directory = directory
        self.keep = keep

    def path(self, key: str) -> Path:
        """Where the state for ``key`` lives."""
        return self.directory / f"{key}.state"

    def load(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        """The header and state bytes for ``key``, or None if absent or unreadable."""
        path = self.path(key)
        try:
            with path.open("rb") as fh:
                if fh.readline() != _MAGIC:
                    return None
                header = json.loads(fh.readline())
                data = fh.read()
        except (OSError, ValueError):
            return None
        if header.get("key") != key or header.get("size") != len(data):
            return None
        os.utime(path)  # mark as recently used
        return header, data

    def save(self, key: str, header: dict[str, Any], data: bytes) -> Path:
        """Write atomically, then drop the least recently used files beyond ``keep``."""
        path = self.path(key)
        head = dict(header, key=key, size=len(data))
        with atomic_writer(path) as fh:
            fh.write(_MAGIC)
            fh.write(json.dumps(head, sort_keys=True).encode() + b"\n")
            fh.write(data)
        self._prune()
        return path

    def _prune(self) -> None:
        files = sorted(
            self.directory.glob("*.state"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for old in files[self.keep :]:
            old.unlink(missing_ok=True)

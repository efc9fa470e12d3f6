"""A content-addressed on-disk cache of teacher requests and responses, shared by all stages.

The key is the sha256 of a request's canonical JSON (endpoint kind, model, messages or input,
parameters), one file per entry, written atomically (``pld.files.atomic_write``) so concurrent
threads and processes are safe. It counts calls, hits and tokens. It knows nothing about HTTP or about any one stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from pld.files import atomic_write
from pld.paths import teacher_cache_dir

__all__ = ["CacheStats", "ResponseCache", "request_key"]

Response = dict[str, Any]


class CacheStats(msgspec.Struct, kw_only=True, frozen=True):
    """Counters for one cache: network calls made, hits, the tokens the calls spent, and the
    tokens the hits would have cost (``hit_tokens``, prompt and completion together)."""

    calls: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hit_tokens: int = 0


def request_key(request: Mapping[str, Any]) -> str:
    """Return the sha256 hex digest of a request's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(
        request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Request -> response JSON files under ``directory`` (default: ``teacher_cache_dir()``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else teacher_cache_dir()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._calls = self._hits = self._prompt_tokens = self._completion_tokens = 0
        self._hit_tokens = 0

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return CacheStats(
                calls=self._calls,
                hits=self._hits,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                hit_tokens=self._hit_tokens,
            )

    def path(self, key: str) -> Path:
        """The entry file for a key (sharded by its first two hex digits)."""
        return self.directory / key[:2] / f"{key}.json"

    def get(self, request: Mapping[str, Any]) -> Response | None:
        """Return the stored response, or None when absent or unreadable (a corrupt entry)."""
        key = request_key(request)
        try:
            entry = json.loads(self.path(key).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        response = entry.get("response")
        return response if isinstance(response, dict) else None

    def put(self, request: Mapping[str, Any], response: Response) -> None:
        """Store a response atomically: a reader sees the old entry or the new one, never half."""
        key = request_key(request)
        data = json.dumps({"key": key, "request": request, "response": response})
        atomic_write(self.path(key), data.encode("utf-8"))

    def fetch(
        self, request: Mapping[str, Any], call: Callable[[], Response]
    ) -> tuple[Response, bool]:
        """Return ``(response, cached)``: the stored response, else ``call()``'s, stored and counted.

        Identical requests in flight in this process wait for the first instead of calling
        twice; across processes the atomic write makes a duplicate call harmless.
        """
        key = request_key(request)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                if (hit := self.get(request)) is not None:
                    usage = hit.get("usage") or {}
                    with self._lock:
                        self._hits += 1
                        self._hit_tokens += _int(usage.get("prompt_tokens"))
                        self._hit_tokens += _int(usage.get("completion_tokens"))
                    return hit, True
                response = call()
                self.put(request, response)
                usage = response.get("usage") or {}
                with self._lock:
                    self._calls += 1
                    self._prompt_tokens += _int(usage.get("prompt_tokens"))
                    self._completion_tokens += _int(usage.get("completion_tokens"))
                return response, False
        finally:
            with self._lock:
                # Safe to forget: once stored, a later arrival finds the entry on disk.
                if self._key_locks.get(key) is key_lock and not key_lock.locked():
                    del self._key_locks[key]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

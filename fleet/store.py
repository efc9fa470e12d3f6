"""Where publications live: a local directory or any fsspec URL (``http(s)://``, ``s3://``,
``hf://``, ``memory://``), read and written by paths relative to its root.

One code path for every store; local writes are atomic renames. Reads can stop at a declared
length, so a server that sends more bytes than an index promised cannot fill the disk, and run
under ``Deadlines`` (per request, and for a whole pull), so a store that stalls cannot hold a
device's pull lock for ever. An HTTP store can be asked for a file only if it changed
(``read_if_changed``: If-None-Match / If-Modified-Since). Knows files, not what is in them.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pld.errors import ConfigError, DeadlineError, StoreError
from pld.files import atomic_write

__all__ = ["Deadlines", "Store", "Validators"]

REQUEST_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 300.0


class Deadlines:
    """How long one request, and all requests of one pull together, may take (seconds)."""

    def __init__(
        self, request_s: float = REQUEST_TIMEOUT_S, pull_s: float = PULL_TIMEOUT_S
    ) -> None:
        for name, value in (("--request-timeout", request_s), ("--pull-timeout", pull_s)):
            if not value > 0:
                raise ConfigError(f"{name} is {value:g}; give seconds above 0")
        self.request_s, self.pull_s = request_s, pull_s
        self.start = time.monotonic()
        self.binding = "request"  # which deadline limits the request in flight

    def next_request(self, path: str) -> float:
        """Seconds the next request may take: the request deadline, or what is left of the
        pull's, whichever is shorter; raises ``DeadlineError`` when the pull's has passed."""
        left = self.pull_s - (time.monotonic() - self.start)
        if left <= 0:
            self.binding = "pull"
            raise self.error(path)
        self.binding = "request" if self.request_s <= left else "pull"
        return min(self.request_s, left)

    def check(self, path: str) -> None:
        """Raise ``DeadlineError`` when the pull's deadline has passed."""
        self.next_request(path)

    def error(self, path: str) -> DeadlineError:
        """The error naming the deadline that the request for ``path`` ran into."""
        spent = time.monotonic() - self.start
        if self.binding == "pull":
            what = f"the pull's deadline of {self.pull_s:g} s (--pull-timeout) passed"
            fix = "raise --pull-timeout"
        else:
            what = f"no answer within the {self.request_s:g} s deadline of one request (--request-timeout)"
            fix = "raise --request-timeout"
        return DeadlineError(
            f"{what} while reading {path} ({spent:.1f} s into the pull); the store is stalling "
            f"or too slow. The active bundles are untouched: pull again later, or {fix}"
        )


def _timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` is (or was caused by) a timeout: fsspec wraps some in other errors."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, TimeoutError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


_MAX_VALIDATOR = 200  # characters: an ETag is a hash or two; anything longer is not kept


def _token(value: str | None) -> str | None:
    """``value`` when it can be sent back in a header as it came (printable ASCII, short)."""
    if value and len(value) <= _MAX_VALIDATOR and value.isascii() and value.isprintable():
        return value
    return None


@dataclasses.dataclass(frozen=True)
class Validators:
    """What an HTTP response said identifies its body (``ETag``, ``Last-Modified``), to send
    back as If-None-Match / If-Modified-Since. Empty for other stores."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Any) -> Validators:
        """The validators in response ``headers``. ``Last-Modified`` counts only when the
        response's ``Date`` is at least a second later (RFC 9110 8.8.2.2): a date has whole
        seconds, so a file changed twice within one second would otherwise look unchanged."""
        if headers is None:
            return cls()
        etag = _token(headers.get("ETag"))
        modified = _token(headers.get("Last-Modified"))
        try:
            when = email.utils.parsedate_to_datetime(modified or "")
            date = email.utils.parsedate_to_datetime(headers.get("Date") or "")
            if (date - when).total_seconds() < 1:
                modified = None
        except (TypeError, ValueError):
            modified = None
        return cls(etag, modified)

    def conditions(self) -> dict[str, str]:
        """The request headers that ask for the body only if it changed."""
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


class Store:
    """A publication store rooted at a directory path or fsspec URL; reads run under
    ``deadlines`` when given (each request of an HTTP store gets what is left)."""

    def __init__(self, url: str | Path, *, deadlines: Deadlines | None = None) -> None:
        self.url = str(url)
        self.deadlines = deadlines
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise StoreError(
                f"cannot open store {self.url!r} ({exc}); use a directory or an fsspec URL "
                "(http:// and https:// need aiohttp: pip install 'pld[fleet]')"
            ) from None
        self.fs: Any = fs
        self.root = str(root).rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.http = bool({"http", "https"} & set(protocol))
        self.kept: dict[str, bytes] = {}  # rel -> bytes fetched already (``keep``)

    def path(self, rel: str) -> str:
        """The full path (or URL) of ``rel``."""
        return f"{self.root}/{rel}" if self.root else rel

    def keep(self, rel: str, data: bytes) -> None:
        """Answer later reads of ``rel`` with ``data``, fetched already: a pull then verifies
        the very bytes whose validators it records, not those of a second request."""
        self.kept[rel] = data

    def open(self, path: str, headers: dict[str, str] | None = None) -> Any:
        """A streaming binary file for the full ``path``, its request under the deadlines (an
        HTTP store's whole request, body included, gets at most what is left of them);
        ``headers`` go with an HTTP store's request."""
        kwargs: dict[str, Any] = {"headers": headers} if headers and self.http else {}
        if self.http:
            # a streaming read never uses the size: giving one skips the HEAD request fsspec
            # sends only to learn it, so each file costs one GET
            kwargs["size"] = 1
        if self.deadlines is not None:
            seconds = self.deadlines.next_request(path)
            if self.http:
                # aiohttp applies it to the GET's whole exchange, body included (a float is
                # aiohttp's ClientTimeout(total=...))
                kwargs["timeout"] = seconds
        return self.fs.open(path, "rb", block_size=0, **kwargs)

    @staticmethod
    def is_missing(exc: BaseException) -> bool:
        """Whether a backend's error says the file is not there (not that the store could not
        be reached: fsspec's HTTP store wraps a refused connection in FileNotFoundError too,
        with the real error as its cause)."""
        if not isinstance(exc, FileNotFoundError):
            return False
        cause = exc.__cause__
        return cause is None or isinstance(cause, FileNotFoundError)

    def failed(self, path: str, exc: BaseException) -> StoreError:
        """The error for a failed read of ``path``: a deadline's, or what the backend said."""
        if self.deadlines is not None and _timed_out(exc):
            return self.deadlines.error(path)
        if self.is_missing(exc):
            return StoreError(f"{path} does not exist; check --from and --channel")
        cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ else exc
        return StoreError(
            f"cannot read {path} ({type(cause).__name__}: {cause}); the store is unreachable or "
            "failing: check the network and --from"
        )

    def _body(self, fh: Any, path: str, limit: int | None) -> bytes:
        data: bytes = fh.read() if limit is None else fh.read(limit + 1)
        if limit is not None:  # some streams return short reads: keep going
            while len(data) <= limit:
                if self.deadlines is not None:
                    self.deadlines.check(path)
                more = fh.read(limit + 1 - len(data))
                if not more:
                    break
                data += more
        return data

    def read(self, rel: str, *, limit: int | None = None) -> bytes:
        """The bytes of ``rel``: at most ``limit`` + 1 when a limit is given (so that a longer
        file shows as too long without being read whole). Raises ``StoreError``.
        """
        if rel in self.kept:
            data = self.kept[rel]
            return data if limit is None else data[: limit + 1]
        path = self.path(rel)
        try:
            with self.open(path) as fh:
                return self._body(fh, path, limit)
        except StoreError:
            raise
        except Exception as exc:  # network, permissions: fsspec backends raise many kinds
            raise self.failed(path, exc) from None

    def read_if_changed(
        self, rel: str, *, limit: int, sent: Validators | None = None
    ) -> tuple[bytes | None, Validators]:
        """``rel``'s bytes (at most ``limit`` + 1) and its response's validators; (None, none)
        when an HTTP store answers 304 Not Modified to the conditions ``sent``. Other stores:
        a plain read, no validators (a local file costs no request to read again)."""
        if not self.http:
            return self.read(rel, limit=limit), Validators()
        path, conditions = self.path(rel), sent.conditions() if sent else {}
        try:
            with self.open(path, conditions) as fh:
                # fsspec's streaming HTTP file keeps aiohttp's response as ``r``; without it
                # nothing is recorded, so no condition is ever sent
                response = getattr(fh, "r", None)
                if getattr(response, "status", None) == 304:
                    if not conditions:
                        raise StoreError(
                            f"{path} answered 304 Not Modified to a request that asked for the "
                            "file whatever it was; the store or a proxy is misbehaving"
                        )
                    return None, Validators()
                got = Validators.of(getattr(response, "headers", None))
                return self._body(fh, path, limit), got
        except StoreError:
            raise
        except Exception as exc:
            raise self.failed(path, exc) from None

    def read_optional(self, rel: str, *, limit: int | None = None) -> bytes | None:
        """The bytes of ``rel``, or None when it does not exist; a file over ``limit`` bytes
        is refused (``StoreError``)."""
        try:
            data = self.read(rel, limit=limit)
        except StoreError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        if limit is not None and len(data) > limit:
            raise StoreError(f"{self.path(rel)} is larger than {limit} bytes; refusing it")
        return data

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        try:
            return bool(self.fs.exists(self.path(rel)))
        except Exception as exc:
            raise StoreError(f"cannot reach {self.path(rel)} ({exc})") from exc

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` (atomically and durably for a local directory)."""
        path = self.path(rel)
        try:
            if self.local:
                atomic_write(path, data, fsync=True)
            else:
                parent = path.rsplit("/", 1)[0]
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.pipe_file(path, data)
        except Exception as exc:
            raise StoreError(
                f"cannot write {path} ({type(exc).__name__}: {exc}); publish to a writable "
                "directory or fsspec store (HTTP stores are read-only: sync a directory to them)"
            ) from exc

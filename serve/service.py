"""The running service behind the HTTP routes: the registry of bundles, the worker, the metrics,
and the loader thread that primes new bundles beside the active ones.

Owns the lifecycle (initial load in the background so /healthz answers while priming, the watch
on the source that picks up a pull or rollback without a restart, drain on shutdown). Knows
nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pld.errors import ConfigError

from .metrics import ServeMetrics
from .registry import Generation, Registry, ReloadResult
from .sources import DeviceSource
from .worker import Worker

__all__ = ["ServeOptions", "Service"]

log = logging.getLogger("pld.serve")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Limits and knobs of the HTTP side (the classifier's own are ``ClassifierOptions``)."""

    max_body: int = 1 << 20  # bytes of one request body
    max_inputs: int = 64  # inputs in one request
    max_queue: int = 256  # inputs admitted and not yet answered, over all requests
    max_batch: int = 1  # inputs per engine call (1: one at a time, fastest on a CPU)
    batch_window_ms: float = 0.0  # wait this long for a fuller batch (max_batch > 1)
    read_timeout_s: float = 30.0  # a body that takes longer to arrive is refused (408)
    poll_s: float = 1.0  # how often the source is checked for a new active generation
    admin_token: str | None = None  # lets /v1/reload answer off loopback
    max_connections: int = 128  # open connections; more are answered 503 (uvicorn)
    header_timeout_s: float = 10.0  # a request head that takes longer is cut off
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    max_header_bytes: int = 16 << 10  # a request head over this is refused (400)

    def __post_init__(self) -> None:
        if self.admin_token is not None and not self.admin_token.strip():
            raise ConfigError(
                "--admin-token is empty: anyone could reload; give a long random token "
                "(e.g. from 'openssl rand -hex 32'), or leave it out to allow loopback only"
            )
        for name, value in (("--max-connections", self.max_connections),
                            ("--header-timeout", self.header_timeout_s)):  # fmt: skip
            if not value > 0:
                raise ConfigError(f"{name} is {value}; give a positive number")


class Service:
    """Registry + worker + metrics + loader: what the app's routes talk to."""

    def __init__(self, registry: Registry, options: ServeOptions, metrics: ServeMetrics) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        registry.on_swap = self._on_swap
        if isinstance(registry.source, DeviceSource):  # the sync agent's state, per scrape
            metrics.watch_sync(registry.source.root)
        self.worker = Worker(
            registry,
            metrics,
            max_queue=options.max_queue,
            max_batch=options.max_batch,
            batch_window_ms=options.batch_window_ms,
        )
        self.loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pld-serve-load")
        self.load_error: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.started = time.time()
        self.ready_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloading: asyncio.Future[ReloadResult] | None = None

    def _on_swap(self, task: str, old: Generation | None, new: Generation | None, how: str) -> None:
        if how != "loaded":
            self.metrics.swaps.labels(task, "ok" if how == "ok" else "failed").inc()
        if how != "failed":
            self.metrics.set_active(
                task,
                (old.bundle.name, old.version, old.sha256) if old else None,
                (new.bundle.name, new.version, new.sha256) if new else None,
            )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker, the background load and the watch; returns at once."""
        self.worker.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._initial_load(loop)))

    async def _initial_load(self, loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.perf_counter()
        try:
            await loop.run_in_executor(self.loader, self.registry.load)
        except BaseException as exc:
            self.load_error = exc
            log.error("could not load %s: %s", self.registry.source.describe(), exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        self.ready_at = time.time()
        self.metrics.ready.set(1)
        ms = (time.perf_counter() - t0) * 1000
        log.info("ready: %d task(s) in %.0f ms", len(self.registry.active), ms)
        self._tasks.append(asyncio.create_task(self._watch()))

    async def _watch(self) -> None:
        """Poll the source's marker (``D/current``'s target); reload when it moves."""
        while True:
            await asyncio.sleep(self.options.poll_s)
            try:
                marker = self.registry.source.marker()
            except OSError:
                continue
            if marker != self.registry.marker and self._reloading is None:
                try:
                    await self.reload("the active bundles changed")
                except Exception as exc:  # the old bundles serve; POST /v1/reload retries
                    log.error("reload failed, keeping the active bundles: %s: %s",
                              type(exc).__name__, exc)  # fmt: skip
                    self.registry.marker = marker  # once per change, not once per poll

    async def reload(self, why: str) -> ReloadResult:
        """Re-read the source on the loader thread (one reload at a time; callers share it)."""
        if not self.registry.ready:
            return ReloadResult(refused={"*": "the server is still loading its first bundles"})
        if self._reloading is None:
            log.info("reloading: %s", why)
            loop = asyncio.get_running_loop()
            self._reloading = asyncio.ensure_future(
                loop.run_in_executor(self.loader, self.registry.reload)
            )
            self._reloading.add_done_callback(lambda _: setattr(self, "_reloading", None))
        return await asyncio.shield(self._reloading)

    async def stop(self) -> None:
        """Drain the worker, stop loading, free every classifier and model."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.worker.stop)
        await loop.run_in_executor(None, lambda: self.loader.shutdown(wait=True))
        self.registry.close()

"""Running the app under uvicorn with the signals a service manager sends: the first SIGTERM
(or Ctrl-C) stops accepting, answers every admitted request and exits 0; a second exits at
once; SIGHUP re-reads the bundles.

Knows uvicorn and signals; the app is ``create_app``'s, the bundles the registry's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from pld.runtime import ClassifierOptions

from .app import create_app
from .metrics import ServeMetrics
from .registry import Registry
from .service import ServeOptions, Service
from .sources import Source

__all__ = ["Server", "make_config", "run"]

log = logging.getLogger("pld.serve")


class Server(uvicorn.Server):
    """uvicorn's server with pld's signals (and none re-raised after a graceful exit)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {signal.SIGINT: self._stop, signal.SIGTERM: self._stop, signal.SIGHUP: self._hup}
        original = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
        try:
            yield
        finally:
            for sig, h in original.items():
                signal.signal(sig, h)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.should_exit:
            os.write(2, f"pld serve: second {name}, exiting now\n".encode())
            os._exit(128 + sig)
        os.write(2, f"pld serve: {name}: draining admitted requests, then exiting\n".encode())
        self.should_exit = True

    def _hup(self, sig: int, frame: FrameType | None) -> None:
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.service.reload("SIGHUP")))


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head has not arrived
    within ``head_timeout`` seconds of connecting (or of the previous response): uvicorn's
    keep-alive timer stops at the first byte, so a client sending one byte a second would
    hold the connection for ever."""

    head_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_cycle: object = None

    def _arm_head_timer(self) -> None:
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._head_cycle:  # a new request head was parsed
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def make_config(app: Starlette, *, host: str, port: int, options: ServeOptions) -> uvicorn.Config:
    """The uvicorn settings of `pld serve`: no proxy headers, bounded connections and heads."""
    protocol = type(
        "PldH11Protocol", (_HeadTimeoutH11,), {"head_timeout": options.header_timeout_s}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=None,
        # never rewrite the client address from X-Forwarded-For: /v1/reload's loopback check
        # must see the real peer (uvicorn would trust FORWARDED_ALLOW_IPS from the environment)
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        http=protocol,
        limit_concurrency=options.max_connections,
        timeout_keep_alive=options.keep_alive_s,
        h11_max_incomplete_event_size=options.max_header_bytes,
    )


def run(
    source: Source,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    options: ServeOptions | None = None,
    classifier: ClassifierOptions | None = None,
) -> Service:
    """Serve ``source`` until a signal stops it; returns the stopped service (for a summary).

    Raises the initial load's error if the bundles could not be loaded.
    """
    metrics = ServeMetrics()
    registry = Registry(source, classifier or ClassifierOptions())
    service = Service(registry, options or ServeOptions(), metrics)
    app = create_app(service)
    server = Server(make_config(app, host=host, port=port, options=service.options), service)

    def fatal(exc: BaseException) -> None:
        server.should_exit = True

    service.on_fatal = fatal
    log.info("pld serve on http://%s:%d (%s)", host, port, source.describe())
    server.run()
    if service.load_error is not None:
        raise service.load_error
    return service

"""`pld serve` behind a proxy and under bad clients, in-process and without a model:
the uvicorn settings `pld serve` really runs with (``server.run`` with the serving loop
stubbed), the app through httpx's ASGI transport with a chosen client address, and one real
uvicorn on 127.0.0.1 for the request-head timeout.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from servers import free_port
from typer.testing import CliRunner

from pld.cli import app as cli_app
from pld.errors import ConfigError
from pld.runtime import ClassifierOptions
from pld.serve import server as serve_server
from pld.serve.app import create_app
from pld.serve.metrics import ServeMetrics
from pld.serve.registry import Registry
from pld.serve.service import ServeOptions, Service
from pld.serve.sources import BundleSource

REMOTE = ("203.0.113.7", 40000)
LOOPBACK = ("127.0.0.1", 40000)


def service(**options: object) -> Service:
    registry = Registry(BundleSource(["stereoset"]), ClassifierOptions())
    return Service(registry, ServeOptions(**options), ServeMetrics())  # type: ignore[arg-type]


@pytest.fixture
def served_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[uvicorn.Config]:
    """The uvicorn.Config that ``pld serve`` builds, loaded, with the environment widening
    uvicorn's trust in proxy headers as a container image might (FORWARDED_ALLOW_IPS=*)."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    seen: list[uvicorn.Config] = []
    monkeypatch.setattr(
        serve_server.Server, "run", lambda self, sockets=None: seen.append(self.config)
    )
    serve_server.run(BundleSource(["stereoset"]), options=ServeOptions(admin_token="s3cret"))
    (config,) = seen
    config.load()
    yield config


def post_reload(asgi_app, client: tuple[str, int], headers: dict[str, str | bytes]) -> int:
    async def go() -> int:
        transport = httpx.ASGITransport(app=asgi_app, client=client, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://pld") as c:
            r = await c.post("/v1/reload", headers=headers)
            return r.status_code

    return asyncio.run(go())


def test_forwarded_for_loopback_from_a_remote_client_is_refused(served_config) -> None:
    spoof = {"x-forwarded-for": "127.0.0.1"}
    assert post_reload(served_config.loaded_app, REMOTE, spoof) == 403
    assert served_config.proxy_headers is False
    assert post_reload(served_config.loaded_app, REMOTE, {}) == 403
    # the token still works from anywhere; loopback without a proxy still needs none
    assert post_reload(served_config.loaded_app, REMOTE, {"authorization": "Bearer s3cret"}) == 200
    assert post_reload(served_config.loaded_app, LOOPBACK, {}) == 200


def test_a_request_through_a_local_proxy_is_not_local() -> None:
    app = create_app(service())
    assert post_reload(app, LOOPBACK, {"x-forwarded-for": "203.0.113.7"}) == 403
    assert post_reload(app, LOOPBACK, {"forwarded": "for=203.0.113.7"}) == 403
    assert post_reload(app, LOOPBACK, {}) == 200


@pytest.mark.parametrize("sent", [b"Bearer s\xc3\xa9cret", b"Bearer \xff\xfe", b"Bearer "])
def test_a_non_ascii_or_empty_token_is_403_not_500(sent: bytes) -> None:
    app = create_app(service(admin_token="secret"))
    assert post_reload(app, REMOTE, {"authorization": sent}) == 403


def test_a_non_ascii_admin_token_works_as_utf8() -> None:
    app = create_app(service(admin_token="sécret"))
    assert post_reload(app, REMOTE, {"authorization": "Bearer sécret".encode()}) == 200
    assert post_reload(app, REMOTE, {"authorization": b"Bearer secret"}) == 403


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_admin_token_is_refused_at_startup(token: str) -> None:
    with pytest.raises(ConfigError, match="--admin-token is empty"):
        service(admin_token=token)
    out = CliRunner().invoke(cli_app, ["serve", "--bundle", "stereoset", "--admin-token", token])
    assert isinstance(out.exception, ConfigError) and "--admin-token is empty" in str(out.exception)


def test_connections_and_heads_are_bounded(served_config) -> None:
    assert served_config.limit_concurrency == ServeOptions().max_connections
    assert served_config.timeout_keep_alive == ServeOptions().keep_alive_s
    assert served_config.h11_max_incomplete_event_size == ServeOptions().max_header_bytes
    assert served_config.http_protocol_class.head_timeout == ServeOptions().header_timeout_s


def test_a_slow_request_head_is_cut_off() -> None:
    """A real uvicorn on 127.0.0.1 with the protocol `pld serve` uses: a client that sends its
    head one byte at a time is disconnected after --header-timeout; a prompt one is answered."""
    port = free_port()
    opts = ServeOptions(header_timeout_s=1.0)
    config = serve_server.make_config(create_app(service()), host="127.0.0.1", port=port,
                                      options=opts)  # fmt: skip
    config.lifespan = "off"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            t0 = time.monotonic()
            closed = False
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.1)
                if time.monotonic() - t0 > 5:
                    break
            if not closed:
                s.settimeout(5)
                try:
                    closed = s.recv(100) == b""
                except OSError:
                    closed = True
            assert closed and time.monotonic() - t0 < 5
    finally:
        server.should_exit = True
        thread.join(30)


def test_an_active_file_changed_after_its_pull_is_not_served(tmp_path: Path) -> None:
    from test_fleet_security import hand_device

    from pld.errors import BundleError
    from pld.serve.sources import DeviceSource

    d = tmp_path / "dev"
    hand_device(d)
    source = DeviceSource(d)
    want = source.wanted()["stereoset"]
    assert want.sha256 == status_sha(d)
    active = d / "current" / "stereoset.pld.json"
    active.chmod(0o644)
    active.write_bytes(active.read_bytes().replace(b'"version": "0.1.0"', b'"version": "6.6.6"'))
    registry = Registry(source, ClassifierOptions())
    with pytest.raises(BundleError, match="changed after it was verified"):
        registry._open("stereoset", source.wanted()["stereoset"])  # before any model loads
    assert registry.models == {}


def status_sha(d: Path) -> str:
    from pld.fleet import status

    return status(d).tasks[0].sha256

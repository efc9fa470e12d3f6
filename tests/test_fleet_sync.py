"""The sync agent (`pld device sync`): its schedule, backoff after a failing store, its state in
D/sync.json and `pld device status`, and the systemd units in deploy/.

Real keys, real bundles, real stores: a directory, and a real HTTP server on 127.0.0.1 that is
first not there (connection refused, the failure a device really sees when its store is down)
and then serves. Clocks are passed in where the backoff's arithmetic is checked. Pulls through
the Python API skip priming (``prime=False``); the CLI's --once primes with the real model once.
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
from servers import free_port
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import ConfigError, DeadlineError, RejectedError, SignatureError, StoreError
from pld.fleet import status
from pld.fleet.keys import SigningKey
from pld.fleet.publisher import publish
from pld.fleet.sync import error_reason, next_delay, parse_interval, parse_jitter, run_agent
from pld.fleet.sync_state import read_sync_state
from pld.runtime import load_bundle, save_bundle, shipped_bundles

runner = CliRunner()
KEY = SigningKey.generate()
REPO = Path(__file__).resolve().parent.parent


def bundle_file(tmp: Path, version: str) -> Path:
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()["stereoset"]), version=version)
    return save_bundle(bundle, tmp / f"stereoset-{version}.pld.json")


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def serve_dir(www: Path, port: int) -> tuple[ThreadingHTTPServer, list[str]]:
    """A real HTTP server for ``www`` on 127.0.0.1:``port``; it logs each request line."""
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            seen.append(f"{self.command} {self.path}")

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Handler, directory=str(www))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def pub(tmp_path: Path) -> Iterator[Path]:
    www = tmp_path / "www"
    publish([bundle_file(tmp_path, "0.1.0")], www, channel="stable", keys=[KEY])
    yield www


# ---- the schedule ------------------------------------------------------------------------------


def test_intervals_jitter_and_backoff() -> None:
    assert [parse_interval(t) for t in ("90", "90s", "15m", "1h", "0.5m")] == [
        90,
        90,
        900,
        3600,
        30,
    ]
    for bad in ("0", "-5m", "15 minutes", "", "1w"):
        with pytest.raises(ConfigError, match="--every"):
            parse_interval(bad)
    assert parse_jitter("20%") == pytest.approx(0.2) and parse_jitter("0") == 0
    for bad in ("100%", "-1%", "lots"):
        with pytest.raises(ConfigError, match="--jitter"):
            parse_jitter(bad)
    assert next_delay(900, 0) == 900
    assert [next_delay(900, n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert [next_delay(5, n) for n in (1, 2, 3)] == [5, 10, 20]
    assert next_delay(5, 40, max_backoff_s=60) == 60
    assert next_delay(7200, 9) == 7200  # never capped below the interval itself
    rng = random.Random(3)
    spread = [next_delay(900, 0, jitter=0.2, rng=rng) for _ in range(500)]
    assert 720 <= min(spread) < 740 and 1060 < max(spread) <= 1080


def test_error_reasons() -> None:
    assert error_reason(RejectedError("the index ... expired at 2025")) == "expired"
    assert error_reason(RejectedError("older than version 3")) == "rejected"
    assert error_reason(SignatureError("x")) == "signature"
    assert error_reason(DeadlineError("x")) == "deadline"
    assert error_reason(StoreError("x")) == "store"
    assert error_reason(ValueError("x")) == "error"


# ---- the agent ---------------------------------------------------------------------------------


@pytest.mark.model
def test_backoff_after_a_failing_store_then_recovery_and_status(pub: Path, tmp_path: Path) -> None:
    d = tmp_path / "dev"
    shutil.copytree(pub, tmp_path / "seed")
    clock = Clock()
    run_agent(tmp_path / "seed", d, once=True, trusted_keys=[KEY.public], prime=False, clock=clock)
    clock.t += 1000
    port = free_port()
    url = f"http://127.0.0.1:{port}/"  # nothing listens there yet: connection refused
    opts = dict(every_s=900.0, once=True, clock=clock, prime=False, request_timeout=5.0)
    waits = []
    for n in range(1, 5):
        out = run_agent(url, d, **opts)  # type: ignore[arg-type]
        assert out is not None and not out.skipped and out.error is not None
        st = out.state
        assert st.consecutive_failures == n and st.last_error and st.last_error.reason == "store"
        assert "unreachable" in st.last_error.message  # not "does not exist"
        assert st.last_success is not None and st.last_success < clock.t
        waits.append(st.next_attempt - clock.t)  # type: ignore[operator]
        # the next timer tick comes before the backoff ends: no attempt, nothing changes
        clock.t += waits[-1] / 2
        skipped = run_agent(url, d, **opts)  # type: ignore[arg-type]
        assert skipped is not None and skipped.skipped and read_sync_state(d) == st
        clock.t += waits[-1]
    assert waits == [60, 120, 240, 480]

    out = runner.invoke(app, ["device", "status", "--device-dir", str(d)])
    assert out.exit_code == 0, out.output
    assert "last attempt failed (store, 4 in a row)" in out.output
    assert f"sync from {url}" in out.output and "device id: " in out.output
    shown = msgspec.json.decode(out.output.splitlines()[-1])
    assert shown["sync"]["consecutive_failures"] == 4 and len(shown["device_id"]) == 32

    server, seen = serve_dir(pub, port)  # the store comes back
    try:
        publish([bundle_file(tmp_path, "0.2.0")], pub, channel="stable", keys=[KEY])
        out = run_agent(url, d, **opts)  # type: ignore[arg-type]
    finally:
        server.shutdown()
        server.server_close()
    assert out is not None and out.error is None and out.result is not None
    assert [c.new_version for c in out.result.changed] == ["0.2.0"]
    st = out.state
    assert (st.consecutive_failures, st.last_error, st.index_version) == (0, None, 2)
    assert st.last_success == st.last_check == st.last_change == clock.t
    assert st.next_attempt == clock.t + 900
    assert status(d).tasks[0].version == "0.2.0" and status(d).sync == st
    # one GET per file, no HEAD: keys.json (absent), the index, the new bundle
    new_file = f"GET /bundles/{out.result.changed[0].new_sha256}.pld.json"
    assert sorted(seen) == sorted(["GET /keys.json", "GET /channels/stable/index.json", new_file])


@pytest.mark.model
def test_the_loop_follows_new_publications_until_stopped(pub: Path, tmp_path: Path) -> None:
    d, stop, attempts = tmp_path / "dev", threading.Event(), []
    agent = threading.Thread(
        target=run_agent,
        args=(pub, d),
        kwargs=dict(
            every_s=0.2,
            jitter=0.2,
            stop=stop,
            on_attempt=attempts.append,
            trusted_keys=[KEY.public],
            prime=False,
        ),  # fmt: skip
    )
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while not (d / "sync.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        publish([bundle_file(tmp_path, "0.2.0")], pub, channel="stable", keys=[KEY])
        while time.monotonic() < deadline:
            if status(d).tasks and status(d).tasks[0].version == "0.2.0":
                break
            time.sleep(0.05)
        assert status(d).tasks[0].version == "0.2.0"
    finally:
        stop.set()
        agent.join(10)
    assert not agent.is_alive()
    assert len(attempts) >= 2 and all(a.error is None for a in attempts)


@pytest.mark.model
def test_sync_once_cli_primes_and_records_state(pub: Path, tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_bytes(KEY.public.pem())
    d = tmp_path / "dev"
    args = ["device", "sync", "--once", "--from", str(pub), "--device-dir", str(d), "--nice", "0"]
    out = runner.invoke(app, [*args, "--trusted-key", str(tmp_path / "k.pub"), "--every", "5m"])
    assert out.exit_code == 0, out.output
    outcome = msgspec.json.decode(out.output.splitlines()[-1])
    assert outcome["result"]["changed"][0]["new_version"] == "0.1.0"
    assert outcome["result"]["timings"]["prime_ms"] > 0  # the CLI always primes
    st = read_sync_state(d)
    assert st is not None and st.every_s == 300 and st.consecutive_failures == 0
    assert st.last_check is not None and 240 <= st.next_attempt - st.last_check <= 360  # type: ignore[operator]
    (pub / "channels/stable/index.json").write_bytes(b"{}")  # a tampered index: refused
    out = runner.invoke(app, args)
    assert out.exit_code == 1
    st = read_sync_state(d)
    assert st is not None and st.last_error is not None and st.last_error.reason == "signature"


# ---- systemd -----------------------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    pld = Path(shutil.which("pld") or REPO / ".venv/bin/pld")
    for name in ("pld-sync.service", "pld-sync.timer"):
        text = (REPO / "deploy" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/pld", str(pld)))
    assert "pld device sync --once" in (tmp_path / "pld-sync.service").read_text()
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in ("pld-sync.service", "pld-sync.timer"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # unknown keys and sections are only warnings: none may appear
    assert "Unknown" not in proc.stderr and "ignoring" not in proc.stderr, proc.stderr

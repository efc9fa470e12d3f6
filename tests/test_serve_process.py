"""What only the real `pld serve` process shows, on 127.0.0.1, started by the bench's server
harness: bad clients on raw sockets, signals and drain, micro-batching across requests, hot swaps
from a real device directory with real keys (the app in-process: ``test_serve.py``). Servers
are started once per module and shared; each test says which state it leaves.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from test_serve import READY_TIMEOUT, TEXT, TEXTS, metric

from pld.bench import serve_harness
from pld.runtime import Instruction, load_bundle, render_system_prompt, save_bundle, shipped_bundles

pytestmark = pytest.mark.model


class Serve(serve_harness.Server):
    """The bench harness's `pld serve ARGS` (a free port, started until /readyz answers 200),
    with a client and what these tests read: its stderr (its log) and stdout (the summary it
    prints on exit)."""

    def __init__(self, *args: str, log_dir: Path) -> None:
        super().__init__(*args, log_dir=log_dir, ready_timeout=READY_TIMEOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stderr(self) -> str:
        return self.log.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return self.client.post("/v1/classify", json=body)

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.client, name, **labels)

    def stop(self) -> int:
        try:
            return super().stop()
        finally:
            self.client.close()


def raw(port: int, data: bytes, *, read: bool = True, timeout: float = 60) -> bytes:
    """Send ``data`` on a fresh connection; return what the server answers (until it closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # it answered early and closed: read what it said
        if not read:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and _complete(out):
                break
        return out


def _complete(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head, re.I)
    return m is not None and len(body) >= int(m[1])


def post_head(length: int | None, extra: str = "") -> bytes:
    size = (
        f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    )
    return (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{size}{extra}\r\n"
    ).encode()


class Hammer:
    """A client classifying in a loop on its own thread; records every answer."""

    def __init__(self, server: Serve, body: dict[str, Any]) -> None:
        self.server, self.body = server, body
        self.results: list[tuple[float, float, int, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=120) as client:
            while not self.stop_flag.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post("/v1/classify", json=self.body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                body = r.json()
                self.results.append((t0, time.monotonic(), r.status_code, body))
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code} {body}")

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(180)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One task, micro-batching on; the drain test stops it, so it runs last."""
    srv = Serve(
        "--bundle", "stereoset", "--max-batch", "4", "--batch-window-ms", "50",
        "--max-body", "65536", log_dir=tmp_path_factory.mktemp("serve"),
    )  # fmt: skip
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.skipif(os.environ.get("PLD_SERVE_BATCH_TEST") == "0", reason="disabled")
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_micro_batches_across_requests(server: Serve) -> None:
    out: list[httpx.Response] = []

    def send(text: str) -> None:
        out.append(httpx.post(f"{server.url}/v1/classify", json={"text": text}, timeout=300))

    threads = [threading.Thread(target=send, args=(t,)) for t in TEXTS + TEXTS[:1]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in out] == [200] * 4
    count = server.metric("pld_serve_batch_size_count")
    ones = server.metric("pld_serve_batch_size_bucket", le="1.0")
    assert count >= 1 and ones < count  # at least one engine call served several requests


@pytest.mark.slow
def test_bad_clients_do_not_disturb_others(server: Serve) -> None:
    port = server.port
    before = server.metric("pld_serve_requests_total", outcome="disconnected")
    with Hammer(server, {"task": "stereoset", "text": TEXT}) as good:
        # a 10 MB body declared up front: refused before it is read
        r = raw(port, post_head(10 << 20) + b"x" * 65536)
        assert b" 413 " in r.split(b"\r\n", 1)[0] and b"--max-body" in r
        # the same without a length (chunked): refused once the limit is passed while streaming
        chunk = b"x" * 8192
        r = raw(port, post_head(None) + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 20)
        assert b" 413 " in r.split(b"\r\n", 1)[0], r[:200]
        # a client that disconnects in the middle of its body
        raw(port, post_head(1000) + b'{"task": "stereoset", "text": "', read=False)
        # a client that sends a big request and leaves before the answer: its work is dropped
        body = msgspec.json.encode({"task": "stereoset", "inputs": TEXTS * 7})
        raw(port, post_head(len(body)) + body, read=False)
        # a slow client: the body byte by byte over about two seconds
        body = msgspec.json.encode({"task": "stereoset", "text": TEXT})
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(post_head(len(body)))
            for i in range(len(body)):
                s.sendall(body[i : i + 1])
                time.sleep(2 / len(body))
            resp = b""
            while not _complete(resp):
                resp += s.recv(65536)
        assert b" 200 " in resp.split(b"\r\n", 1)[0], resp[:300]
        time.sleep(1)
    assert not good.errors, good.errors[:3]
    assert len(good.results) >= 3
    assert server.metric("pld_serve_requests_total", outcome="disconnected") >= before + 2
    for _ in range(100):  # the abandoned request's inputs leave the queue
        if server.metric("pld_serve_queue_inputs") == 0:
            break
        time.sleep(0.1)
    assert server.metric("pld_serve_queue_inputs") == 0


@pytest.mark.timeout(300)
def test_sigterm_drains_admitted_requests_and_exits_0(server: Serve) -> None:
    out: list[httpx.Response] = []

    def send() -> None:
        out.append(
            httpx.post(
                f"{server.url}/v1/classify",
                json={"task": "stereoset", "inputs": TEXTS * 2},
                timeout=300,
            )
        )

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(200):
        if server.metric("pld_serve_queue_inputs") >= 18:
            break
        time.sleep(0.02)
    rc = server.stop()
    for t in threads:
        t.join()
    assert rc == 0, server.stderr()
    assert [r.status_code for r in out] == [200, 200, 200]
    assert all(len(r.json()["predictions"]) == 6 for r in out)
    assert msgspec.json.decode(server.stdout().strip().splitlines()[-1])["queue_left"] == 0
    assert "draining" in server.stderr()


# ---- a device directory: hot swaps, a refused bundle, the second SIGTERM ----------------------


def versioned(tmp: Path, version: str, rules: list[str] | None = None) -> Path:
    """The shipped stereoset bundle saved as another version (with these rules, if given)."""
    b = load_bundle(shipped_bundles()["stereoset"])
    b = msgspec.structs.replace(b, version=version)
    if rules is not None:
        instructions = [Instruction(id=f"r{i}", text=t) for i, t in enumerate(rules)]
        b = msgspec.structs.replace(
            b, instructions=instructions, system_prompt=render_system_prompt(b.task, instructions)
        )
    return save_bundle(b, tmp / f"stereoset-{version}" / "stereoset.pld.json")


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Serve, Path, Path, Any]]:
    from pld.fleet import SigningKey, publish, pull

    root = tmp_path_factory.mktemp("device")
    key = SigningKey.generate()
    publish([versioned(root, "0.1.0")], root / "pub", channel="stable", keys=[key])
    pull(root / "pub", root / "dev", trusted_keys=[key.public])
    srv = Serve("--device-dir", str(root / "dev"), "--poll", "0.2", log_dir=root)
    try:
        yield srv, root / "pub", root / "dev", key
    finally:
        srv.stop()


def active_version(srv: Serve) -> str:
    return str(srv.client.get("/v1/tasks").json()["tasks"][0]["version"])


def wait_version(srv: Serve, version: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if active_version(srv) == version:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"the server did not switch to {version}: {srv.stderr()}")


def answered_after(a: Hammer, b: Hammer, t: float, version: str, timeout: float = 300) -> None:
    """Wait until both clients got an answer from ``version`` to a request sent after ``t``."""
    deadline = time.monotonic() + timeout
    while not all(any(r[0] > t and r[3]["bundle"]["version"] == version for r in list(h.results))
                  for h in (a, b)):  # fmt: skip
        assert time.monotonic() < deadline and not a.errors and not b.errors, (a.errors, b.errors)
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hot_swap_under_load_pull_and_rollback(
    device: tuple[Serve, Path, Path, Any],
) -> None:
    from pld.fleet import publish, pull, rollback

    srv, pub, dev, key = device
    r = srv.post({"text": TEXT})  # one task: it may be omitted
    assert r.status_code == 200 and r.json()["bundle"]["version"] == "0.1.0"
    publish([versioned(pub.parent, "0.2.0")], pub, channel="stable", keys=[key])
    with (
        Hammer(srv, {"inputs": TEXTS[:2]}) as a,
        Hammer(srv, {"task": "stereoset", "text": TEXT}) as b,
    ):
        answered_after(a, b, time.monotonic(), "0.1.0")
        t_pull = time.monotonic()
        pull(pub, dev)
        t_v2 = wait_version(srv, "0.2.0")
        answered_after(a, b, t_v2, "0.2.0")
        t_rollback = time.monotonic()
        rollback(dev)
        t_v1 = wait_version(srv, "0.1.0")
        answered_after(a, b, t_v1, "0.1.0")
    results = a.results + b.results
    assert not a.errors and not b.errors, (a.errors + b.errors)[:3]
    for sent, got, status, body in results:
        version = body["bundle"]["version"]
        assert status == 200
        if got < t_pull or sent > t_v1:
            assert version == "0.1.0", (sent, got, body)
        elif t_v2 < sent and got < t_rollback:
            assert version == "0.2.0", (sent, got, body)
        else:
            assert version in ("0.1.0", "0.2.0")
    assert sum(body["bundle"]["version"] == "0.2.0" for *_, body in results) >= 2
    assert srv.metric("pld_serve_swaps_total", outcome="ok", task="stereoset") == 2
    log = srv.stderr()
    assert "0.1.0 -> 0.2.0" in log and "0.2.0 -> 0.1.0" in log


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_bundle_that_cannot_be_primed_is_refused_and_the_old_one_serves(
    device: tuple[Serve, Path, Path, Any],
) -> None:
    """A real fault: a rule list longer than the model's whole context (Gemma-3: 32,768 tokens)
    fails in priming. `pld device pull` would refuse it (it primes first), so the generation is
    activated through the fleet's DeviceDir directly, as a damaged pull or a hand edit could."""
    from pld.fleet import DeviceDir

    srv, pub, dev, key = device
    before = active_version(srv)
    rules = [
        f"Rule {i}: " + "consider the context of the sentence carefully " * 60 for i in range(120)
    ]
    path = versioned(pub.parent, "9.9.9", rules)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    d = DeviceDir(dev)
    d.objects.mkdir(exist_ok=True)
    d.object_path(sha).write_bytes(data)
    manifest = d.manifest()
    assert manifest is not None
    entry = msgspec.structs.replace(
        manifest.tasks["stereoset"], version="9.9.9", sha256=sha, length=len(data)
    )
    with d.lock("test"):
        d.activate(
            msgspec.structs.replace(
                manifest, generation=d.next_generation(), tasks={"stereoset": entry}
            )
        )
    deadline = time.monotonic() + 300
    while srv.metric("pld_serve_swaps_total", outcome="failed", task="stereoset") < 1:
        assert time.monotonic() < deadline, srv.stderr()
        r = srv.post({"text": TEXT})
        assert r.status_code == 200 and r.json()["bundle"]["version"] == before
        time.sleep(0.2)
    assert active_version(srv) == before
    assert srv.post({"text": TEXT}).json()["bundle"]["version"] == before
    assert "9.9.9" in srv.stderr() and "refused" in srv.stderr()


@pytest.mark.timeout(300)
def test_a_second_sigterm_exits_at_once(device: tuple[Serve, Path, Path, Any]) -> None:
    srv = device[0]
    failed: list[BaseException] = []

    def send() -> None:
        try:
            httpx.post(f"{srv.url}/v1/classify", json={"inputs": TEXTS * 7}, timeout=300)
        except httpx.HTTPError as exc:
            failed.append(exc)

    t = threading.Thread(target=send)
    t.start()
    for _ in range(200):
        if srv.metric("pld_serve_queue_inputs") >= 12:
            break
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert srv.proc.poll() is None  # draining the 21 inputs takes seconds
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(30)
    assert time.monotonic() - t0 < 5
    assert rc == 128 + signal.SIGTERM, srv.stderr()
    t.join()
    assert failed  # the request it dropped saw the connection close
    assert "second SIGTERM" in srv.stderr()

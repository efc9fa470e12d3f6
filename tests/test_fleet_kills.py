"""A device never ends up without a working classifier: a real `pld device pull` process is
SIGKILLed mid-download (a deliberately slow HTTP server on 127.0.0.1), after verification,
during priming and just before the switch; the disk fills up during staging; two pulls start
at once. After each: `pld device status` shows the old version, `pld classify --device-dir`
answers, and the next pull completes.
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
from conftest import pld_process
from test_fleet_device import TEXT, A, Pub, bundle_bytes

from pld.fleet import pull

pytestmark = [pytest.mark.model, pytest.mark.slow]


def run_pld(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = pld_process(*args, env={**os.environ, **(env or {})})
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def wait_for(proc: subprocess.Popen[str], needle: str, timeout: float = 120) -> None:
    """Read the process's stderr until a line contains ``needle``."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.1))) is not None:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"pull ended before {needle!r}: {''.join(seen)}")


def active_version(d: Path) -> str:
    rc, out, err = run_pld("device", "status", "--device-dir", str(d))
    assert rc == 0, err
    (task,) = msgspec.json.decode(out.splitlines()[-1])["tasks"]
    return str(task["version"])


def assert_still_serving_then_updates(d: Path, pub: Path) -> None:
    """Old version active and answering; the next pull completes and cleans up."""
    assert active_version(d) == "0.1.0"
    rc, out, err = run_pld("classify", "--device-dir", str(d), TEXT)
    assert rc == 0, err
    assert msgspec.json.decode(out.splitlines()[-1])["label"]
    rc, out, err = run_pld("device", "pull", "--from", str(pub), "--device-dir", str(d))
    assert rc == 0, err
    assert "stereoset: 0.1.0 -> 0.2.0" in out
    assert active_version(d) == "0.2.0"
    assert not (d / "staging").exists() and not (d / "current.tmp").exists()
    assert sorted(p.name for p in (d / "generations").iterdir()) == ["1", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A device running stereoset 0.1.0, and a publication that now offers 0.2.0."""
    root = tmp_path_factory.mktemp("kills")
    pub = Pub(root / "pub")
    pub.index({"stereoset": bundle_bytes()}, 1)
    pull(pub.url, root / "dev", trusted_keys=[A.public])
    pub.index({"stereoset": bundle_bytes(version="0.2.0")}, 2)
    return root / "pub", root / "dev"


@pytest.fixture
def dev(base: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(base[0], tmp_path / "pub")
    shutil.copytree(base[1], tmp_path / "dev", symlinks=True)
    return tmp_path / "pub", tmp_path / "dev"


@pytest.fixture
def slow_server(dev: tuple[Path, Path]) -> Iterator[tuple[str, threading.Event]]:
    """Serves the publication; a bundle's first 100 bytes come at once, the rest never (until
    the test ends): a download that is still running when the test kills the pull."""
    sent, release = threading.Event(), threading.Event()
    www = dev[0]

    class Slow(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.startswith("/bundles/"):
                return super().do_GET()
            data = (www / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:100])
            self.wfile.flush()
            sent.set()
            release.wait(60)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=str(www)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", sent
    release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("point", ["download", "verified", "priming", "activate"])
def test_a_pull_killed_at_any_point_leaves_the_old_bundle_serving(
    dev: tuple[Path, Path], point: str, request: pytest.FixtureRequest
) -> None:
    pub, d = dev
    if point == "download":
        url, sent = request.getfixturevalue("slow_server")
        proc = pld_process("device", "pull", "--from", url, "--device-dir", str(d))
        assert sent.wait(60), "the pull never asked for the bundle"
        deadline = time.monotonic() + 30  # wait until the first bytes reach staging
        while not [p for p in d.glob("staging/*/*.part") if p.stat().st_size >= 64]:
            assert time.monotonic() < deadline and proc.poll() is None, "no partial download"
            time.sleep(0.05)
    else:
        env = {**os.environ, "PLD_PULL_PAUSE": point}
        proc = pld_process("device", "pull", "--from", str(pub), "--device-dir", str(d), env=env)
        wait_for(proc, f"pause: {point}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    if point == "activate":  # the new generation was complete, the switch had not happened
        assert os.readlink(d / "current") == "generations/1"
        assert (d / "generations" / "2" / "manifest.json").exists()
        assert os.readlink(d / "current.tmp") == "generations/2"
    assert_still_serving_then_updates(d, pub)


def test_two_pulls_at_once_one_is_refused(dev: tuple[Path, Path]) -> None:
    pub, d = dev
    env = {**os.environ, "PLD_PULL_PAUSE": "verified"}
    first = pld_process("device", "pull", "--from", str(pub), "--device-dir", str(d), env=env)
    try:
        wait_for(first, "pause: verified")
        rc, _, err = run_pld("device", "pull", "--from", str(pub), "--device-dir", str(d))
        assert rc != 0
        assert f"another pull is running on {d} (pid {first.pid})" in err
        assert err.strip().splitlines() == [err.strip()]  # one line
    finally:
        first.kill()
        first.wait(30)
    assert_still_serving_then_updates(d, pub)


def test_disk_full_during_staging(dev: tuple[Path, Path], tmp_path: Path) -> None:
    pub, d = dev
    small = tmp_path / "small"
    small.mkdir()
    # a real full disk: the device directory on an 8 MiB tmpfs (the prefix state takes ~3 MiB)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], capture_output=True
        ).returncode
        == 0
    )
    # without root (or mount) the fault is injected at the staging write instead
    env = {} if mounted else {"PLD_PULL_FAIL_WRITE": "ENOSPC"}
    try:
        shutil.copytree(d, small / "dev", symlinks=True)
        big = bundle_bytes(version="0.2.0", provenance={"padding": "x" * (12 << 20)})
        Pub(pub).index({"stereoset": big}, 2)
        rc, _, err = run_pld("device", "pull", "--from", str(pub), "--device-dir", str(small / "dev"), env=env)  # fmt: skip
        assert rc != 0
        assert "No space left on device" in err and "free space on the device" in err, err
        assert err.strip().splitlines()[-1].startswith("error: cannot write ")
        assert active_version(small / "dev") == "0.1.0"
        assert not (small / "dev" / "staging").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)

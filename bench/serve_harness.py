"""The harness of the server's benchmarks (``load_serve.py``, ``serve_costs.py``): a device
directory that pulled a signed publication of the shipped tasks, `pld serve` started on a free
port (its output kept, and shown when it fails to start), and client threads sending a
reproducible stream of requests. Measures nothing itself; runs `pld` as a user types it, on
127.0.0.1 only.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated

import httpx
import msgspec
import typer

from pld.proc import free_port, peak_rss_mb
from pld.runtime import load_bundle, save_bundle, shipped_bundles

from .inputs import default_texts

__all__ = [
    "BATCHES",
    "BATCHES_TEXT",
    "TASKS",
    "VERSIONS",
    "Answer",
    "BatchesOpt",
    "Clients",
    "Device",
    "Request",
    "Server",
    "ServerError",
    "ServerOutputOpt",
    "ThreadsOpt",
    "log_stderr",
    "parse_sizes",
    "pld_path",
    "request_stream",
]

TASKS = ("stereoset", "contractnli", "logiqa")
BATCHES = (1, 1, 1, 1, 2, 4, 8)  # inputs per request: mostly single, some batches
BATCHES_TEXT = ",".join(map(str, BATCHES))
VERSIONS = ("0.1.0", "0.2.0")  # published first; pulled midway, then rolled back


def log_stderr(msg: str) -> None:
    """Progress for people, on stderr (stdout carries the table and the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def pld_path() -> str:
    """The `pld` script of this Python environment."""
    return str(Path(sys.executable).parent / "pld")


def parse_sizes(value: str) -> tuple[int, ...]:
    """``--batches 1,1,2,4``: the inputs per request to draw from."""
    try:
        sizes = tuple(int(x) for x in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or max(sizes) > 64:
        raise typer.BadParameter(f"{value!r}: give comma-separated input counts from 1 to 64")
    return sizes


BatchesOpt = Annotated[
    str, typer.Option(help="Inputs per request, drawn uniformly (repeat a size to weight it).")
]
ThreadsOpt = Annotated[int, typer.Option(help="CPU threads, server and in-process (0: all).")]
ServerOutputOpt = Annotated[
    bool,
    typer.Option(
        "--server-output",
        help="Stream `pld serve`'s stdout and stderr to this terminal's stderr as they come "
        "(without it, they are shown only if the server fails: its last 40 lines).",
    ),
]

# ---- a device directory and a server ----------------------------------------------------------


class Device:
    """A publication signed with a fresh key and a device directory that pulled it."""

    def __init__(self, root: Path, *, nice: int = 19) -> None:
        from pld.fleet import generate_keys

        self.root, self.pub, self.dev, self.nice = root, root / "pub", root / "dev", nice
        self.key_path, self.pub_key, _ = generate_keys(root / "keys")

    def publish(self, version: str) -> None:
        from pld.fleet import SigningKey, publish

        files = []
        for task in TASKS:
            b = msgspec.structs.replace(load_bundle(shipped_bundles()[task]), version=version)
            files.append(save_bundle(b, self.root / version / f"{task}.pld.json"))
        publish(files, self.pub, channel="stable", keys=[SigningKey.load(self.key_path)])

    def _run(self, *args: str) -> float:
        t0 = time.perf_counter()
        out = subprocess.run([pld_path(), "device", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"pld device {args[0]} failed ({out.returncode}): {out.stderr}")
        return time.perf_counter() - t0

    def pull(self) -> float:
        """`pld device pull` as a user runs it (its default: nice 19); seconds it took."""
        return self._run(
            "pull", "--from", str(self.pub), "--device-dir", str(self.dev),
            "--trusted-key", str(self.pub_key), "--nice", str(self.nice),
        )  # fmt: skip

    def rollback(self) -> float:
        return self._run("rollback", "--device-dir", str(self.dev))


class ServerError(SystemExit):
    """`pld serve` exited or was not ready in time; the message ends with its last output,
    ``log`` is where all of its stderr is."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


TAIL_LINES = 40


class Server:
    """`pld serve ARGS` on a free port; ``ready_s``: process start to /readyz 200.

    Its stderr (its log, and why it failed) is kept in ``log``: the path given, else
    ``serve-PORT.log`` in ``log_dir``, else a temporary file that is left for reading; its
    stdout (the summary it prints on exit) beside it in ``out`` (suffix ``.out``). With
    ``echo``, both are also copied to this process's stderr as they come. If it exits before
    /readyz answers 200, or is not ready in ``ready_timeout`` s, ``ServerError`` shows the last
    40 lines of its output.
    """

    def __init__(
        self,
        *args: str,
        log: Path | None = None,
        log_dir: Path | None = None,
        echo: bool = False,
        ready_timeout: float = 1800.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if log is None and log_dir is not None:
            log = log_dir / f"serve-{self.port}.log"
        elif log is None:
            fd, name = tempfile.mkstemp(prefix=f"pld-serve-{self.port}-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = log
        self.out = self.log.with_suffix(".out")
        self._copiers: list[threading.Thread] = []
        cmd = [pld_path(), "serve", "--port", str(self.port), *args]
        t0 = time.perf_counter()
        if echo:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for pipe, path in ((self.proc.stdout, self.out), (self.proc.stderr, self.log)):
                assert pipe is not None
                copier = threading.Thread(target=_copy, args=(pipe, path), daemon=True)
                copier.start()
                self._copiers.append(copier)
        else:
            with self.out.open("wb") as out, self.log.open("wb") as err:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            self._wait_ready(t0 + ready_timeout, ready_timeout)
        except BaseException:
            self._kill()
            raise
        self.ready_s = time.perf_counter() - t0

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        while True:
            if (rc := self.proc.poll()) is not None:
                raise ServerError(
                    f"pld serve exited ({rc}) before it was ready{self.tail()}", self.log
                )
            if time.perf_counter() > deadline:
                self._kill()
                msg = f"pld serve was not ready after {timeout:g} s{self.tail()}"
                raise ServerError(msg, self.log)
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of its stderr (and of its stdout, where it wrote any), each
        under a line naming the file; for error messages."""
        if self.proc.poll() is not None:
            for copier in self._copiers:  # the pipes close with the process: take it all
                copier.join(5)
        text = ""
        for name, path in (("stderr", self.log), ("stdout", self.out)):
            try:
                kept = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                kept = [f"(unreadable: {exc})"]
            if kept or name == "stderr":
                body = "\n".join(kept) if kept else "(empty)"
                text += f"\n--- pld serve's {name}, last {lines} lines ({path}):\n{body}"
        return text

    def versions(self) -> dict[str, str]:
        tasks = httpx.get(f"{self.url}/v1/tasks", timeout=30).json()["tasks"]
        return {t["task"]: t["version"] for t in tasks}

    def wait_versions(self, version: str, timeout: float = 900) -> float:
        """When every task's active version is ``version`` (as /v1/tasks shows it)."""
        deadline = time.perf_counter() + timeout
        while set(self.versions().values()) != {version}:
            if time.perf_counter() > deadline:
                raise ServerError(f"the server did not switch to {version}{self.tail()}", self.log)
            time.sleep(0.02)
        return time.perf_counter()

    def batch_stats(self) -> tuple[float, float]:
        """(inputs, engine calls) so far, from /metrics' batch-size histogram."""
        total = {"sum": 0.0, "count": 0.0}
        for line in httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines():
            for key in total:
                if line.startswith(f"pld_serve_batch_size_{key} "):
                    total[key] = float(line.split()[1])
        return total["sum"], total["count"]

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.proc.pid) or 0.0

    def stop(self) -> int:
        """SIGTERM (drain, exit); killed if it has not exited after 300 s. Its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(300)
        except subprocess.TimeoutExpired:
            rc = self._kill()
        for copier in self._copiers:
            copier.join(5)
        return rc

    def _kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def _copy(pipe: IO[bytes], path: Path) -> None:
    """A child's output, line by line, into ``path`` and onto this process's stderr."""
    with pipe, path.open("wb") as kept:
        for line in iter(pipe.readline, b""):
            kept.write(line)
            kept.flush()
            sys.stderr.write(line.decode(errors="replace"))
            sys.stderr.flush()


# ---- clients ------------------------------------------------------------------------------------

Request = tuple[str, list[str]]  # (task, inputs)


def request_stream(
    tasks: Sequence[str], batches: Sequence[int], seed: int = 0
) -> Callable[[int], Request]:
    """Request ``i`` of an endless, reproducible stream: a random task and inputs."""
    texts = default_texts()

    def nth(i: int) -> Request:
        rng = random.Random(f"{seed}:{i}")
        return rng.choice(tasks), rng.sample(texts, rng.choice(batches))

    return nth


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it: sent and answered when, and which version answered."""

    i: int
    sent: float
    got: float
    status: int  # 0: no HTTP answer
    version: str
    n: int  # inputs
    task: str = ""
    error: str = ""


class Clients:
    """K client threads sending requests ``nth(first)``, ``nth(first + 1)``, ... until ``count``
    are sent (None: until ``stop``); every answer is kept."""

    def __init__(
        self,
        url: str,
        k: int,
        nth: Callable[[int], Request],
        *,
        first: int = 0,
        count: int | None = None,
    ) -> None:
        self.url, self.nth = url, nth
        self.next, self.end = first, None if count is None else first + count
        self.answers: list[Answer] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(k)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _take(self) -> int | None:
        with self.cond:
            if self.stopping or (self.end is not None and self.next >= self.end):
                return None
            self.next += 1
            return self.next - 1

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as client:
            while (i := self._take()) is not None:
                task, inputs = self.nth(i)
                status, version, error = 0, "", ""
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/classify", json={"task": task, "inputs": inputs})
                    status = r.status_code
                    if status == 200:
                        version = str(r.json()["bundle"]["version"])
                    else:
                        error = f"{status}: {r.text[:300]}"
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                answer = Answer(
                    i, t0, time.perf_counter(), status, version, len(inputs), task, error
                )
                with self.cond:
                    self.answers.append(answer)
                    self.cond.notify_all()

    def wait_answered(self, since: float, n: int) -> None:
        """Until ``n`` requests sent after ``since`` (perf_counter) have their answer."""
        with self.cond:
            while not self.cond.wait_for(
                lambda: sum(a.sent > since for a in self.answers) >= n, timeout=1.0
            ):
                if not any(t.is_alive() for t in self.threads):
                    raise SystemExit(f"the clients stopped before {n} answers came")

    def join(self) -> list[Answer]:
        """Wait for every client to finish its last request; the answers, in answer order."""
        for t in self.threads:
            t.join()
        return self.answers

    def stop(self) -> list[Answer]:
        """Send nothing more; wait for the requests in flight."""
        with self.cond:
            self.stopping = True
        return self.join()

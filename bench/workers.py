"""The driver's end of `pld bench compare`'s worker processes: ``Worker`` starts one
(``python -m pld.bench.contenders serve``) and exchanges JSON lines with it; ``cold_answer``
times a fresh one from its start to its first answer.

Knows the worker protocol and subprocesses; nothing of what the contenders load.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import msgspec

from pld.errors import PldError
from pld.proc import peak_rss_mb

from .worker_protocol import ChatInfo, PldInfo, Reply, Request, SuffixTokens, WorkerSpec

__all__ = ["Worker", "cold_answer"]

T = TypeVar("T")
WORKER = [sys.executable, "-m", "pld.bench.contenders"]


class Worker:
    """One in-process contender in its own child process (``contenders.serve``)."""

    def __init__(self, spec: WorkerSpec, log_file: Path) -> None:
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*WORKER, "serve", msgspec.json.encode(spec).decode()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        kind: type[PldInfo | ChatInfo] = PldInfo if spec.kind.startswith("pld") else ChatInfo
        self.info: PldInfo | ChatInfo = self._read(kind)

    def _read(self, kind: type[T]) -> T:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise PldError(f"a benchmark worker died ({self.log_file}):\n{tail}")
        return msgspec.json.decode(line, type=kind)

    def _send(self, request: Request) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(msgspec.json.encode(request).decode() + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: _read says why

    def answer(self, texts: list[str]) -> Reply:
        """Send the texts, wait for the reply."""
        self._send(Request(op="answer", texts=texts))
        return self._read(Reply)

    def suffix_tokens(self, texts: list[str]) -> list[int]:
        """Each text's request tokens (a pld worker only)."""
        self._send(Request(op="suffix_tokens", texts=texts))
        return self._read(SuffixTokens).suffix_tokens

    def peak_rss_mb(self) -> float | None:
        """The worker process's peak resident memory."""
        return peak_rss_mb(self.proc.pid)

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not within a minute."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self._send(Request(op="quit"))
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def cold_answer(spec: WorkerSpec, text: str) -> tuple[float, Reply]:
    """A fresh worker process's first answer to ``text`` and the ms from its start to it;
    raises ``PldError`` with the worker's last error line when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*WORKER, "cold", msgspec.json.encode(spec).decode()],
        input=text,
        capture_output=True,
        text=True,
    )
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0 or not proc.stdout.strip():
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise PldError(last[0])
    return ms, msgspec.json.decode(proc.stdout.strip().splitlines()[-1], type=Reply)

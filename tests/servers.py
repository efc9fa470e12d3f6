"""Servers the tests talk to, all on 127.0.0.1.

``ScriptedServer`` replays queued replies: it provokes faults a real server will not produce on
demand (429 with Retry-After, 5xx, slow or malformed replies); ``teacher_reply`` makes it a
cooperative teacher for the distiller's prompts. ``LlamaServer`` is the real
thing: llama-cpp-python's OpenAI-compatible server running a GGUF, stoppable and restartable on
the same port so that tests can kill it mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pld.proc import free_port


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def chat_body(text: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class ScriptedServer:
    """Replays queued replies in order (HTTP 500 when the queue is empty) and logs requests."""

    def __init__(self) -> None:
        self.queue: deque[Reply] = deque()
        self.log: list[dict[str, Any]] = []
        self.responder: Callable[[Any], Reply] | None = None  # replaces the queue when set
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                script.log.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                if script.responder is not None:
                    reply = script.responder(body)
                else:
                    reply = (
                        script.queue.popleft() if script.queue else Reply(500, {"error": "empty"})
                    )
                time.sleep(reply.delay)
                payload = (
                    reply.body.encode()
                    if isinstance(reply.body, str)
                    else json.dumps(reply.body).encode()
                )
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up on a slow reply

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def push(self, *replies: Reply) -> None:
        self.queue.extend(replies)


STEREOSET_AXES = {"anti-stereotype": 1, "stereotype": 0, "unrelated": 2}


def _label_of(text: str, axes: dict[str, int]) -> str:
    return next(name for name in axes if name in text)


def teacher_reply(body: dict[str, Any], axes: dict[str, int] = STEREOSET_AXES) -> Reply:
    """What a cooperative teacher says to each of the distiller's prompts.

    Embeddings point along one axis per label (``axes``) the rule leads to, so the rules of a
    label cluster together; extraction, consolidation and revision get valid JSON replies.
    """
    if "input" in body:  # embeddings: a direction per label the rule leads to
        rows = []
        for i, text in enumerate(body["input"]):
            v = [0.0] * 6
            v[axes[_label_of(text, axes)]] = 1.0
            v[3 + int(hashlib.sha1(text.encode()).hexdigest(), 16) % 3] = 0.05
            rows.append({"index": i, "embedding": v})
        return Reply(200, {"data": rows, "usage": {"prompt_tokens": 5 * len(rows)}})
    text = body["messages"][0]["content"]
    reply: dict[str, Any]
    if "Correct label:" in text and "numbered rules" not in text:
        match = re.search(r"Correct label: (\S+)", text)
        assert match is not None
        label = match[1]
        reply = {
            "rationale": f"The sentence fits {label}.",
            # a condition of its own per label, as a teacher that knows the task writes
            "rule": f"When a sentence shows the {label}-like pattern of this kind, answer {label}.",
        }
    elif "whose condition holds for the first group" in text:  # a targeted revision
        match = re.search(r'the correct label of each is "([^"]+)"', text)
        assert match is not None
        reply = {
            "instruction": f"If the input shows the pattern the student missed, answer {match[1]}."
        }
    elif "written independently" in text:
        label = _label_of(text.split("recurring pattern")[1], axes)
        reply = {"instruction": f"Sentences that follow this shared pattern are {label}."}
    else:
        first, second = list(axes)[:2]
        reply = {"rules": [{"text": f"Inputs that match the first pattern are {first}.", "based_on": [1]},
                           {"text": f"Inputs that match the second pattern are {second}.", "based_on": []}]}  # fmt: skip
    return Reply(200, chat_body(json.dumps(reply), 40, 20))


class LlamaServer:
    """llama-cpp-python's server on 127.0.0.1 (one thread, as the test machine has two cores)."""

    def __init__(
        self, model: str | Path, log: Path, *, alias: str = "smollm2", n_ctx: int = 4096,
        extra: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.model, self.log, self.alias, self.n_ctx = str(model), log, alias, n_ctx
        self.extra = extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", self.model,
                 "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                 "--n_ctx", str(self.n_ctx), "--n_threads", "1", *self.extra],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in {timeout:g} s:\n{self.tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as abrupt as a crash
            self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Hit:
    """One request a ``StoreServer`` answered, and the bytes it sent (status line, headers,
    body)."""

    method: str
    path: str
    status: int = 0
    sent: int = 0
    head: int = 0  # of which status line and headers
    conditional: bool = False

    @property
    def body(self) -> int:
        return self.sent - self.head


class StoreServer:
    """A publication directory served over HTTP on 127.0.0.1 by the standard library's file
    server, with what a real file server adds: a strong ``ETag`` (the file's sha256) and 304 Not
    Modified for a matching If-None-Match. ``etag=False``: the stock server alone (Last-Modified
    and If-Modified-Since only). Logs each request with its status and bytes sent.

    ``lie_304``: fault injection no honest server produces on demand: answer 304 for every
    file, changed or not, asked for conditionally or not (a hostile store or a broken cache).
    """

    def __init__(self, root: Path, *, etag: bool = True) -> None:
        import functools
        import io
        from http.server import SimpleHTTPRequestHandler

        self.hits: list[Hit] = []
        self.lie_304 = False
        store = self

        class Counting(io.RawIOBase):
            def __init__(self, inner: Any, hit: Hit) -> None:
                self.inner, self.hit = inner, hit

            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                self.hit.sent += len(data)  # before it leaves: what the client has is counted
                n = self.inner.write(data)
                return int(n if n is not None else len(data))

            def flush(self) -> None:
                self.inner.flush()

            def close(self) -> None:
                if not self.closed:
                    super().close()  # flushes the inner file first
                    self.inner.close()

        class Handler(SimpleHTTPRequestHandler):
            def parse_request(self) -> bool:
                # one request per connection (HTTP/1.0): this hit gets every byte written
                self.hit = Hit("", "")
                self.wfile = Counting(self.wfile, self.hit)  # type: ignore[assignment]
                store.hits.append(self.hit)
                ok = super().parse_request()
                self.hit.method, self.hit.path = self.command or "", self.path or ""
                self.hit.conditional = ok and any(
                    h in self.headers for h in ("If-None-Match", "If-Modified-Since")
                )
                return ok

            def send_response(self, code: int, message: str | None = None) -> None:
                self.hit.status = code
                super().send_response(code, message)

            def end_headers(self) -> None:
                super().end_headers()  # flushes them
                self.hit.head = self.hit.sent

            def send_head(self) -> Any:
                path = Path(self.translate_path(self.path))
                if not etag or not path.is_file():
                    return super().send_head()
                data = path.read_bytes()
                tag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
                asked = self.headers.get("If-None-Match")
                if store.lie_304 or (asked is not None and tag in asked.split(", ")):
                    self.send_response(304)
                    self.send_header("ETag", tag)
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", tag)
                self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
                self.end_headers()
                return io.BytesIO(data)

            def log_message(self, fmt: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def take(self) -> list[Hit]:
        """The requests since the last call."""
        out, self.hits = self.hits, []
        return out

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

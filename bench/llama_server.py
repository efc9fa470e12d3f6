"""llama.cpp's own ``llama-server``, a contender of `pld bench compare`: started on 127.0.0.1
with one slot and driven over HTTP the way a user's client drives it, either generating a label
through ``/v1/chat/completions`` or reading one token's probabilities from ``/completion``.

Every answer is read into a ``Reply`` from the server's own ``timings`` (what it evaluated and
what it took from its prompt cache). Knows the server's command line and HTTP API; nothing of
pld's runtime.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from pld.errors import PldError
from pld.paths import cache_dir
from pld.proc import free_port, peak_rss_mb

from .chat import first_token_label, label_grammar, match_label, user_message
from .worker_protocol import Reply, SlotReply

__all__ = ["LABEL_BIAS", "LlamaServer", "ServerConfig", "default_server_bin", "read_first_token"]

# How the first-token contender gets every label's score from /completion. Its pre-sampling
# top ``n_probs`` are the model's own ranking, and a base model often ranks words like "You"
# first with no label among the top 32 (none on any Contract-NLI dev input we tried); covering
# the labels that way needs n_probs near the vocabulary (262,144 for Gemma-3) in every reply.
# Instead the request adds LABEL_BIAS to each label's first token and samples with top_k alone,
# k = the number of labels: the labels are then the only candidates, and the post-sampling
# probabilities are the softmax over their own logits (an equal bias cancels), which is pld's
# rule. 100 lifts them over every other token (Gemma-3 270M's logits span about -21 to 14 on
# the Stereoset and Contract-NLI fixtures, the labels at most 14 below the top) and rounds a
# float32 logit by under 1e-5. Were a label still left out, every label kept outscores it, so
# the best one kept is the best of all.
LABEL_BIAS = 100.0


def default_server_bin(gpu: bool = False) -> Path:
    """Where scripts/build_llama_server.sh caches the llama-server binary for this llama.cpp."""
    version = importlib.metadata.version("llama-cpp-python")
    flavour = "cuda" if gpu else "cpu"
    return cache_dir() / "llama-server" / f"{version}-{flavour}" / "llama-server"


class _TopProb(msgspec.Struct, frozen=True):
    id: int
    prob: float


class _TokenProbs(msgspec.Struct, frozen=True):
    token: str
    top_probs: list[_TopProb]


class _CompletionReply(msgspec.Struct, frozen=True):
    """The fields of a /completion reply that are read (post-sampling probabilities)."""

    tokens_evaluated: int
    tokens_predicted: int
    completion_probabilities: list[_TokenProbs]
    timings: dict[str, float] = {}


def read_first_token(out: Any, labels: list[str], first_tokens: list[int], ms: float) -> Reply:
    """A ``Reply`` from llama-server's ``/completion`` reply with ``post_sampling_probs``: the
    label whose first token has the highest probability among the first token's candidates."""
    try:
        reply = msgspec.convert(out, _CompletionReply)
        (first,) = reply.completion_probabilities[:1]
    except (msgspec.ValidationError, ValueError) as exc:
        raise PldError(f"llama-server's /completion reply is not understood: {exc}") from None
    scores = {p.id: math.log(p.prob) for p in first.top_probs if p.prob > 0}
    t = reply.timings
    return Reply(
        ms=ms,
        labels=[first_token_label(scores, labels, first_tokens)],
        texts=[first.token],
        prompt_tokens=[reply.tokens_evaluated],
        completion_tokens=reply.tokens_predicted,
        evaluated=int(t.get("prompt_n", -1)),
        cache_n=int(t.get("cache_n", -1)),
        server_prompt_ms=t.get("prompt_ms"),
        server_predicted_ms=t.get("predicted_ms"),
    )


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one llama-server runs: the model, its template, context and cores, and the folder its
    slots are saved to."""

    model_path: str
    template_file: Path
    n_ctx: int
    threads: int
    gpu_layers: int
    swa_full: bool
    slot_dir: Path

    def args(self, binary: str, port: int) -> list[str]:
        """The server's command line on ``port``."""
        args = [binary, "-m", self.model_path, "--host", "127.0.0.1", "--port", str(port)]
        args += ["-c", str(self.n_ctx), "-np", "1", "-t", str(self.threads)]
        args += ["-tb", str(self.threads), "-ngl", str(self.gpu_layers), "--jinja"]
        args += ["--chat-template-file", str(self.template_file)]
        args += ["--slot-save-path", str(self.slot_dir)] + (["--swa-full"] if self.swa_full else [])
        return args


class LlamaServer:
    """llama.cpp's ``llama-server`` on 127.0.0.1 with one slot, driven over HTTP like a user's
    client does (``/v1/chat/completions`` or ``/completion``, prompt caching on, its default)."""

    def __init__(self, binary: str, config: ServerConfig, *, log_file: Path) -> None:
        self.port = free_port()
        self.args = config.args(binary, self.port)
        self.log_file = log_file
        self.t_start = time.perf_counter()
        with log_file.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def log_tail(self, n: int = 15) -> str:
        """The last lines of the server's log, for error messages."""
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """One HTTP exchange on the kept-alive connection: status, JSON body and ms.

        The server closes a connection left idle while other contenders run; a request that
        meets a closed connection is sent once more on a new one, and only that try is timed.
        """
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        for again in (False, True):
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except ConnectionError:
                self.conn.close()
                if again:
                    raise
                continue
            ms = (time.perf_counter() - t0) * 1000
            return resp.status, json.loads(raw) if raw else None, ms
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        try:
            return self._request(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            raise PldError(
                f"llama-server stopped answering ({exc}); its log ({self.log_file}) ends:\n"
                f"{self.log_tail()}"
            ) from None

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        """Block until /health answers 200; returns ms since the process was started."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PldError(
                    f"llama-server exited with code {self.proc.returncode} while starting; "
                    f"its log ({self.log_file}) ends:\n{self.log_tail()}"
                )
            try:
                status, _, _ = self._request("GET", "/health")
                if status == 200:
                    return (time.perf_counter() - self.t_start) * 1000
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                pass
            time.sleep(0.05)
        raise PldError(
            f"llama-server did not become ready in {timeout_s:.0f} s; see {self.log_file}"
        )

    def chat(
        self, system: str, text: str, labels: list[str], max_tokens: int, grammar: bool
    ) -> Reply:
        """One chat completion; the reply's own ``timings`` say what was evaluated."""
        body: dict[str, Any] = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user_message(text)},
            ],
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "cache_prompt": True,
        }
        if grammar:
            body["grammar"] = label_grammar(labels)
        status, out, ms = self._call("POST", "/v1/chat/completions", body)
        if status != 200:
            raise PldError(f"llama-server answered HTTP {status}: {str(out)[:300]}")
        content = out["choices"][0]["message"].get("content") or ""
        timings = out.get("timings", {})
        return Reply(
            ms=ms,
            labels=[match_label(content, labels)],
            texts=[content],
            prompt_tokens=[out["usage"]["prompt_tokens"]],
            completion_tokens=out["usage"]["completion_tokens"],
            evaluated=int(timings.get("prompt_n", -1)),
            cache_n=int(timings.get("cache_n", -1)),
            server_prompt_ms=timings.get("prompt_ms"),
            server_predicted_ms=timings.get("predicted_ms"),
        )

    def first_token(self, prompt: str, labels: list[str], first_tokens: list[int]) -> Reply:
        """One token after the rendered ``prompt`` through ``/completion``, sampled among the
        labels' first tokens only (see LABEL_BIAS), with their probabilities; the label is the
        best-scoring one (the sampled token, seeded, is only reported)."""
        body = {
            "prompt": prompt,
            "n_predict": 1,
            "logit_bias": [[tok, LABEL_BIAS] for tok in first_tokens],
            "samplers": ["top_k"],
            "top_k": len(first_tokens),
            "n_probs": len(first_tokens),
            "post_sampling_probs": True,
            "seed": 0,
            "cache_prompt": True,
        }
        status, out, ms = self._call("POST", "/completion", body)
        if status != 200:
            raise PldError(f"llama-server answered HTTP {status}: {str(out)[:300]}")
        return read_first_token(out, labels, first_tokens, ms)

    def slot(self, action: Literal["save", "restore"], filename: str) -> SlotReply:
        """Save slot 0 to, or restore it from, ``--slot-save-path``/filename."""
        status, out, _ = self._call("POST", f"/slots/0?action={action}", {"filename": filename})
        if status != 200:
            raise PldError(f"llama-server could not {action} slot 0 (HTTP {status}): {out}")
        try:
            return msgspec.convert(out, SlotReply)
        except msgspec.ValidationError as exc:
            raise PldError(f"llama-server's slot {action} reply is not understood: {exc}") from None

    def peak_rss_mb(self) -> float | None:
        """The server process's peak resident memory."""
        return peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

"""The contenders of `pld bench compare`, each run the way its users run it, in its own process.

A *worker* is a child process that loads one in-process contender (pld one at a time, pld
batched, or llama-cpp-python's ``Llama.create_chat_completion`` with or without its
``LlamaRAMCache``) and answers JSON lines on stdin; ``LlamaServer`` drives llama.cpp's own HTTP
server. Every answer says what was evaluated, so the driver (``compare.py``) reports what each
contender really did. Knows the runtime's public API and llama-cpp-python's high-level one.

    python -m pld.bench.contenders serve SPEC_JSON   # a worker: JSON lines in, JSON lines out
    python -m pld.bench.contenders cold SPEC_JSON    # one cold answer (reads the text on stdin)
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from pld.errors import ConfigError, PldError
from pld.proc import free_port, peak_rss_mb

__all__ = [
    "CHAT_TEMPLATES",
    "LlamaServer",
    "WorkerSpec",
    "label_grammar",
    "match_label",
]

Kind = Literal["pld", "pld_batched", "chat_completion", "chat_completion_cached"]

# Gemma 3's own chat template (google/gemma-3-*-it tokenizer_config.json). The registry's
# Gemma-3 270M GGUF carries none, and llama-cpp-python's built-in "gemma" format drops the system
# message, so a user supplies this one; it folds the system prompt into the first user turn.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

CHATML_TEMPLATE = """{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}
"""

CHAT_TEMPLATES = {"gemma": GEMMA3_TEMPLATE, "chatml": CHATML_TEMPLATE}
EOS = {"gemma": ("<bos>", "<eos>"), "chatml": ("", "<|im_end|>")}


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker process loads and how it runs."""

    kind: Kind
    bundle: str
    model: str | None = None  # registry name or .gguf path (None: the bundle's student)
    threads: int
    gpu_layers: int = 0
    n_ctx: int = 0
    max_tokens: int = 8
    grammar: bool = True
    batch_size: int = 8
    state_dir: str | None = None
    ram_cache_mb: int = 512


def match_label(text: str, labels: list[str]) -> str | None:
    """The label a generated text names: the longest label it starts with, else the one label
    it is a prefix of (a cut-off answer), else None."""
    t = text.strip().lower()
    starts = [lab for lab in labels if t.startswith(lab.lower())]
    if starts:
        return max(starts, key=len)
    partial = [lab for lab in labels if t and lab.lower().startswith(t)]
    return partial[0] if len(partial) == 1 else None


def label_grammar(labels: list[str]) -> str:
    """A GBNF grammar whose only sentences are the labels."""
    quoted = ['"' + lab.replace("\\", "\\\\").replace('"', '\\"') + '"' for lab in labels]
    return "root ::= " + " | ".join(quoted)


def user_message(text: str) -> str:
    """The user turn every generating contender sends: pld's input header, then the input."""
    return "Input:\n" + text


# ---- in-process contenders (run inside a worker) -------------------------------------------


class PldContender:
    """pld's Classifier, one request at a time or in batches; the reference labels."""

    def __init__(self, spec: WorkerSpec) -> None:
        from pld.runtime import Classifier

        batched = spec.kind == "pld_batched"
        self.clf = Classifier.open(
            spec.bundle,
            model=spec.model,
            n_threads=spec.threads,
            n_gpu_layers=spec.gpu_layers,
            max_batch=spec.batch_size if batched else 1,
            state_dir=Path(spec.state_dir) if spec.state_dir else None,
            allow_model_mismatch=spec.model is not None,
        )
        self.labels = list(self.clf.labels)

    def info(self) -> dict[str, Any]:
        c = self.clf
        return {
            "prefix_tokens": len(c.prefix_tokens),
            "label_tokens": [len(t) for t in c.label_tokens],
            "prime_ms": c.prime_ms,
            "restore_ms": c.restore_ms,
            "calibrated": c.calibrated,
            "labels": self.labels,
            "chat_format": c.resolved.chat_format,
            "model_path": c.resolved.path,
            "system_prompt": c.bundle.system_prompt,
        }

    def _decoded(self) -> int:
        s = self.clf.engine.stats
        return s.prefix_tokens_decoded + s.suffix_tokens_decoded + s.full_tokens_decoded

    def answer(self, texts: list[str]) -> dict[str, Any]:
        before = self._decoded()
        t0 = time.perf_counter()
        preds = self.clf.classify_many(texts)
        ms = (time.perf_counter() - t0) * 1000
        prefix = len(self.clf.prefix_tokens)
        return {
            "ms": ms,
            "labels": [p.label for p in preds],
            "texts": [p.label for p in preds],
            "prompt_tokens": [prefix + p.timings.input_tokens for p in preds],
            "evaluated": (self._decoded() - before) / len(texts),
        }

    def suffix_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.clf.request_tokens(t)[0]) for t in texts]


class ChatContender:
    """What a user writes first: ``Llama(...).create_chat_completion`` at temperature 0."""

    def __init__(self, spec: WorkerSpec) -> None:
        import llama_cpp
        from llama_cpp.llama_cache import LlamaRAMCache
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        from llama_cpp.llama_grammar import LlamaGrammar

        from pld.models import resolve
        from pld.runtime import load_bundle, resolve_bundle_path

        bundle = load_bundle(resolve_bundle_path(spec.bundle))
        resolved = resolve(spec.model or bundle.student.model)
        self.labels = list(bundle.labels)
        self.system = bundle.system_prompt
        self.spec = spec
        bos, eos = EOS[resolved.chat_format]
        self.llm = llama_cpp.Llama(
            model_path=resolved.path,
            n_ctx=spec.n_ctx,
            n_threads=spec.threads,
            n_threads_batch=spec.threads,
            n_gpu_layers=spec.gpu_layers,
            verbose=False,
        )
        self.llm.chat_handler = Jinja2ChatFormatter(
            template=CHAT_TEMPLATES[resolved.chat_format],
            eos_token=eos,
            bos_token=bos,
            stop_token_ids=[self.llm.token_eos()],
        ).to_chat_handler()
        if spec.kind == "chat_completion_cached":
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=spec.ram_cache_mb << 20))
        self.grammar = (
            LlamaGrammar.from_string(label_grammar(self.labels), verbose=False)
            if spec.grammar
            else None
        )
        # Instrument, do not change: count the tokens of the first eval() of each request
        # (the prompt the Llama really evaluates after its own prefix match or cache load).
        self._evals: list[int] = []
        inner = self.llm.eval

        def counting(tokens: Any) -> None:
            self._evals.append(len(tokens))
            inner(tokens)

        self.llm.eval = counting  # type: ignore[method-assign]

    def info(self) -> dict[str, Any]:
        p = self.llm.context_params
        return {
            "n_ctx": self.llm.n_ctx(),
            "swa_full": bool(p.swa_full),
            "flash_attn_type": int(p.flash_attn_type),
            "n_batch": self.llm.n_batch,
        }

    def answer(self, texts: list[str]) -> dict[str, Any]:
        (text,) = texts
        self._evals.clear()
        t0 = time.perf_counter()
        out: Any = self.llm.create_chat_completion(
            messages=[
                {"role": "system", "content": self.system},
                {"role": "user", "content": user_message(text)},
            ],
            temperature=0.0,
            max_tokens=self.spec.max_tokens,
            grammar=self.grammar,
        )
        ms = (time.perf_counter() - t0) * 1000
        content = out["choices"][0]["message"]["content"] or ""
        return {
            "ms": ms,
            "labels": [match_label(content, self.labels)],
            "texts": [content],
            "prompt_tokens": [out["usage"]["prompt_tokens"]],
            "completion_tokens": out["usage"]["completion_tokens"],
            "evaluated": self._evals[0] if self._evals else 0,
        }


def _open(spec: WorkerSpec) -> PldContender | ChatContender:
    if spec.kind in ("pld", "pld_batched"):
        return PldContender(spec)
    return ChatContender(spec)


def serve(spec: WorkerSpec) -> None:
    """The worker loop: one JSON reply per JSON request line, on a private copy of stdout (so
    stray prints of native code cannot corrupt it)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    t0 = time.perf_counter()
    contender = _open(spec)
    ready = {"ready": True, "load_ms": (time.perf_counter() - t0) * 1000, **contender.info()}
    out.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "suffix_tokens" and isinstance(contender, PldContender):
            reply: dict[str, Any] = {"suffix_tokens": contender.suffix_tokens(req["texts"])}
        else:
            reply = contender.answer(req["texts"])
        out.write(json.dumps(reply) + "\n")


def cold(spec: WorkerSpec) -> None:
    """A fresh process's first answer: load (restoring pld's saved prefix state), answer once."""
    text = sys.stdin.read()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    contender = _open(spec)
    reply = contender.answer([text])
    info = contender.info()
    reply["restored"] = info.get("restore_ms") is not None
    out.write(json.dumps(reply) + "\n")


# ---- llama.cpp's own server ---------------------------------------------------------------


class LlamaServer:
    """llama.cpp's ``llama-server`` on 127.0.0.1 with one slot, driven over HTTP like a user's
    client does (``/v1/chat/completions``, prompt caching on, its default)."""

    def __init__(
        self,
        binary: str,
        *,
        model_path: str,
        template_file: Path,
        n_ctx: int,
        threads: int,
        gpu_layers: int,
        swa_full: bool,
        slot_dir: Path,
        log_file: Path,
    ) -> None:
        self.port = free_port()
        args = [binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["-c", str(n_ctx), "-np", "1", "-t", str(threads), "-tb", str(threads)]
        args += ["-ngl", str(gpu_layers), "--jinja", "--chat-template-file", str(template_file)]
        args += ["--slot-save-path", str(slot_dir)] + (["--swa-full"] if swa_full else [])
        self.args = args
        self.log_file = log_file
        self.t_start = time.perf_counter()
        with log_file.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
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
    ) -> dict[str, Any]:
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
        return {
            "ms": ms,
            "labels": [match_label(content, labels)],
            "texts": [content],
            "prompt_tokens": [out["usage"]["prompt_tokens"]],
            "completion_tokens": out["usage"]["completion_tokens"],
            "evaluated": int(timings.get("prompt_n", -1)),
            "cache_n": int(timings.get("cache_n", -1)),
            "server_prompt_ms": timings.get("prompt_ms"),
            "server_predicted_ms": timings.get("predicted_ms"),
        }

    def slot(self, action: Literal["save", "restore"], filename: str) -> dict[str, Any]:
        """Save slot 0 to, or restore it from, ``--slot-save-path``/filename."""
        status, out, _ = self._call("POST", f"/slots/0?action={action}", {"filename": filename})
        if status != 200:
            raise PldError(f"llama-server could not {action} slot 0 (HTTP {status}): {out}")
        return dict(out)

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


def main(argv: list[str]) -> None:
    """Entry point of a worker process."""
    if len(argv) != 2 or argv[0] not in ("serve", "cold"):
        raise ConfigError("usage: python -m pld.bench.contenders serve|cold SPEC_JSON")
    spec = msgspec.json.decode(argv[1], type=WorkerSpec)
    (serve if argv[0] == "serve" else cold)(spec)


if __name__ == "__main__":
    main(sys.argv[1:])

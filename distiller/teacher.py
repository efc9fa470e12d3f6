"""The teacher: an OpenAI-compatible chat-completions and embeddings client on httpx.

Covers hosted models, vLLM, Ollama and llama.cpp's servers. Every call goes through a
``ResponseCache``; transient failures (429, 5xx, connection errors, timeouts) are retried with
exponential backoff. It knows nothing about prompts, stages or what the replies mean.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, Literal, TypeVar

import httpx
import msgspec

from pld.distiller.cache import ResponseCache
from pld.errors import PldError

__all__ = [
    "ChatRequest",
    "ChatResult",
    "MalformedReply",
    "OpenAITeacher",
    "TeacherAuthError",
    "TeacherError",
    "TeacherUnreachableError",
    "parse_json",
    "parse_teacher_spec",
]

T = TypeVar("T")
Message = Mapping[str, str]
StructuredOutput = Literal["json_schema", "json_object", "off"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 429})
_SPEC = re.compile(r"^openai:(?P<model>[^@\s]+)(?:@(?P<url>https?://[^\s/]+\S*))?$")


class TeacherError(PldError):
    """The teacher could not be configured, reached, or gave no usable reply."""


class TeacherUnreachableError(TeacherError):
    """Nothing answers at the teacher's base URL."""


class TeacherAuthError(TeacherError):
    """The teacher rejected the API key (HTTP 401 or 403)."""


class MalformedReply(TeacherError):
    """A reply holds no JSON object of the expected shape; callers may retry or repair it."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


class ChatResult(msgspec.Struct, kw_only=True, frozen=True):
    """One chat completion: the reply text, its token usage, and whether it came from the cache."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool

    @classmethod
    def from_response(cls, response: Mapping[str, Any], cached: bool) -> ChatResult:
        """Read an OpenAI-shaped chat completion."""
        usage = response.get("usage") or {}
        return cls(
            text=_chat_text(response),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached=cached,
        )


class ChatRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The arguments of one ``OpenAITeacher.chat`` call, for ``chat_many``."""

    messages: list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 1024


def parse_teacher_spec(spec: str) -> tuple[str, str]:
    """Split a CLI spec ``openai:MODEL[@BASE_URL]`` into ``(model, base_url)``."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise TeacherError(
            f"malformed teacher spec {spec!r}; use 'openai:MODEL@BASE_URL' with an http(s) URL, "
            "e.g. 'openai:gpt-4o-mini@https://api.openai.com/v1' or "
            "'openai:qwen2.5@http://127.0.0.1:8080/v1'"
        )
    return match["model"], (match["url"] or DEFAULT_BASE_URL).rstrip("/")


def parse_json(text: str, type: type[T]) -> T:
    """Decode the first JSON object in a reply (a ```json fence first) into ``type``.

    Raises ``MalformedReply`` when there is none or it does not validate.
    """
    candidates = [m.group(1) for m in re.finditer(r"```(?:json)?\s*\n?(.*?)```", text, re.S)]
    candidates.append(text)
    decoder = json.JSONDecoder()
    name = getattr(type, "__name__", str(type))
    for candidate in candidates:
        for start in (i for i, ch in enumerate(candidate) if ch == "{"):
            try:
                _, end = decoder.raw_decode(candidate, start)
            except ValueError:
                continue
            try:
                return msgspec.json.decode(candidate[start:end], type=type)
            except msgspec.ValidationError as exc:
                raise MalformedReply(
                    f"teacher reply does not match {name}: {exc}; retry or repair the reply",
                    text,
                ) from exc
    raise MalformedReply(
        f"teacher reply holds no JSON object (expected {name}); retry or repair the reply", text
    )


class OpenAITeacher:
    """A cached, retrying client for an OpenAI-compatible ``/v1`` server.

    ``structured_output`` chooses how a JSON schema is sent: ``"json_schema"`` (OpenAI, vLLM,
    llama.cpp's C++ server, Ollama), ``"json_object"`` (llama-cpp-python's server, which takes
    ``{"type": "json_object", "schema": ...}``) or ``"off"`` (rely on the prompt alone).
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        cache: ResponseCache | None = None,
        timeout: float = 120.0,
        max_attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        structured_output: StructuredOutput = "json_schema",
        embed_batch_size: int = 64,
    ) -> None:
        if max_attempts < 1:
            raise TeacherError(f"max_attempts must be at least 1, got {max_attempts}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        if api_key is None:
            api_key = os.environ.get("PLD_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.cache = cache if cache is not None else ResponseCache()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.structured_output = structured_output
        self.embed_batch_size = embed_batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> OpenAITeacher:
        """Build a teacher from a CLI spec ``openai:MODEL@BASE_URL``."""
        model, base_url = parse_teacher_spec(spec)
        return cls(model, base_url, **kwargs)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> OpenAITeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- public calls -----------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: Mapping[str, Any] | type | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> ChatResult:
        """One chat completion, from the cache when this exact request was made before."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if json_schema is not None and self.structured_output != "off":
            body["response_format"] = self._response_format(json_schema)
        response, cached = self.cache.fetch(
            {"endpoint": "chat.completions", **body},
            lambda: self._checked(self._post("/chat/completions", body), _chat_text),
        )
        return ChatResult.from_response(response, cached)

    def chat_many(
        self,
        requests: Sequence[ChatRequest],
        *,
        concurrency: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[ChatResult]:
        """Run chat requests in parallel; results keep the input order.

        ``progress(done, total)`` is called after each one. The first error cancels the
        requests not yet started and is raised.
        """
        total = len(requests)
        results: list[ChatResult | None] = [None] * total
        done = 0
        lock = threading.Lock()

        def run(i: int) -> None:
            nonlocal done
            r = requests[i]
            results[i] = self.chat(
                r.messages,
                json_schema=r.json_schema,
                temperature=r.temperature,
                max_tokens=r.max_tokens,
            )
            with lock:
                done += 1
                if progress is not None:
                    progress(done, total)

        pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        try:
            futures = [pool.submit(run, i) for i in range(total)]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and not future.cancelled() and future.exception():
                    raise future.exception()  # type: ignore[misc]
        finally:
            # On an error or Ctrl-C, start nothing new; replies already received are cached.
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed texts (in cached batches of ``embed_batch_size``); one vector per text."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.embed_batch_size):
            body = {
                "model": self.model,
                "input": list(texts[start : start + self.embed_batch_size]),
            }
            response, _ = self.cache.fetch(
                {"endpoint": "embeddings", **body}, partial(self._post_embeddings, body)
            )
            vectors.extend(_embeddings(response, len(body["input"])))
        return vectors

    # ---- HTTP ---------------------------------------------------------------------------

    def _response_format(self, schema: Mapping[str, Any] | type) -> dict[str, Any]:
        if isinstance(schema, type):
            name, schema = schema.__name__, msgspec.json.schema(schema)
        else:
            name = str(schema.get("title") or "reply")
        if self.structured_output == "json_object":
            return {"type": "json_object", "schema": dict(schema)}
        return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}

    def _post_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        n = len(body["input"])
        return self._checked(self._post("/embeddings", body), lambda r: _embeddings(r, n))

    def _checked(
        self, response: dict[str, Any], check: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any]:
        """Reject a 200 reply of the wrong shape before it is cached."""
        try:
            check(response)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherError(
                f"teacher server at {self.base_url} sent an unexpected reply "
                f"({_snippet(json.dumps(response))}); check that it is OpenAI-compatible"
            ) from exc
        return response

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST with retries on 429, 5xx, connection errors and timeouts."""
        url = self.base_url + path
        last = ""
        kind = "status"
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                reply = self._client.post(url, json=body)
            except httpx.TimeoutException:
                kind, last = "timeout", f"no answer within {self.timeout:g}s"
            except httpx.TransportError as exc:
                kind, last = "connect", f"{type(exc).__name__}: {exc}"
            else:
                status = reply.status_code
                if status in (401, 403):
                    raise TeacherAuthError(
                        f"teacher rejected the API key (HTTP {status} from {url}); "
                        "set PLD_TEACHER_API_KEY"
                    )
                if status < 300:
                    try:
                        data = reply.json()
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        raise TeacherError(
                            f"teacher server at {self.base_url} sent a reply that is not a JSON "
                            f"object ({_snippet(reply.text)}); check that it is OpenAI-compatible"
                        )
                    return data
                if status >= 400 and (
                    "json_schema" in reply.text or "response_format" in reply.text
                ):
                    raise TeacherError(
                        f"teacher server at {self.base_url} does not take this response_format "
                        f"(HTTP {status}: {_snippet(reply.text)}); pass --structured-output "
                        "json_object (llama-cpp-python's server) or off"
                    )
                if status not in _RETRY_STATUS and status < 500:
                    if status == 404:
                        hint = "check the model name and that the base URL ends in /v1"
                    elif "context" in reply.text.lower():
                        hint = (
                            "the prompt is too long for the teacher's context: use a teacher "
                            "with a longer context or show it less (--loop-failures, "
                            "--loop-successes, --example-chars)"
                        )
                    else:
                        hint = "check the model name and request parameters"
                    raise TeacherError(
                        f"teacher server at {self.base_url} refused the request "
                        f"(HTTP {status}: {_snippet(reply.text)}); {hint}"
                    )
                kind, last = "status", f"HTTP {status}: {_snippet(reply.text)}"
                retry_after = _retry_after(reply.headers.get("retry-after"))
            if attempt < self.max_attempts:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay *= 1 + 0.1 * random.random()  # jitter spreads out parallel retries
                time.sleep(min(self.max_backoff, retry_after) if retry_after is not None else delay)
        tries = f"{self.max_attempts} attempt{'s' if self.max_attempts > 1 else ''}"
        if kind == "connect":
            raise TeacherUnreachableError(
                f"teacher server at {self.base_url} is unreachable ({last}, {tries}); "
                "start it or check --teacher"
            )
        if kind == "timeout":
            raise TeacherError(
                f"teacher server at {self.base_url} gave no answer within {self.timeout:g}s "
                f"({tries}); raise the timeout or check the server"
            )
        raise TeacherError(
            f"teacher server at {self.base_url} kept failing ({last}) after {tries}; "
            "retry later or lower the concurrency"
        )


def _chat_text(response: Mapping[str, Any]) -> str:
    content = response["choices"][0]["message"].get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("message content is not a string")
    return content or ""


def _embeddings(response: Mapping[str, Any], n: int) -> list[list[float]]:
    """One vector per input; token-level outputs (llama-cpp-python without pooling) are mean-pooled."""
    rows = sorted(response["data"], key=lambda d: d.get("index", 0))
    if len(rows) != n:
        raise ValueError(f"expected {n} embeddings, got {len(rows)}")
    out = []
    for row in rows:
        vec = row["embedding"]
        if vec and isinstance(vec[0], list):
            width = len(vec[0])
            vec = [sum(tok[j] for tok in vec) / len(vec) for j in range(width)]
        out.append([float(x) for x in vec])
    return out


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None for an HTTP date or garbage."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None else None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."

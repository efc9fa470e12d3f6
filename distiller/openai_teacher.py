"""The OpenAI-compatible teacher: chat completions and embeddings over HTTP with httpx.

Covers hosted models, vLLM, Ollama and llama.cpp's servers. Every call goes through a
``ResponseCache``; transient failures (429, 5xx, connection errors, timeouts) are retried with
exponential backoff. It knows nothing about prompts, stages or what the replies mean.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import (
    ChatResult,
    JsonSchema,
    Message,
    StructuredOutput,
    Teacher,
    chat_text,
    parse_embeddings,
    schema_of,
)
from pld.errors import TeacherAuthError, TeacherError, TeacherUnreachableError

__all__ = ["DEFAULT_BASE_URL", "OpenAITeacher", "parse_teacher_spec"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 429})
_SPEC = re.compile(r"^openai:(?P<model>[^@\s]+)(?:@(?P<url>https?://[^\s/]+\S*))?$")


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


class OpenAITeacher(Teacher):
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

    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: JsonSchema | None = None,
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
            lambda: self._checked(self._post("/chat/completions", body), chat_text),
        )
        return ChatResult.from_response(response, cached)

    # ---- the embedding hooks of Teacher.embed ---------------------------------------------

    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        return {"endpoint": "embeddings", "model": self.model, "input": batch}

    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        body = {"model": self.model, "input": batch}
        n = len(batch)
        return self._checked(self._post("/embeddings", body), lambda r: parse_embeddings(r, n))

    # ---- HTTP ---------------------------------------------------------------------------

    def _response_format(self, json_schema: JsonSchema) -> dict[str, Any]:
        name, schema = schema_of(json_schema)
        if self.structured_output == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}

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
                if reply.status_code < 300:
                    return self._json(reply)
                self._raise_unless_retryable(reply, url)
                kind, last = "status", f"HTTP {reply.status_code}: {_snippet(reply.text)}"
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

    def _json(self, reply: httpx.Response) -> dict[str, Any]:
        """The JSON object of a successful reply."""
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

    def _raise_unless_retryable(self, reply: httpx.Response, url: str) -> None:
        """Raise the error an unsuccessful reply means, unless a retry may help (429, 5xx)."""
        status = reply.status_code
        if status in (401, 403):
            raise TeacherAuthError(
                f"teacher rejected the API key (HTTP {status} from {url}); set PLD_TEACHER_API_KEY"
            )
        if status >= 400 and ("json_schema" in reply.text or "response_format" in reply.text):
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

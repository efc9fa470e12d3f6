"""What every teacher backend shares: the request and reply types, reply parsing, and the base
class ``Teacher`` that runs parallel chats and batched, cached embeddings over a backend's hooks.

The backends are ``openai_teacher.OpenAITeacher`` (any OpenAI-compatible server),
``local.LocalTeacher`` (a GGUF in this process) and the embedding-only ones in ``embedders``.
Knows nothing about HTTP, llama.cpp, prompts or stages.
"""

from __future__ import annotations

import abc
import json
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, ClassVar, Literal, Self, TypeVar

import msgspec

from pld.distiller.cache import ResponseCache
from pld.errors import MalformedReplyError
from pld.progress import ProgressCallback

__all__ = [
    "EMBED_BATCH_SIZE",
    "ChatRequest",
    "ChatResult",
    "JsonSchema",
    "Message",
    "StructuredOutput",
    "Teacher",
    "chat_text",
    "parse_embeddings",
    "parse_json",
    "schema_of",
]

T = TypeVar("T")
Message = Mapping[str, str]
# A JSON schema as a dict, or a msgspec type whose schema msgspec derives.
JsonSchema = Mapping[str, Any] | type
# How a JSON schema is sent to an OpenAI-compatible server (see OpenAITeacher); here, beside the
# other request types, so that the CLI can offer the choices without importing httpx.
StructuredOutput = Literal["json_schema", "json_object", "off"]

# Texts per embedding request. It is part of every embedding cache key (one entry per batch,
# and a vector depends a little on its batch neighbours), so changing it re-embeds everything.
EMBED_BATCH_SIZE = 64


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
            text=chat_text(response),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached=cached,
        )


class ChatRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The arguments of one ``Teacher.chat`` call, for ``chat_many``."""

    messages: list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 1024


def chat_text(response: Mapping[str, Any]) -> str:
    """The reply text of an OpenAI-shaped chat completion (KeyError, TypeError if malformed)."""
    content = response["choices"][0]["message"].get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("message content is not a string")
    return content or ""


def parse_embeddings(response: Mapping[str, Any], n: int) -> list[list[float]]:
    """The ``n`` vectors of an OpenAI-shaped embeddings response, in input order.

    Rows are sorted by their ``index``; token-level outputs (llama-cpp-python without pooling)
    are mean-pooled. Raises ValueError, KeyError or TypeError on a response of the wrong shape.
    """
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


def parse_json(text: str, type: type[T]) -> T:
    """Decode the first JSON object in a reply (a ```json fence first) into ``type``.

    Raises ``MalformedReplyError`` when there is none or it does not validate.
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
                raise MalformedReplyError(
                    f"teacher reply does not match {name}: {exc}; retry or repair the reply",
                    text,
                ) from exc
    raise MalformedReplyError(
        f"teacher reply holds no JSON object (expected {name}); retry or repair the reply", text
    )


class Teacher(abc.ABC):
    """A cached teacher backend: chat completions and embeddings.

    A backend implements ``chat`` and two embedding hooks (``_embedding_request``, the cache
    key of one batch, and ``_embed_batch``, which computes it); this class runs requests in
    parallel (at most ``max_workers`` at once) and embeds in cached batches. Usable as a
    context manager that closes the backend.
    """

    model: str
    cache: ResponseCache
    max_workers: ClassVar[int | None] = None  # a cap on chat_many's concurrency; None: none

    @abc.abstractmethod
    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: JsonSchema | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> ChatResult:
        """One chat completion, from the cache when this exact request was made before."""

    @abc.abstractmethod
    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        """The cache key of one batch of texts to embed."""

    @abc.abstractmethod
    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        """Embed one batch now: an OpenAI-shaped embeddings response, checked before caching."""

    def close(self) -> None:  # noqa: B027 (a backend with nothing to free keeps this)
        """Free what the backend holds (HTTP connections, loaded models)."""

    def describe(self) -> dict[str, str]:
        """What a bundle's provenance records about this backend (embedders add versions)."""
        return {"model": self.model}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat_many(
        self,
        requests: Sequence[ChatRequest],
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
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

        workers = max(1, concurrency)
        if self.max_workers is not None:
            workers = min(workers, self.max_workers)
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = [pool.submit(run, i) for i in range(total)]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and not future.cancelled():
                    error = future.exception()
                    if error is not None:
                        raise error
        finally:
            # On an error or Ctrl-C, start nothing new; replies already received are cached.
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]

    def embed(
        self, texts: Sequence[str], *, progress: ProgressCallback | None = None
    ) -> list[list[float]]:
        """One vector per text, embedded in cached batches of ``EMBED_BATCH_SIZE``.

        ``progress(done, total)`` is called after each batch.
        """
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH_SIZE):
            batch = list(texts[start : start + EMBED_BATCH_SIZE])
            response, _ = self.cache.fetch(
                self._embedding_request(batch), partial(self._embed_batch, batch)
            )
            vectors.extend(parse_embeddings(response, len(batch)))
            if progress is not None:
                progress(len(vectors), len(texts))
        return vectors


def schema_of(json_schema: JsonSchema) -> tuple[str, dict[str, Any]]:
    """``(name, schema dict)`` of a JSON schema given as a dict or as a msgspec type."""
    if isinstance(json_schema, type):
        return json_schema.__name__, msgspec.json.schema(json_schema)
    return str(json_schema.get("title") or "reply"), dict(json_schema)

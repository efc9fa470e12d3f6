"""Ask a teacher for JSON replies of a given shape, repairing or retrying the malformed ones.

Also owns the prompt files (``distiller/prompts/*.md``, ``$name`` placeholders) and the
progress bars every stage shows. Knows nothing about what the stages do with the replies.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Protocol, TypeVar

import msgspec
import typer

from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import ChatRequest, ChatResult, MalformedReply, parse_json

__all__ = ["AskStats", "Teacher", "ask_json", "cut", "progress", "prompt", "prompt_hashes"]

T = TypeVar("T")
PROMPTS = ("extract", "consolidate", "revise")


class Teacher(Protocol):
    """What the stages need of a backend (``OpenAITeacher``, ``LocalTeacher``)."""

    model: str
    cache: ResponseCache

    def chat_many(
        self,
        requests: Sequence[ChatRequest],
        *,
        concurrency: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[ChatResult]: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...


class AskStats(msgspec.Struct, kw_only=True):
    """Replies asked for, requests sent (repairs included, cached or not), replies repaired
    after a malformed first reply, replies given up on, and the tokens of every reply."""

    asked: int = 0
    requests: int = 0
    repaired: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@cache
def _prompt_bytes(name: str) -> bytes:
    return (resources.files("pld.distiller") / "prompts" / f"{name}.md").read_bytes()


def prompt(name: str, **values: object) -> str:
    """Fill the ``$placeholders`` of ``prompts/NAME.md``; a missing value is an error."""
    return (
        Template(_prompt_bytes(name).decode("utf-8"))
        .substitute({k: str(v) for k, v in values.items()})
        .strip()
    )


def prompt_hashes() -> dict[str, str]:
    """``sha256:`` of each prompt file, for a bundle's provenance."""
    return {n: "sha256:" + hashlib.sha256(_prompt_bytes(n)).hexdigest() for n in PROMPTS}


@contextmanager
def progress(label: str, total: int, *, show: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields a ``(done, total)`` callback."""
    with typer.progressbar(length=total, label=label, file=sys.stderr, hidden=not show) as bar:
        seen = 0

        def update(done: int, _total: int) -> None:
            nonlocal seen
            bar.update(done - seen)
            seen = done

        yield update


def ask_json(
    teacher: Teacher,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    type: type[T],
    *,
    label: str,
    max_tokens: int = 512,
    max_repairs: int = 2,
    concurrency: int = 8,
    check: Callable[[T], str | None] | None = None,
    show_progress: bool = True,
    stats: AskStats | None = None,
    max_echo_chars: int = 2000,
) -> list[T | None]:
    """One reply of shape ``type`` per conversation (None where every repair failed).

    A reply that holds no valid JSON, or that ``check`` rejects (it returns the problem), is
    sent back with the problem named and a request to answer again, up to ``max_repairs``
    times. Every request goes through the teacher's cache, repairs included, so a rerun
    replays the same conversation without calling the teacher.
    """
    stats = stats if stats is not None else AskStats()
    schema: dict[str, Any] = msgspec.json.schema(type)
    results: list[T | None] = [None] * len(conversations)
    pending = {i: [dict(m) for m in conv] for i, conv in enumerate(conversations)}
    stats.asked += len(pending)
    for attempt in range(max_repairs + 1):
        if not pending:
            break
        order = sorted(pending)
        requests = [
            ChatRequest(messages=pending[i], json_schema=schema, max_tokens=max_tokens)
            for i in order
        ]
        stats.requests += len(requests)
        name = label if attempt == 0 else f"{label}: repair {attempt}"
        with progress(name, len(requests), show=show_progress) as update:
            replies = teacher.chat_many(requests, concurrency=concurrency, progress=update)
        retry: dict[int, list[dict[str, str]]] = {}
        for i, reply in zip(order, replies, strict=True):
            stats.prompt_tokens += reply.prompt_tokens
            stats.completion_tokens += reply.completion_tokens
            try:
                value = parse_json(reply.text, type)
                problem = check(value) if check else None
            except MalformedReply as exc:
                problem = str(exc).split(";")[0]
            if problem is None:
                results[i] = value
                stats.repaired += attempt > 0
                continue
            retry[i] = pending[i] + [
                # a runaway reply is cut, so that the repair still fits the teacher's context
                {"role": "assistant", "content": cut(reply.text, max_echo_chars)},
                {
                    "role": "user",
                    "content": f"That reply cannot be used: {problem}. Answer again with only "
                    f"a JSON object that follows this schema: {msgspec.json.encode(schema).decode()}",
                },
            ]
        pending = retry
    stats.failed += len(pending)
    return results


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a ``[...]`` mark."""
    return text if len(text) <= limit else text[:limit] + " [...]"

"""Ask a teacher for JSON replies of a given shape, repairing or retrying the malformed ones.

Counts what each stage asked, repaired and gave up on (``AskStats``). Knows nothing about the
prompts' contents or what the stages do with the replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from pld.distiller.teacher import ChatRequest, Teacher, parse_json
from pld.errors import MalformedReplyError
from pld.progress import progress
from pld.text import clip

__all__ = ["AskStats", "ask_json"]

T = TypeVar("T")


class AskStats(msgspec.Struct, kw_only=True):
    """Replies asked for, requests sent (repairs included, cached or not), replies repaired
    after a malformed first reply, replies given up on, and the tokens of every reply."""

    asked: int = 0
    requests: int = 0
    repaired: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
    check_each: Sequence[Callable[[T], str | None]] | None = None,
    show_progress: bool = True,
    stats: AskStats | None = None,
    max_echo_chars: int = 2000,
) -> list[T | None]:
    """One reply of shape ``type`` per conversation (None where every repair failed).

    A reply that holds no valid JSON, or that ``check`` (or the conversation's own entry of
    ``check_each``, one per conversation) rejects (it returns the problem), is
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
                if problem is None and check_each is not None:
                    problem = check_each[i](value)
            except MalformedReplyError as exc:
                problem = str(exc).split(";")[0]
            if problem is None:
                results[i] = value
                stats.repaired += attempt > 0
                continue
            retry[i] = pending[i] + [
                # a runaway reply is cut, so that the repair still fits the teacher's context
                {"role": "assistant", "content": clip(reply.text, max_echo_chars)},
                {
                    "role": "user",
                    "content": f"That reply cannot be used: {problem}. Answer again with only "
                    f"a JSON object that follows this schema: {msgspec.json.encode(schema).decode()}",
                },
            ]
        pending = retry
    stats.failed += len(pending)
    return results

"""The base class every teacher backend shares, and the response cache behind it.

A fake in-memory backend drives ``Teacher.chat_many`` and ``Teacher.embed``; the cache keys of
the real backends are pinned, so that a refactoring that changed a request would show here
before it silently re-asked every cached reply.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from pld.distiller.cache import ResponseCache, request_key
from pld.distiller.local import LocalTeacher
from pld.distiller.openai_teacher import OpenAITeacher
from pld.distiller.teacher import (
    EMBED_BATCH_SIZE,
    ChatRequest,
    ChatResult,
    JsonSchema,
    Message,
    Teacher,
)

MESSAGES = [{"role": "user", "content": "Say hello."}]


class Echo(Teacher):
    """An in-memory backend: replies echo the last message; it records how many ran at once."""

    def __init__(self, cache: ResponseCache) -> None:
        self.model, self.cache = "echo", cache
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.batches: list[list[str]] = []
        self.closed = False

    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: JsonSchema | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> ChatResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return ChatResult(text=messages[-1]["content"], prompt_tokens=1, completion_tokens=1,
                          cached=False)  # fmt: skip

    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        return {"endpoint": "echo.embeddings", "input": batch}

    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        self.batches.append(batch)
        return {
            "data": [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(batch)]
        }

    def close(self) -> None:
        self.closed = True


class OneAtATime(Echo):
    max_workers = 1


def test_chat_many_runs_in_parallel_up_to_the_backend_cap(tmp_path: Path) -> None:
    requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(8)]
    echo = Echo(ResponseCache(tmp_path))
    assert [r.text for r in echo.chat_many(requests, concurrency=4)] == [f"q{i}" for i in range(8)]
    assert echo.most == 4
    single = OneAtATime(ResponseCache(tmp_path))
    seen: list[tuple[int, int]] = []
    results = single.chat_many(requests, concurrency=4, progress=lambda d, t: seen.append((d, t)))
    assert [r.text for r in results] == [f"q{i}" for i in range(8)]
    assert single.most == 1 and seen == [(d, 8) for d in range(1, 9)]
    assert LocalTeacher.max_workers == 1 and OpenAITeacher.max_workers is None


def test_embed_batches_through_the_cache_and_closes_as_a_context_manager(tmp_path: Path) -> None:
    texts = [f"{'x' * (i % 7)}{i}" for i in range(EMBED_BATCH_SIZE * 2 + 1)]
    with Echo(ResponseCache(tmp_path)) as echo:
        seen: list[tuple[int, int]] = []
        vectors = echo.embed(texts, progress=lambda d, t: seen.append((d, t)))
        assert vectors == [[float(len(t)), 1.0] for t in texts]
        assert [len(b) for b in echo.batches] == [EMBED_BATCH_SIZE, EMBED_BATCH_SIZE, 1]
        assert seen == [(EMBED_BATCH_SIZE, len(texts)), (2 * EMBED_BATCH_SIZE, len(texts)),
                        (len(texts), len(texts))]  # fmt: skip
        assert echo.embed(texts) == vectors and len(echo.batches) == 3  # all from the cache
        assert echo.cache.stats.hits == 3
    assert echo.closed


# ---- cache keys: the requests of every backend, byte for byte ------------------------------


class Recorder(ResponseCache):
    """A cache that records each request as it would be stored, and answers every one."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.requests: list[str] = []

    def fetch(
        self, request: Mapping[str, Any], call: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        self.requests.append(json.dumps(request))
        if "input" in request:
            n = len(request["input"])
            return {"data": [{"index": i, "embedding": [1.0]} for i in range(n)]}, True
        return {"choices": [{"message": {"content": "x"}}]}, True


class Rule(msgspec.Struct):
    rationale: str
    rule: str


def _drive(teacher: Teacher) -> list[str]:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "h\u00e9llo"}]
    teacher.chat(messages)
    teacher.chat(messages, json_schema=Rule, temperature=0.5, max_tokens=7)
    teacher.chat(messages, json_schema={"type": "object", "title": "T"})
    teacher.embed([f"text {i}" for i in range(130)])
    assert isinstance(teacher.cache, Recorder)
    return [request_key(json.loads(r)) for r in teacher.cache.requests]


def test_cache_keys_are_those_of_earlier_releases(tmp_path: Path) -> None:
    # Computed with the teachers before the backends shared a base class: a cache filled then
    # must still replay. Change these only on purpose (every cached reply is asked again).
    openai = OpenAITeacher("m", "http://127.0.0.1:9/v1", cache=Recorder(tmp_path))
    assert [k[:16] for k in _drive(openai)] == [
        "e65440be765685cd", "182d74cd56dc5296", "ba137a1f84f8b901",  # chat
        "1abfc0b8acc65474", "360088c208d08ed2", "50164474354d8766",  # embeddings: 64, 64, 2
    ]  # fmt: skip
    openai.close()
    local = LocalTeacher("smollm2-135m-instruct", cache=Recorder(tmp_path))
    assert [k[:16] for k in _drive(local)] == [
        "8cb51c8add37663e", "34bc35d908286aa0", "5c5b460d1fef2bd3",
        "35c68d618fe5620d", "a1e909867fa4b6e6", "ca8c5a0468e63b27",
    ]  # fmt: skip
    assert local._llm is None and local._embedder is None  # keys alone load no model


def test_default_cache_directory_is_the_teacher_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path))
    assert ResponseCache().directory == tmp_path / "teacher-cache"


# ---- the cache -------------------------------------------------------------------------------


WRITE_REQUEST = {"endpoint": "chat.completions", "model": "m", "messages": MESSAGES}
BIG = "x" * 200_000  # large enough that a torn write would be visible


def _write_and_read(directory: Path, writer: int) -> None:
    cache = ResponseCache(directory)
    for j in range(20):
        cache.put(WRITE_REQUEST, {"writer": writer, "j": j, "pad": BIG})
        got = cache.get(WRITE_REQUEST)
        assert got is not None and got["pad"] == BIG


def test_concurrent_writers_of_one_key_are_safe(tmp_path) -> None:
    request = WRITE_REQUEST
    cache = ResponseCache(tmp_path)
    big = BIG
    procs = multiprocessing.get_context("fork")
    with ThreadPoolExecutor(4) as threads, ProcessPoolExecutor(2, mp_context=procs) as processes:
        futures = [threads.submit(_write_and_read, tmp_path, i) for i in range(4)]
        futures += [processes.submit(_write_and_read, tmp_path, i) for i in range(4, 6)]
        for future in futures:
            future.result()  # re-raises a writer's failure here
    assert cache.get(request)["pad"] == big
    assert [p.name for p in tmp_path.rglob("*")] == [
        request_key(request)[:2],
        request_key(request) + ".json",
    ]


def test_concurrent_identical_fetches_call_once(tmp_path) -> None:
    cache = ResponseCache(tmp_path)
    calls = []

    def call() -> dict[str, Any]:
        calls.append(1)
        time.sleep(0.2)
        return {"usage": {"prompt_tokens": 2, "completion_tokens": 1}}

    threads = [threading.Thread(target=cache.fetch, args=({"k": 1}, call)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (cache.stats.calls, cache.stats.hits, cache.stats.prompt_tokens) == (1, 4, 2)


def test_key_is_canonical() -> None:
    a = {"model": "m", "messages": MESSAGES, "temperature": 0.0}
    assert request_key(a) == request_key(dict(reversed(list(a.items()))))
    assert request_key(a) != request_key({**a, "temperature": 0.5})

"""The teacher client and its response cache.

Fault handling (429 with Retry-After, 5xx, slow replies, a rejected key, a closed port) is
driven by a small scripted HTTP server on 127.0.0.1 that replays a queue of replies and logs
each request: it is scripted because a real server cannot be made to produce these faults on
demand. The capability itself (chat, structured output, embeddings) is checked once against a
real OpenAI-compatible server: llama-cpp-python's, serving the SmolLM2 model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from servers import LlamaServer, Reply, ScriptedServer, chat_body, free_port

from pld.distiller.cache import ResponseCache
from pld.distiller.openai_teacher import OpenAITeacher, parse_teacher_spec
from pld.distiller.teacher import EMBED_BATCH_SIZE, ChatRequest, parse_json
from pld.errors import (
    MalformedReplyError,
    TeacherAuthError,
    TeacherError,
    TeacherUnreachableError,
)

MESSAGES = [{"role": "user", "content": "Say hello."}]


class Rule(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    rationale: str
    rule: str


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def make_teacher(tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PLD_TEACHER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    teachers: list[OpenAITeacher] = []

    def make(**kwargs: Any) -> OpenAITeacher:
        kwargs.setdefault("cache", ResponseCache(tmp_path / "cache"))
        kwargs.setdefault("backoff", 0.01)
        kwargs.setdefault("timeout", 5.0)
        t = OpenAITeacher("scripted-model", kwargs.pop("base_url", server.url), **kwargs)
        teachers.append(t)
        return t

    yield make
    for t in teachers:
        t.close()


# ---- retries and errors ------------------------------------------------------------------


def test_429_with_retry_after_waits_then_succeeds(server, make_teacher) -> None:
    server.push(
        Reply(429, {"error": "slow down"}, {"Retry-After": "1"}), Reply(200, chat_body("hi"))
    )
    start = time.monotonic()
    result = make_teacher().chat(MESSAGES)
    assert result.text == "hi" and not result.cached
    assert len(server.log) == 2
    assert time.monotonic() - start >= 0.95  # the header's second, not the 0.01 s backoff


def test_5xx_is_retried_until_success(server, make_teacher) -> None:
    server.push(
        Reply(500, {"error": "boom"}), Reply(503, {"error": "busy"}), Reply(200, chat_body("ok"))
    )
    assert make_teacher().chat(MESSAGES).text == "ok"
    assert len(server.log) == 3


def test_5xx_exhausting_retries_names_the_status(server, make_teacher) -> None:
    server.push(*[Reply(503, {"error": "busy"})] * 3)
    with pytest.raises(TeacherError, match=r"kept failing \(HTTP 503.*after 3 attempts"):
        make_teacher(max_attempts=3).chat(MESSAGES)
    assert len(server.log) == 3


def test_slow_reply_is_retried_then_errors_clearly(server, make_teacher) -> None:
    server.push(*[Reply(200, chat_body("late"), delay=1.5)] * 2)
    with pytest.raises(
        TeacherError, match=r"no answer within 0.3s \(2 attempts\); raise the timeout"
    ):
        make_teacher(timeout=0.3, max_attempts=2).chat(MESSAGES)
    assert len(server.log) == 2


def test_rejected_key_is_not_retried(server, make_teacher, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server.push(Reply(401, {"error": "bad key"}))
    with pytest.raises(TeacherAuthError, match="rejected the API key.*set PLD_TEACHER_API_KEY"):
        make_teacher().chat(MESSAGES)
    assert len(server.log) == 1
    assert server.log[0]["headers"]["Authorization"] == "Bearer sk-wrong"


def test_closed_port_is_unreachable(make_teacher) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TeacherUnreachableError, match=f"at {url} is unreachable.*check --teacher"):
        make_teacher(base_url=url, max_attempts=2).chat(MESSAGES)


def test_other_4xx_fails_fast_with_the_server_message(server, make_teacher) -> None:
    server.push(Reply(404, {"error": "model 'nope' not found"}))
    with pytest.raises(TeacherError, match="HTTP 404.*model 'nope' not found.*ends in /v1"):
        make_teacher().chat(MESSAGES)
    assert len(server.log) == 1
    # llama-cpp-python's server words an over-long prompt like this
    server.push(
        Reply(400, {"error": {"message": "This model's maximum context length is 4096 tokens."}})
    )
    with pytest.raises(
        TeacherError, match="HTTP 400.*too long for the teacher's context.*--example-chars"
    ):
        make_teacher().chat(MESSAGES)


# ---- structured output -------------------------------------------------------------------


def test_schema_is_sent_and_malformed_content_raises(server, make_teacher) -> None:
    server.push(Reply(200, chat_body('{"rationale": "because", "rule": ')))
    teacher = make_teacher()
    text = teacher.chat(MESSAGES, json_schema=Rule).text
    fmt = server.log[0]["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Rule"
    assert msgspec.json.encode(fmt["json_schema"]["schema"]) == msgspec.json.encode(
        msgspec.json.schema(Rule)
    )
    with pytest.raises(MalformedReplyError, match="no JSON object") as info:
        parse_json(text, Rule)
    assert info.value.text == text


def test_unsupported_response_format_fails_fast_with_the_fix(server, make_teacher) -> None:
    server.push(Reply(500, {"error": "unknown response_format type 'json_schema'"}))
    with pytest.raises(TeacherError, match="--structured-output json_object"):
        make_teacher().chat(MESSAGES, json_schema=Rule)
    assert len(server.log) == 1  # not retried


def test_json_object_mode_for_llama_cpp_python(server, make_teacher) -> None:
    server.push(Reply(200, chat_body("{}")))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    make_teacher(structured_output="json_object").chat(MESSAGES, json_schema=schema)
    assert server.log[0]["body"]["response_format"] == {"type": "json_object", "schema": schema}


def test_parse_json_finds_fenced_and_embedded_objects() -> None:
    fenced = 'Sure!\n```json\n{"rationale": "r", "rule": "x"}\n```\nDone.'
    assert parse_json(fenced, Rule) == Rule(rationale="r", rule="x")
    prose = 'Here {is} it: {"rationale": "a {brace}", "rule": "y"} -- ok {"other": 1}'
    assert parse_json(prose, Rule) == Rule(rationale="a {brace}", rule="y")
    with pytest.raises(MalformedReplyError, match=r"does not match Rule.*\$.rule"):
        parse_json('{"rationale": "r", "rule": 3}', Rule)
    with pytest.raises(MalformedReplyError, match="does not match Rule"):
        parse_json('{"rationale": "r", "rule": "x", "extra": 1}', Rule)


def test_teacher_spec() -> None:
    assert parse_teacher_spec("openai:gpt-4o-mini@https://api.openai.com/v1/") == (
        "gpt-4o-mini",
        "https://api.openai.com/v1",
    )
    assert parse_teacher_spec("openai:qwen2.5:7b@http://127.0.0.1:11434/v1") == (
        "qwen2.5:7b",
        "http://127.0.0.1:11434/v1",
    )
    assert parse_teacher_spec("openai:gpt-4o") == ("gpt-4o", "https://api.openai.com/v1")
    for bad in [
        "gpt-4o",
        "openai:",
        "openai:m@localhost:8080",
        "ollama:m@http://x/v1",
        "openai:m@",
    ]:
        with pytest.raises(TeacherError, match="malformed teacher spec.*openai:MODEL@BASE_URL"):
            parse_teacher_spec(bad)


# ---- the cache ---------------------------------------------------------------------------


def test_identical_call_is_served_from_cache(server, make_teacher, tmp_path) -> None:
    server.push(Reply(200, chat_body("hello", 11, 4)))
    teacher = make_teacher()
    first = teacher.chat(MESSAGES, max_tokens=16)
    second = teacher.chat(MESSAGES, max_tokens=16)
    assert len(server.log) == 1
    assert (first.text, first.cached) == ("hello", False)
    assert (second.text, second.cached, second.prompt_tokens) == ("hello", True, 11)
    stats = teacher.cache.stats
    assert (stats.calls, stats.hits, stats.prompt_tokens, stats.completion_tokens) == (1, 1, 11, 4)
    # A fresh client on the same directory replays offline; a different parameter does not.
    replay = make_teacher(base_url=f"http://127.0.0.1:{free_port()}/v1", max_attempts=1)
    assert replay.chat(MESSAGES, max_tokens=16).cached
    with pytest.raises(TeacherUnreachableError):
        replay.chat(MESSAGES, max_tokens=17)


def test_failed_and_invalid_replies_are_not_cached(server, make_teacher) -> None:
    server.push(Reply(200, {"not": "a completion"}), Reply(200, chat_body("fine")))
    teacher = make_teacher()
    with pytest.raises(TeacherError, match="unexpected reply.*OpenAI-compatible"):
        teacher.chat(MESSAGES)
    assert teacher.chat(MESSAGES).text == "fine"
    assert teacher.cache.stats.calls == 1


def test_corrupt_entry_is_a_miss_and_is_overwritten(server, make_teacher) -> None:
    server.push(Reply(200, chat_body("one")), Reply(200, chat_body("two")))
    teacher = make_teacher()
    teacher.chat(MESSAGES)
    entries = list(teacher.cache.directory.rglob("*.json"))
    assert len(entries) == 1
    entries[0].write_text('{"key": "trunc')
    assert teacher.chat(MESSAGES).text == "two"
    assert len(server.log) == 2
    assert (
        json.loads(entries[0].read_text())["response"]["choices"][0]["message"]["content"] == "two"
    )
    assert teacher.chat(MESSAGES).cached


# ---- parallel requests and embeddings ----------------------------------------------------


def test_chat_many_keeps_order_and_reports_progress(server, make_teacher) -> None:
    requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(6)]
    # Arrival order is not fixed, so each request is answered with its own question.
    server.responder = lambda body: Reply(
        200, chat_body("echo " + body["messages"][-1]["content"]), delay=0.05
    )
    seen: list[tuple[int, int]] = []
    results = make_teacher().chat_many(
        requests, concurrency=3, progress=lambda d, t: seen.append((d, t))
    )
    assert [r.text for r in results] == [f"echo q{i}" for i in range(6)]
    assert seen == [(d, 6) for d in range(1, 7)]
    assert len(server.log) == 6


def test_chat_many_raises_the_first_error(server, make_teacher) -> None:
    server.responder = lambda body: Reply(401, {"error": "no"})
    requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(20)]
    with pytest.raises(TeacherAuthError):
        make_teacher().chat_many(requests, concurrency=2)
    assert len(server.log) < 20  # requests not yet started were cancelled


def test_embed_batches_and_pools_token_vectors(server, make_teacher) -> None:
    n = EMBED_BATCH_SIZE + 2

    def respond(body: dict[str, Any]) -> Reply:
        texts = body["input"]
        if len(texts) == EMBED_BATCH_SIZE:  # rows out of order: the index puts them back
            rows = [{"index": i, "embedding": [float(t[1:]), 1.0]} for i, t in enumerate(texts)]
            return Reply(200, {"data": rows[::-1]})
        # token-level vectors (llama-cpp-python's server without pooling) are mean-pooled
        rows = [{"index": i, "embedding": [[float(t[1:]), 2.0], [float(t[1:]), 4.0]]}
                for i, t in enumerate(texts)]  # fmt: skip
        return Reply(200, {"data": rows})

    server.responder = respond
    teacher = make_teacher()
    texts = [f"t{i}" for i in range(n)]
    expected = [[float(i), 1.0] for i in range(EMBED_BATCH_SIZE)] + [
        [float(i), 3.0] for i in range(EMBED_BATCH_SIZE, n)
    ]
    seen: list[tuple[int, int]] = []
    assert teacher.embed(texts, progress=lambda d, t: seen.append((d, t))) == expected
    assert [e["body"]["input"] for e in server.log] == [
        texts[:EMBED_BATCH_SIZE],
        texts[EMBED_BATCH_SIZE:],
    ]
    assert all(e["path"] == "/v1/embeddings" for e in server.log)
    assert seen == [(EMBED_BATCH_SIZE, n), (n, n)]  # once per batch
    assert teacher.embed(texts) == expected  # each batch from its cache entry
    assert len(server.log) == 2
    assert teacher.embed([]) == [] and len(server.log) == 2


def test_embeddings_of_the_wrong_shape_are_not_cached(server, make_teacher) -> None:
    server.push(
        Reply(200, {"data": [{"index": 0, "embedding": [1.0]}]}),  # one vector for two texts
        Reply(200, {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}]}),
    )
    teacher = make_teacher()
    with pytest.raises(TeacherError, match="unexpected reply.*OpenAI-compatible"):
        teacher.embed(["a", "b"])
    assert teacher.embed(["a", "b"]) == [[1.0], [2.0]]
    assert teacher.cache.stats.calls == 1


# ---- the real thing ----------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_real_openai_compatible_server(tmp_path) -> None:
    from pld.models import resolve

    server = LlamaServer(
        resolve("smollm2-135m-instruct").path, tmp_path / "server.log", n_ctx=1024,
        extra=("--embedding", "true"),
    )  # fmt: skip
    server.start()
    base = server.url
    try:
        with OpenAITeacher(
            "smollm2", base, cache=ResponseCache(tmp_path / "cache"), timeout=60,
            max_attempts=2, structured_output="json_object",
        ) as teacher:  # fmt: skip
            result = teacher.chat(
                [{"role": "user", "content": "Reply with a JSON object with key a."}],
                json_schema={
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "required": ["a"],
                },
                max_tokens=16,
            )
            assert not result.cached and result.prompt_tokens > 0 and result.completion_tokens > 0
            assert json.loads(result.text)["a"]  # the grammar holds the reply to the schema
            assert teacher.chat(
                [{"role": "user", "content": "Reply with a JSON object with key a."}],
                json_schema={
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "required": ["a"],
                },
                max_tokens=16,
            ).cached
            assert (teacher.cache.stats.calls, teacher.cache.stats.hits) == (1, 1)
            teacher.structured_output = "json_schema"  # this server takes json_object only
            with pytest.raises(TeacherError, match="--structured-output json_object"):
                teacher.chat(MESSAGES, json_schema=Rule, max_tokens=8)
            # the same server embeds: token-level vectors, mean-pooled here
            vectors = teacher.embed(["a short rule", "another rule"])
            assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
            assert vectors[0] != vectors[1]
            assert teacher.embed(["a short rule", "another rule"]) == vectors
            assert (teacher.cache.stats.calls, teacher.cache.stats.hits) == (2, 2)
    finally:
        server.stop()

"""The local teacher, on the real GGUF models: SmolLM2 135M (ChatML) for chat, Gemma-3 270M
(no chat template in its GGUF, so the "gemma" format is passed explicitly) for chat and
embeddings. Replies are grammar-constrained JSON; repeats must come from the cache without
loading a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest

from pld.distiller.cache import ResponseCache
from pld.distiller.local import LocalTeacher, _fold_system
from pld.distiller.teacher import EMBED_BATCH_SIZE, ChatRequest, parse_json
from pld.errors import ModelNotFoundError, PldError, TeacherError
from pld.models import resolve

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
MESSAGES = [
    {"role": "system", "content": "You judge the sentiment of reviews. Reply in JSON."},
    {"role": "user", "content": "Review: The food was wonderful and the staff were kind."},
]


class Verdict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    label: Literal["positive", "negative"]
    reason: Annotated[str, msgspec.Meta(max_length=40)]


def small(name_or_path: str, cache: ResponseCache) -> LocalTeacher:
    # One thread: llama.cpp's spinning thread pool slows down badly when the cores are shared.
    return LocalTeacher(name_or_path, cache=cache, n_ctx=1024, n_threads=1)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.mark.model
def test_json_schema_chat_then_cache_without_loading(cache_dir: Path) -> None:
    cache = ResponseCache(cache_dir)
    with small(SMOL, cache) as teacher:
        assert teacher.model == SMOL
        first = teacher.chat(MESSAGES, json_schema=Verdict, max_tokens=64)
        verdict = parse_json(first.text, Verdict)
        assert verdict.label in ("positive", "negative")
        assert not first.cached and first.prompt_tokens > 20 and first.completion_tokens > 0
        assert cache.stats.calls == 1
        assert cache.stats.prompt_tokens == first.prompt_tokens

        again = teacher.chat(MESSAGES, json_schema=Verdict, max_tokens=64)
        assert again.cached and again.text == first.text
        assert cache.stats.calls == 1 and cache.stats.hits == 1
    assert teacher._llm is None  # closed

    # A fresh teacher on the same directory answers from disk and never loads the model;
    # the Struct and its JSON schema as a dict are the same request.
    fresh_cache = ResponseCache(cache_dir)
    fresh = small(SMOL, fresh_cache)
    schema = msgspec.json.schema(Verdict)
    for json_schema in (Verdict, schema):
        hit = fresh.chat(MESSAGES, json_schema=json_schema, max_tokens=64)
        assert hit.cached and hit.text == first.text
    assert fresh._llm is None and fresh._embedder is None
    assert fresh_cache.stats.calls == 0 and fresh_cache.stats.hits == 2


@pytest.mark.model
def test_chat_many_keeps_order_and_reports_progress(cache_dir: Path) -> None:
    teacher = small(SMOL, ResponseCache(cache_dir))
    words = ["apple", "river", "mountain"]
    requests = [
        ChatRequest(
            messages=[{"role": "user", "content": f"Repeat this word once: {w}"}], max_tokens=8
        )
        for w in words
    ]
    seen: list[tuple[int, int]] = []
    results = teacher.chat_many(requests, concurrency=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert [r.cached for r in results] == [False, False, False]
    for request, result in zip(requests, results):
        alone = teacher.chat(request.messages, max_tokens=request.max_tokens)
        assert alone.cached and alone.text == result.text
    teacher.close()


@pytest.mark.model
def test_gemma_chat_format_keeps_the_system_message(cache_dir: Path) -> None:
    cache = ResponseCache(cache_dir)
    smol = small(SMOL, cache)
    smol.chat(MESSAGES, max_tokens=4)
    with small(GEMMA, cache) as gemma:
        assert gemma.resolved.chat_format == "gemma"
        # Another model file never hits SmolLM2's entry for the same request.
        with_system = gemma.chat(MESSAGES, json_schema=Verdict, max_tokens=48)
        assert not with_system.cached
        assert parse_json(with_system.text, Verdict).label in ("positive", "negative")
        without = gemma.chat(MESSAGES[1:], max_tokens=2)
        # llama-cpp-python's "gemma" format drops system messages; ours folds them in.
        assert with_system.prompt_tokens > without.prompt_tokens + 8
    assert cache.stats.calls == 3


def test_fold_system_puts_system_text_before_the_first_user_turn() -> None:
    assert _fold_system(MESSAGES) == [
        {"role": "user", "content": MESSAGES[0]["content"] + "\n\n" + MESSAGES[1]["content"]}
    ]
    assert _fold_system(MESSAGES[1:]) == MESSAGES[1:]
    assistant_first = [MESSAGES[0], {"role": "assistant", "content": "ok"}]
    assert _fold_system(assistant_first)[0] == {"role": "user", "content": MESSAGES[0]["content"]}


@pytest.mark.model
def test_embeddings_are_distinct_normalised_and_cached(cache_dir: Path) -> None:
    texts = ["a cat sleeps on the sofa", "interest rates rose again", "a cat sleeps on the sofa"]
    cache = ResponseCache(cache_dir)
    with small(GEMMA, cache) as teacher:
        vectors = teacher.embed(texts)
        assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 100
        assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in vectors)
        cosine = sum(a * b for a, b in zip(vectors[0], vectors[1]))
        assert cosine < 0.95
        # The same text twice in one batch: Gemma's vectors depend a little on their batch
        # neighbours (cosine about 0.9998), which is why each batch is cached whole.
        same = sum(a * b for a, b in zip(vectors[0], vectors[2]))
        assert same > 0.999
        assert cache.stats.calls == 1 and cache.stats.prompt_tokens > 10

        # Past 64 texts the batch splits, each batch its own cache entry.
        assert EMBED_BATCH_SIZE == 64
        many = teacher.embed([f"item number {i}" for i in range(70)])
        assert len(many) == 70 and cache.stats.calls == 3

    fresh = small(GEMMA, ResponseCache(cache_dir))
    assert fresh.embed(texts) == vectors
    assert fresh._embedder is None and fresh.cache.stats.calls == 0
    assert fresh.embed([]) == []


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist; pass the path to a .gguf"):
        LocalTeacher(str(tmp_path / "missing.gguf"), cache=ResponseCache(tmp_path))
    with pytest.raises(PldError, match="unknown model 'no-such-model'"):
        LocalTeacher("no-such-model", cache=ResponseCache(tmp_path))


@pytest.mark.model
def test_unloadable_model_raises_teacher_error_on_first_call(tmp_path: Path) -> None:
    # A GGUF whose header reads fine but whose tensors are cut off.
    broken = tmp_path / "broken.gguf"
    with open(resolve(SMOL).path, "rb") as src:
        broken.write_bytes(src.read(4 << 20))
    teacher = small(str(broken), ResponseCache(tmp_path / "cache"))
    assert teacher.model == "broken.gguf"
    with pytest.raises(TeacherError, match=r"cannot load local teacher model 'broken.gguf' from"):
        teacher.chat(MESSAGES, max_tokens=4)

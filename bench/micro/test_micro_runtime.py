"""Micro-benchmarks of the runtime's hot paths on the real model and the benchmark bundle:
tokenising a request, one classify, a batch of 16, restoring a prefix state.

Run with ``just bench-micro`` (compares with bench/micro/baseline); the default test run does
not collect this folder. Slow paths use ``benchmark.pedantic`` with fixed rounds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pld.runtime import Bundle, Classifier, ClassifierOptions, Model

# Opening a classifier on the benchmark bundle primes 4,664 tokens (about 20 s on 2 idle cores,
# minutes on a busy machine); the first test that uses a classifier pays for it in its setup.
pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.benchmark(group="tokenize")
def test_tokenize_suffix(benchmark: BenchmarkFixture, single: Classifier, texts: list[str]) -> None:
    """One request's input checks, tokenisation and chat-template tail."""
    tokens, cut = benchmark(single.request_tokens, texts[0])
    assert tokens and not cut
    benchmark.extra_info["suffix_tokens"] = len(tokens)


@pytest.mark.benchmark(group="classify")
def test_classify_one(benchmark: BenchmarkFixture, single: Classifier, texts: list[str]) -> None:
    """One request on the primed prefix (windowed cache, the CPU default)."""
    pred = benchmark.pedantic(  # type: ignore[no-untyped-call]
        single.classify, args=(texts[0],), rounds=15, warmup_rounds=2
    )
    assert pred.label in single.labels
    benchmark.extra_info["prefix_tokens"] = len(single.prefix_tokens)


@pytest.mark.benchmark(group="classify")
def test_classify_batch_16(
    benchmark: BenchmarkFixture, batched: Classifier, texts: list[str]
) -> None:
    """Sixteen requests in one ``classify_many`` over copies of the prefix; time per batch."""
    assert len(texts) == batched.options.max_batch == 16
    preds = benchmark.pedantic(  # type: ignore[no-untyped-call]
        batched.classify_many, args=(texts,), rounds=3, warmup_rounds=1
    )
    assert [p.label in batched.labels for p in preds] == [True] * 16
    benchmark.extra_info["prefix_tokens"] = len(batched.prefix_tokens)


@pytest.mark.benchmark(group="restore")
def test_open_with_saved_state(
    benchmark: BenchmarkFixture,
    single: Classifier,  # primed first, so the state file exists
    bundle: Bundle,
    model: Model,
    options: ClassifierOptions,
    state_dir: Path,
) -> None:
    """A cold start on a device: a classifier whose prefix state file exists (tokenise the
    prefix, create the context, read the file, restore), on an already loaded model."""
    opts = dataclasses.replace(options, state_dir=state_dir)
    restored: list[float | None] = []

    def open_restored() -> None:
        clf = Classifier(bundle, model, opts)
        restored.append(clf.restore_ms)
        clf.close()

    benchmark.pedantic(open_restored, rounds=8, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert restored and None not in restored, "a classifier primed instead of restoring"


@pytest.mark.benchmark(group="restore")
def test_engine_restore(benchmark: BenchmarkFixture, single: Classifier, texts: list[str]) -> None:
    """The engine's share of a restore: load the prefix's KV state bytes into sequence 0."""
    before = single.classify(texts[1])
    state = single.engine.prefix_state()
    ok = benchmark.pedantic(  # type: ignore[no-untyped-call]
        single.engine.restore, args=(single.prefix_tokens, state), rounds=10, warmup_rounds=1
    )
    assert ok
    assert single.classify(texts[1]).probs == before.probs  # the restored prefix is the same
    benchmark.extra_info["state_bytes"] = len(state)

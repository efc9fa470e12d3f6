"""The runtime on the real Gemma-3 270M model: prefix reuse is exact, evaluated once, isolated
between requests, restorable from disk and thread-safe. No part of llama.cpp is mocked.
"""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest
from conftest import records

from pld.bench.inputs import default_bundle
from pld.errors import BundleError, ContextOverflowError, InputError, ModelMismatchError
from pld.runtime import Classifier, load_bundle, shipped_bundles
from pld.runtime.bundle import Bundle, Label, Student, Task

pytestmark = pytest.mark.model

# Largest |p_reuse - p_full| over label probabilities we accept. Measured: 0.0 on all 30 records
# (flash attention off; the reference decodes prefix and suffix as separate batches, so both
# paths run the same kernels and only the cache reuse could make them differ).
REUSE_TOL = 1e-6
# Batched decoding changes kernel shapes and KV cell order; measured at most ~0.05 here.
BATCH_TOL = 0.1


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("states")
    cache: dict[str, Classifier] = {}

    def get(name: str, **kw) -> Classifier:
        key = name + repr(sorted(kw.items()))
        if key not in cache:
            cache[key] = Classifier.open(name, state_dir=state, **kw)
        return cache[key]

    yield get
    for c in cache.values():
        c.close()


def _shortest(task: str, k: int, pool: int) -> list[str]:
    return [r["text"] for r in sorted(records(task, n=pool), key=lambda r: len(r["text"]))[:k]]


# 30 records; the fast run (-m "not slow") keeps the StereoSet case
CASES = [
    ("stereoset", 16, 16),
    pytest.param("logiqa", 10, 10, marks=pytest.mark.slow),
    pytest.param("contractnli", 4, 24, marks=pytest.mark.slow),
]


@pytest.mark.timeout(900)  # the reference path re-reads the whole prompt for every record
@pytest.mark.parametrize(("task", "k", "pool"), CASES)
def test_prefix_reuse_matches_full_evaluation(opened, task: str, k: int, pool: int) -> None:
    texts = _shortest(task, k, pool)
    reuse = opened(task, calibrate=False)
    full = opened(task, calibrate=False, prefix_cache=False, max_batch=1, n_ctx=4096)
    worst = 0.0
    for text in texts:
        a, b = reuse.classify(text), full.classify_full(text)
        assert a.label == b.label, (text[:80], a.probs, b.probs)
        worst = max(worst, max(abs(a.probs[x] - b.probs[x]) for x in a.probs))
    assert worst <= REUSE_TOL, worst


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1,500-token prompts decoded 16 tokens at a time
def test_windowed_cache_stays_exact_across_requests() -> None:
    # With n_batch 16 every ~30-token input spans several ubatches, the case where decoding
    # could overwrite the prefix's last sliding window. (Inputs within one ubatch, and every
    # other layout, are compared with evaluation from scratch in test_layouts.py.)
    n_batch = 16
    # The system prompt must outgrow the sliding window (512 + n_batch cells) for cells to be
    # reused at all: take the first 45 rules of the benchmark bundle (~1,500 tokens).
    long = load_bundle(default_bundle())
    b = Bundle.create(
        name="window",
        task=long.task,
        instructions=long.instructions[:45],
        student=Student(model="gemma-3-270m"),
    )
    texts = _shortest("stereoset", 5, 5)[-3:]  # the longest span several ubatches
    kw = dict(calibrate=False, prefix_cache=False, n_batch=n_batch)
    reuse = Classifier.open(b, **kw)
    full = Classifier.open(b, **kw)
    try:
        assert reuse.engine.windowed and reuse.model.n_swa > 0
        assert len(reuse.prefix_tokens) > reuse.model.n_swa + n_batch + 256
        assert max(len(reuse.request_tokens(t)[0]) for t in texts) > 16
        got = [
            reuse.classify(t).probs for t in texts * 2
        ]  # later requests see earlier ones' traces
        want = [full.classify_full(t).probs for t in texts]
        assert got == want * 2
    finally:
        reuse.close()
        full.close()


def test_prefix_is_evaluated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Count what llama.cpp itself is asked to decode, not the engine's own bookkeeping: every
    # llama_decode call goes through this wrapper, which records the positions in its batch.
    import llama_cpp.llama_cpp as L

    positions: list[int] = []
    real_decode = L.llama_decode

    def counting_decode(ctx, batch):  # type: ignore[no-untyped-def]
        positions.extend(batch.pos[i] for i in range(batch.n_tokens))
        return real_decode(ctx, batch)

    monkeypatch.setattr(L, "llama_decode", counting_decode)
    clf = Classifier.open("stereoset", calibrate=False, prefix_cache=False)
    try:
        n_prefix = len(clf.prefix_tokens)
        assert sorted(positions) == list(range(n_prefix))  # priming: each position once
        texts = _shortest("stereoset", 6, 6)
        suffix_total = sum(len(clf.request_tokens(t)[0]) for t in texts)
        for t in texts:
            clf.classify(t)
        clf.classify_many(texts)
        # 12 requests later, no prefix position was decoded again: only the requests' tokens
        assert sorted(p for p in positions if p < n_prefix) == list(range(n_prefix))
        assert len([p for p in positions if p >= n_prefix]) == 2 * suffix_total
        # and the engine's own counters agree with what llama.cpp saw
        stats = clf.engine.stats
        assert stats.primes == 1 and stats.prefix_tokens_decoded == n_prefix
        assert stats.suffix_tokens_decoded == 2 * suffix_total and stats.requests == 12
    finally:
        clf.close()


def test_batched_requests_count_their_pads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Batched requests start ALIGN cells apart, after pad tokens (runtime/batch.py): the
    # engine's counters must add up to every token llama.cpp is asked to decode, pads included.
    import llama_cpp.llama_cpp as L

    sizes: list[int] = []
    real_decode = L.llama_decode

    def counting_decode(ctx, batch):  # type: ignore[no-untyped-def]
        sizes.append(batch.n_tokens)
        return real_decode(ctx, batch)

    monkeypatch.setattr(L, "llama_decode", counting_decode)
    clf = Classifier.open("stereoset", calibrate=False, prefix_cache=False, max_batch=8)
    try:
        texts = [r["text"] for r in records("stereoset", n=8)]
        stats = clf.engine.stats
        before = (sum(sizes), stats.suffix_tokens_decoded, stats.pad_tokens_decoded)
        clf.classify_many(texts)
        pads = stats.pad_tokens_decoded - before[2]
        assert pads > 0  # these eight inputs do not all end on a multiple of ALIGN tokens
        assert sum(sizes) - before[0] == stats.suffix_tokens_decoded - before[1] + pads
    finally:
        clf.close()


@pytest.mark.parametrize("max_batch", [1, 8], ids=["windowed", "shared"])
def test_requests_do_not_affect_each_other(opened, max_batch: int) -> None:
    clf = opened("stereoset", calibrate=False, max_batch=max_batch)
    assert clf.engine.windowed == (max_batch == 1)
    texts = _shortest("stereoset", 6, 12)
    forward = [clf.classify(t) for t in texts]
    backward = [clf.classify(t) for t in reversed(texts)][::-1]
    for f, b in zip(forward, backward):
        assert f.probs == b.probs  # sequential decoding is bit-for-bit deterministic
    batched = clf.classify_many(texts)
    if max_batch == 1:
        assert [b.probs for b in batched] == [f.probs for f in forward]
    for f, b in zip(forward, batched):
        diff = max(abs(f.probs[x] - b.probs[x]) for x in f.probs)
        assert diff <= BATCH_TOL, diff
        ranked = sorted(f.probs.values(), reverse=True)
        if ranked[0] - ranked[1] > 2 * BATCH_TOL:
            assert f.label == b.label


def test_restored_prefix_state_equals_fresh_prime(tmp_path: Path) -> None:
    texts = _shortest("logiqa", 3, 10)
    first = Classifier.open("logiqa", state_dir=tmp_path)
    assert first.prime_ms is not None and first.restore_ms is None
    fresh = [first.classify(t).probs for t in texts]
    first.close()
    second = Classifier.open("logiqa", state_dir=tmp_path)
    try:
        assert second.restore_ms is not None and second.prime_ms is None
        assert [second.classify(t).probs for t in texts] == fresh
        assert second.engine.stats.prefix_tokens_decoded == 0
    finally:
        second.close()


def test_state_of_another_bundle_or_model_is_never_used(tmp_path: Path) -> None:
    Classifier.open("logiqa", state_dir=tmp_path).close()
    other_bundle = Classifier.open("stereoset", state_dir=tmp_path)
    assert other_bundle.prime_ms is not None, "restored a state primed for another bundle"
    other_bundle.close()
    other_model = Classifier.open(
        "logiqa", state_dir=tmp_path, model="smollm2-135m-instruct", allow_model_mismatch=True
    )
    assert other_model.prime_ms is not None, "restored a state primed with another model"
    other_model.close()
    # a damaged file is ignored (primed again), never loaded
    for f in tmp_path.glob("*.state"):
        f.write_bytes(f.read_bytes()[:1000])
    damaged = Classifier.open("logiqa", state_dir=tmp_path)
    assert damaged.prime_ms is not None
    damaged.close()


def test_four_threads_agree_with_one(opened) -> None:
    clf = opened("stereoset", calibrate=False)
    texts = _shortest("stereoset", 8, 8)
    expected = [clf.classify(t).probs for t in texts]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        order = texts[k:] + texts[:k]
        results[k] = [(t, clf.classify(t).probs) for t in order]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lookup = dict(zip(texts, expected))
    for k in range(4):
        for text, probs in results[k]:
            assert probs == lookup[text]


def test_calibration_divides_out_the_content_free_prior(opened) -> None:
    raw = opened("stereoset", calibrate=False)
    cal = opened("stereoset", calibrate=True)
    assert cal._cf is not None and raw._cf is None
    text = _shortest("stereoset", 1, 3)[0]
    p_raw, p_cal = raw.classify(text), cal.classify(text)
    assert not p_raw.calibrated and p_cal.calibrated
    expected = np.array([p_raw.probs[x] for x in raw.labels]) / cal._cf
    expected /= expected.sum()
    assert np.allclose([p_cal.probs[x] for x in cal.labels], expected, atol=1e-9)


def test_multi_token_labels_are_teacher_forced(opened, tmp_path: Path) -> None:
    # "not_mentioned" / "not_applicable" share their first tokens: one forward step cannot
    # tell them apart, so each continuation is scored token by token.
    task = Task(
        name="shared-prefix",
        description="Decide whether the hypothesis is addressed.",
        labels=[
            Label(name="not_mentioned", definition="silent"),
            Label(name="not_applicable", definition="out of scope"),
            Label(name="entailment", definition="stated"),
        ],
        input_format="a sentence",
    )
    b = Bundle.create(name="shared-prefix", task=task, student=Student(model="gemma-3-270m"))
    clf = Classifier.open(b, prefix_cache=False, calibrate=False)
    try:
        toks = clf.label_tokens
        assert toks[0][0] == toks[1][0] and len(toks[0]) > 1
        text = "The agreement is silent on the matter."
        suf = clf.request_tokens(text)[0]
        got = clf.engine.score([suf], toks)[0]
        for k, lab in enumerate(toks):  # chain rule, one single-token query per step
            want = sum(clf.engine.score([suf + lab[:j]], [[lab[j]]])[0, 0] for j in range(len(lab)))
            # batch shapes differ between the two ways, so allow kernel noise (measured 0.06);
            # a wrong position or a lane that misses the prefix is off by whole nats
            assert got[k] == pytest.approx(want, abs=0.15)
        p = clf.classify(text)
        assert set(p.probs) == {"not_mentioned", "not_applicable", "entailment"}
        assert sum(p.probs.values()) == pytest.approx(1.0)
    finally:
        clf.close()


def test_bad_inputs_get_clear_errors(opened) -> None:
    clf = opened("stereoset", calibrate=False)
    with pytest.raises(InputError, match="empty"):
        clf.classify("   ")
    with pytest.raises(InputError, match="not valid UTF-8.*0xff"):
        clf.classify(b"caf\xff")
    with pytest.raises(InputError, match="surrogate"):
        clf.classify("bad \udc80 text")
    long = "word " * 5000
    with pytest.raises(
        ContextOverflowError, match=r"input has \d+ tokens but only \d+ fit \(context \d+ tokens"
    ):
        clf.classify(long)
    assert clf.classify(
        b"Target: nurse\nContext: The nurse was BLANK.\nSentence: The nurse was caring."
    ).label


def test_truncate_when_asked(opened) -> None:
    clf = opened("stereoset", calibrate=False, truncate=True)
    p = clf.classify("word " * 5000)
    assert p.truncated and p.label in clf.labels


def test_model_sha_mismatch_is_an_error(tmp_path: Path) -> None:
    b = load_bundle(shipped_bundles()["stereoset"])
    with pytest.raises(ModelMismatchError, match="allow_model_mismatch"):
        Classifier.open(b, model="smollm2-135m-instruct")
    wrong = msgspec.structs.replace(b, student=Student(model="gemma-3-270m", sha256="0" * 64))
    with pytest.raises(ModelMismatchError, match="sha256"):
        Classifier.open(wrong)


def test_invalid_bundle_names_the_field(tmp_path: Path) -> None:
    raw = msgspec.json.decode(shipped_bundles()["stereoset"].read_bytes())
    raw["task"]["labels"][0]["definition"] = 42
    bad = tmp_path / "bad.pld.json"
    bad.write_bytes(msgspec.json.encode(raw))
    with pytest.raises(BundleError, match=r"task\.labels\[0\]\.definition"):
        Classifier.open(str(bad))

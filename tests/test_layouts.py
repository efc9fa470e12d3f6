"""Every way the runtime can lay out a request gives the answer of evaluating it from scratch:
windowed, shared, batched with any neighbours, restored from a state file.

Gemma-3 270M turns last-bit rounding into label probabilities up to 0.1 apart, and llama.cpp's
CPU kernels round by a KV cell's offset and a row's place in a compute step, so this holds only
because the engine lays cells and rows out the same way in every layout (see runtime/engine.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import records

from pld.bench.inputs import default_bundle
from pld.runtime import Classifier, load_bundle
from pld.runtime.batch import MIN_ROWS, decode_calls
from pld.runtime.bundle import Bundle, Student

# Largest |p - p_reference| per label probability accepted (the bound); measured 0.0.
TOL = 0.01
# Labels must agree wherever the reference's top two probabilities are further apart than this.
MARGIN = 0.02


def test_decode_calls_keep_each_request_on_its_own_kernels() -> None:
    # lengths modulo 4 decide: a request with a ragged end closes its call, short ones go alone,
    # and a call never outgrows one compute step (requests start 16 rows apart)
    assert decode_calls([8, 12, 9, 16, 10], limit=8, cap=512) == [[0, 1, 2], [3, 4]]
    assert decode_calls([8, 8, 8], limit=2, cap=512) == [[0, 1], [2]]
    assert decode_calls([MIN_ROWS - 1, 8, 5, 12], limit=8, cap=512) == [[0], [1], [2], [3]]
    assert decode_calls([20, 20, 20], limit=8, cap=52) == [[0, 1], [2]]
    assert decode_calls([60, 8], limit=8, cap=48) == [[0], [1]]
    assert decode_calls([], limit=8, cap=512) == []


def _bundle() -> Bundle:
    # 24 rules of the benchmark bundle (~900 tokens): with n_batch 128 the prompt outgrows the
    # windowed cache (n_swa + 128 cells), which moves its window while priming, and the state
    # file keeps only the last window
    long = load_bundle(default_bundle())
    return Bundle.create(
        name="layouts",
        task=long.task,
        instructions=long.instructions[:24],
        student=Student(model="gemma-3-270m"),
    )


def _worst(got: list[dict[str, float]], want: list[dict[str, float]]) -> float:
    return max(abs(g[k] - w[k]) for g, w in zip(got, want, strict=True) for k in w)


def _flips(got: list[dict[str, float]], want: list[dict[str, float]]) -> list[int]:
    out = []
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        top = sorted(w.values(), reverse=True)
        if top[0] - top[1] > MARGIN and max(g, key=g.__getitem__) != max(w, key=w.__getitem__):
            out.append(i)
    return out


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_layout_equals_evaluation_from_scratch(tmp_path: Path) -> None:
    b = _bundle()
    texts = [r["text"] for r in records("stereoset", n=48)]
    kw = dict(calibrate=False, state_dir=tmp_path, n_batch=128, n_threads=2)
    got: dict[str, list[dict[str, float]]] = {}
    with Classifier.open(b, max_batch=1, **kw) as windowed:
        assert windowed.engine.windowed and windowed.prime_ms is not None
        assert len(windowed.prefix_tokens) > windowed.model.n_swa + 128
        got["windowed"] = [windowed.classify(t).probs for t in texts]
        # the ground truth: prefix and input evaluated from scratch (a few: seconds each)
        truth = [windowed.classify_full(t).probs for t in texts[:3]]
    with Classifier.open(b, max_batch=1, **kw) as restored:
        assert restored.restore_ms is not None
        got["windowed, restored"] = [restored.classify(t).probs for t in texts]
    with Classifier.open(b, max_batch=8, **kw) as shared:
        assert not shared.engine.windowed and shared.prime_ms is not None
        got["shared"] = [shared.classify(t).probs for t in texts]
        for size in (3, 8):
            got[f"batches of {size}"] = [
                p.probs
                for start in range(0, len(texts), size)
                for p in shared.classify_many(texts[start : start + size])
            ]
    with Classifier.open(b, max_batch=8, **kw) as restored:
        assert restored.restore_ms is not None
        got["shared, restored"] = [p.probs for p in restored.classify_many(texts)]
    reference = got["windowed"]
    assert _worst(reference[:3], truth) <= TOL
    for name, probs in got.items():
        assert _worst(probs, reference) <= TOL, name
        assert _flips(probs, reference) == [], name

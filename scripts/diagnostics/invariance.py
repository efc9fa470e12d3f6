"""Largest |dp| of each layout against the windowed one-at-a-time answers (and the windowed ones
against evaluation from scratch): 48 StereoSet dev inputs, 24 rules of the benchmark bundle
(~900 tokens), Gemma-3 270M, n_batch 128, as tests/test_layouts.py; then the issue's case, the
full 4,664-token bundle on 24 inputs, max_batch 1 against 8. Prints one JSON object.

    python scripts/diagnostics/invariance.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pld.bench.inputs import default_bundle
from pld.runtime import Classifier, load_bundle
from pld.runtime.bundle import Bundle, Student

Probs = list[dict[str, float]]
DATA = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "data" / "stereoset" / "dev.jsonl"
)


def worst(got: Probs, want: Probs) -> float:
    return max(abs(g[k] - w[k]) for g, w in zip(got, want, strict=True) for k in w)


def flips(got: Probs, want: Probs) -> int:
    return sum(
        max(g, key=g.__getitem__) != max(w, key=w.__getitem__)
        for g, w in zip(got, want, strict=True)
    )


def main() -> None:
    out: dict[str, object] = {"load_start": os.getloadavg()}
    long = load_bundle(default_bundle())
    b = Bundle.create(name="layouts", task=long.task, instructions=long.instructions[:24],
                      student=Student(model="gemma-3-270m"))  # fmt: skip
    texts = [json.loads(x)["text"] for x in DATA.read_text().splitlines()[:48]]
    with tempfile.TemporaryDirectory() as d:
        kw: dict[str, object] = dict(calibrate=False, state_dir=d, n_batch=128, n_threads=2)
        got: dict[str, Probs] = {}
        with Classifier.open(b, max_batch=1, **kw) as w:  # type: ignore[arg-type]
            got["windowed"] = [w.classify(t).probs for t in texts]
            truth = [w.classify_full(t).probs for t in texts[:6]]
        with Classifier.open(b, max_batch=8, **kw) as s:  # type: ignore[arg-type]
            got["shared"] = [s.classify(t).probs for t in texts]
            for size in (3, 8):
                got[f"batches of {size}"] = [
                    p.probs
                    for i in range(0, 48, size)
                    for p in s.classify_many(texts[i : i + size])
                ]
        with Classifier.open(b, max_batch=8, **kw) as r:  # type: ignore[arg-type]
            got["shared, restored"] = [p.probs for p in r.classify_many(texts)]
        out["windowed vs scratch (6)"] = worst(got["windowed"][:6], truth)
        for k, v in got.items():
            out[f"{k}: max|dp| vs windowed"] = worst(v, got["windowed"])
            out[f"{k}: label flips vs windowed"] = flips(v, got["windowed"])
        t24 = texts[:24]
        opts: dict[str, object] = dict(calibrate=False, state_dir=d, n_threads=2)
        with Classifier.open(default_bundle(), max_batch=1, **opts) as one:  # type: ignore[arg-type]
            a = [one.classify(t).probs for t in t24]
        with Classifier.open(default_bundle(), max_batch=8, **opts) as eight:  # type: ignore[arg-type]
            batched = [
                p.probs for i in range(0, 24, 8) for p in eight.classify_many(t24[i : i + 8])
            ]
            single = [eight.classify(t).probs for t in t24]
        out["issue: max_batch 1 vs 8 (classify_many)"] = worst(batched, a)
        out["issue: classify vs classify_many on max_batch 8"] = worst(single, batched)
        out["issue: label agreement 1 vs 8"] = 1 - flips(batched, a) / 24
    out["load_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

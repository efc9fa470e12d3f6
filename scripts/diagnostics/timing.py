"""Per-request latency of the windowed layout, of the shared cache one at a time and of batches
of 8, and both priming times: the 4,664-token benchmark bundle, 32 inputs, Gemma-3 270M, 2
threads. Run it alone, once per commit being compared. Prints one JSON object.

    python scripts/diagnostics/timing.py
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from pld.bench.inputs import default_bundle, default_texts
from pld.runtime import Classifier


def p50_ms(clf: Classifier, texts: list[str]) -> float:
    ts = []
    for t in texts:
        t0 = time.perf_counter()
        clf.classify(t)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def main() -> None:
    texts = default_texts()[:32]
    out: dict[str, object] = {"load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        with Classifier.open(
            default_bundle(), max_batch=1, calibrate=False, state_dir=d, n_threads=2
        ) as c:
            out["prime_ms_windowed"] = c.prime_ms
            c.classify(texts[0])
            out["windowed_p50_ms"] = p50_ms(c, texts)
        with Classifier.open(
            default_bundle(), max_batch=8, calibrate=False, state_dir=d, n_threads=2
        ) as c:
            out["prime_ms_shared"] = c.prime_ms
            c.classify_many(texts[:8])
            t0 = time.perf_counter()
            for i in range(0, 32, 8):
                c.classify_many(texts[i : i + 8])
            out["batched8_ms_per_request"] = (time.perf_counter() - t0) * 1000 / 32
            out["shared_one_p50_ms"] = p50_ms(c, texts[:16])
    out["load_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""What the on-device acceptance check costs: one check set of 20 inputs (the test fixtures' dev
records) made for each shipped bundle, then measured three times on the primed classifier, as
the puller does before activation.

    python scripts/diagnostics/acceptance_cost.py
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from pld.fleet.acceptance import make_check_set, measure, parse_check_set
from pld.runtime import Classifier, load_bundle, resolve_bundle_path

DATA = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "data"


def main() -> None:
    print("load", os.getloadavg(), flush=True)
    for name in ("stereoset", "contractnli"):
        raw = make_check_set(name, DATA / name / "dev.jsonl", n=20)
        path = resolve_bundle_path(name)
        b = load_bundle(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        check = parse_check_set(raw, b.task.name, sha, b.labels)
        with Classifier.open(name) as clf:
            for _ in range(3):
                t0 = time.perf_counter()
                acc = measure(clf, check)
                dt = time.perf_counter() - t0
                print(
                    f"{name}: {len(check.cases)} inputs in {dt:.2f} s, accuracy {acc}", flush=True
                )
    print("load", os.getloadavg(), flush=True)


if __name__ == "__main__":
    main()

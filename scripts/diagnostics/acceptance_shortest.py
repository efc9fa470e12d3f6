"""The acceptance check's cost on the device: the first 20 records of Contract-NLI's dev split
against the 20 that ``fleet.acceptance.pick_cases`` takes (each label's shortest in turn), both
timed twice on one primed classifier, Gemma-3 270M, as the puller runs a check.

    python scripts/diagnostics/acceptance_shortest.py [DEV.jsonl]
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import msgspec

from pld.fleet.acceptance import make_check_set, measure, parse_check_set
from pld.runtime import Classifier, load_bundle, resolve_bundle_path

d = Path(
    sys.argv[1]
    if len(sys.argv) > 1
    else Path(__file__).resolve().parents[3] / "shared/data/contractnli/dev.jsonl"
)
first = [json.loads(line) for line in d.open()][:20]
print("load", os.getloadavg())
name = "contractnli"
raw = make_check_set(name, d, n=20)
path = resolve_bundle_path(name)
b = load_bundle(path)
short = parse_check_set(raw, b.task.name, hashlib.sha256(path.read_bytes()).hexdigest(), b.labels)
old = msgspec.structs.replace(
    short,
    cases=[
        msgspec.convert({"text": r["text"], "label": r["label"]}, type=type(short.cases[0]))
        for r in first
    ],
)
for tag, chk in (("shortest 20", short), ("first 20", old)):
    print(
        tag,
        "chars mean",
        sum(len(c.text) for c in chk.cases) / 20,
        "labels",
        sorted({c.label for c in chk.cases}),
    )
with Classifier.open(name) as clf:
    for _rep in range(2):
        for tag, chk in (("shortest 20", short), ("first 20", old)):
            t = time.perf_counter()
            acc = measure(clf, chk)
            dt = time.perf_counter() - t
            print(tag, f"{dt:.2f} s", "accuracy", acc)
print("load", os.getloadavg())

"""Write the small data fixtures that ship with the repo, from the benchmark data in ../shared/data.

- ``tests/fixtures/data/TASK/{train,dev}.jsonl``: a few dozen records per task and split, so
  the core tests run (and never skip) on a machine without ../shared/data.
- ``bench/data/stereoset-dev-64.jsonl``: the first 64 StereoSet dev records, the default inputs
  of ``pld bench latency`` (package data, so the benchmark runs on a fresh install).

Records keep ``id``, ``text``, ``label`` and ``labels`` (``fields`` are left out: some reveal
the gold label and they are large). The fixtures take the same number of records of each label
(the first ones in file order; for Contract-NLI the shortest, its excerpts run to 6,000
characters), written in file order. Deterministic: run it again and the bytes are the same.
The data keep their licences (StereoSet CC BY-SA 4.0, ContractNLI CC BY 4.0, LogiQA research
only); see ../shared/data/README.md.

    python scripts/make_fixtures.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# task -> split -> records per label
SIZES = {
    "stereoset": {"train": 20, "dev": 16},
    "contractnli": {"train": 8, "dev": 8},
    "logiqa": {"train": 8, "dev": 8},
}
SHORTEST = {"contractnli"}
KEEP = ("id", "text", "label", "labels")


def read(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pick(rows: list[dict[str, object]], per_label: int, shortest: bool) -> list[dict[str, object]]:
    """``per_label`` records of each label (first in file order, or shortest), in file order."""
    chosen: list[int] = []
    for label in dict.fromkeys(str(r["label"]) for r in rows):
        idx = [i for i, r in enumerate(rows) if r["label"] == label]
        if shortest:
            idx = sorted(idx, key=lambda i: (len(str(rows[i]["text"])), i))
        chosen += idx[:per_label]
    return [{k: rows[i][k] for k in KEEP} for i in sorted(chosen)]


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    print(f"{path.relative_to(ROOT)}: {len(rows)} records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    for task, splits in SIZES.items():
        for split, per_label in splits.items():
            rows = read(args.data / task / f"{split}.jsonl")
            out = ROOT / "tests" / "fixtures" / "data" / task / f"{split}.jsonl"
            write(out, pick(rows, per_label, task in SHORTEST))
    dev = read(args.data / "stereoset" / "dev.jsonl")[:64]
    write(
        ROOT / "bench" / "data" / "stereoset-dev-64.jsonl", [{k: r[k] for k in KEEP} for r in dev]
    )


if __name__ == "__main__":
    main()

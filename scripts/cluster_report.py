"""Clustering against a known answer: how well each embedder and DBSCAN setting recovers the
paraphrase groups of tests/fixtures/rules/paraphrases.tsv.

For the default embedder (wordllama) and the student's states (local:gemma-3-270m), with
the automatic eps and min_samples, the paper's eps 0.4 with the scaled min_samples, and the
paper's eps 0.4 and min_samples 6: adjusted Rand index against the true groups (each noise rule
counted as its own cluster), clusters, noise and eps. Then the min_samples sweep behind
``cluster.scaled_min_samples``: mean (and worst) ARI over random subsets of the rules. Prints
markdown tables, then one JSON line.

    python scripts/cluster_report.py [--rules FILE.tsv] [--subsets 40] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from pld.distiller.backends import open_teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import (
    choose_settings,
    cluster_vectors,
    median_distance,
    scaled_min_samples,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "tests" / "fixtures" / "rules" / "paraphrases.tsv"
EMBEDDERS = ["wordllama", "local:gemma-3-270m"]
SETTINGS = [  # (name, eps, min_samples): None is chosen from the embeddings
    ("auto eps, scaled min_samples (default)", None, None),
    ("eps 0.4, scaled min_samples", 0.4, None),
    ("eps 0.4, min_samples 6 (the paper's)", 0.4, 6),
]
SWEEP_SIZES = (16, 24, 40)
SWEEP_MIN_SAMPLES = (2, 3, 4, 6)


def ari(groups: list[str], clusters: list[list[int]]) -> float:
    """Adjusted Rand index against the true groups; each noise rule is its own cluster."""
    found = list(range(len(groups), 2 * len(groups)))
    for c, members in enumerate(clusters):
        for i in members:
            found[i] = c
    return float(adjusted_rand_score(groups, found))


def measure(vectors: np.ndarray, groups: list[str], eps: float | None, ms: int | None) -> dict:
    chosen = choose_settings(vectors, eps=eps, min_samples=ms)
    c = cluster_vectors(vectors, eps=chosen.eps, min_samples=chosen.min_samples)
    return {"eps": chosen.eps, "eps_source": chosen.eps_source, "min_samples": c.min_samples,
            "clusters": len(c.clusters), "noise": len(c.noise), "ari": round(ari(groups, c.clusters), 3)}  # fmt: skip


def sweep(
    vectors: np.ndarray, groups: list[str], subsets: int
) -> dict[str, dict[str, list[float]]]:
    """Mean and worst ARI with the automatic eps per subset size and min_samples."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, list[float]]] = {}
    for size in (*SWEEP_SIZES, len(vectors)):
        draws = [np.arange(len(vectors))] if size == len(vectors) else [
            np.sort(rng.choice(len(vectors), size, replace=False)) for _ in range(subsets)]  # fmt: skip
        row: dict[str, list[float]] = {}
        for ms in SWEEP_MIN_SAMPLES:
            scores = [measure(vectors[d], [groups[i] for i in d], None, ms)["ari"] for d in draws]
            row[str(ms)] = [round(float(np.mean(scores)), 3), round(float(np.min(scores)), 3)]
        out[str(size)] = row
    return out


def machine() -> str:
    """The CPU's model name and core count (Linux), else the architecture."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(
            x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")
        )
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=Path, default=RULES, help="TSV with group and rule columns")
    parser.add_argument("--subsets", type=int, default=40, help="random subsets per size")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache")
    args = parser.parse_args()
    with args.rules.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    texts, groups = [r["rule"] for r in rows], [r["group"] for r in rows]
    cache = ResponseCache(args.cache_dir)
    results, spreads, sweeps = [], {}, {}
    for spec in EMBEDDERS:
        started = time.perf_counter()
        with open_teacher(spec, cache=cache) as embedder:
            vectors = np.asarray(embedder.embed(texts))
        seconds = time.perf_counter() - started
        spreads[spec] = round(median_distance(vectors), 3)
        for name, eps, ms in SETTINGS:
            results.append({"embedder": spec, "settings": name, **measure(vectors, groups, eps, ms),
                            "embed_seconds": round(seconds, 2)})  # fmt: skip
        sweeps[spec] = sweep(vectors, groups, args.subsets)

    print(f"{len(texts)} rules in {len(set(groups))} groups ({args.rules.name}); {machine()}; "
          f"{time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("| embedder | median distance | settings | eps (source) | min_samples | clusters | noise | ARI |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['embedder']} | {spreads[r['embedder']]:.3f} | {r['settings']} | "
              f"{r['eps']:g} ({r['eps_source']}) | {r['min_samples']} | {r['clusters']} | "
              f"{r['noise']} | {r['ari']:.3f} |")  # fmt: skip
    for spec, table in sweeps.items():
        print(f"\nmin_samples sweep, {spec}, automatic eps: mean ARI (worst) over "
              f"{args.subsets} random subsets of each size (the full set once)\n")  # fmt: skip
        print("| rules | scaled min_samples | " + " | ".join(f"min_samples {m}" for m in SWEEP_MIN_SAMPLES) + " |")  # fmt: skip
        print("|---|---|" + "---|" * len(SWEEP_MIN_SAMPLES))
        for size, row in table.items():
            cells = " | ".join(
                f"{row[str(m)][0]:.3f} ({row[str(m)][1]:.2f})" for m in SWEEP_MIN_SAMPLES
            )
            print(f"| {size} | {scaled_min_samples(int(size))} | {cells} |")
    print(json.dumps({"rules": len(texts), "groups": len(set(groups)), "results": results,
                      "median_distance": spreads, "min_samples_sweep": sweeps}))  # fmt: skip


if __name__ == "__main__":
    main()

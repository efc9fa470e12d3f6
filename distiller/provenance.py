"""What a bundle records about how it was made: the provenance (versions, backends, datasets,
prompts, settings, clusters, calibration, rounds) and the dev metrics. Reads the stages' results
(``stages``); runs nothing and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

import pld
from pld.distiller.data import Example, Splits, file_digest
from pld.distiller.extract import ExtractedRule
from pld.distiller.stages import Clustered, Outcome, Run
from pld.distiller.student import Scored
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt_hashes
from pld.distiller.votes import Conflict
from pld.runtime.bundle import Metrics

__all__ = ["bundle_metrics", "bundle_provenance", "describe_backend"]


def bundle_provenance(
    run: Run,
    data: Splits,
    train: str | Path,
    dev: str | Path,
    rules: list[ExtractedRule],
    clustered: Clustered,
    outcome: Outcome,
    backends: dict[str, dict[str, str]],
    conflicts: list[Conflict],
) -> dict[str, Any]:
    """Everything the bundle records about how it was made (the order is the file's order)."""
    clustering = clustered.clustering
    return {
        "distiller_version": pld.__version__,
        **backends,  # teacher, synthesis, embedder
        "datasets": {
            "train": _dataset(train, data.train_all, data.train),
            "dev": _dataset(dev, data.dev_all, data.dev),
        },
        "prompts": prompt_hashes(),
        "settings": msgspec.to_builtins(run.s),
        "extraction": {"asked": len(data.train), "rules": len(rules)},
        "conflicts": [msgspec.to_builtins(c) for c in conflicts],
        "clusters": {
            "sizes": clustering.sizes,
            "noise": len(clustering.noise),
            "median_distance": round(clustered.spread, 4),
            **msgspec.to_builtins(clustered.dbscan),  # eps, min_samples, where each came from
        },
        "calibration": _calibration(outcome.score),
        "pruned": [x.text for x in outcome.pruned],
        # through JSON, so tuples are lists as in a bundle read back (a replay compares equal)
        "rounds": msgspec.json.decode(msgspec.json.encode(outcome.rounds)),
    }


def _calibration(final: Scored) -> dict[str, Any]:
    """The calibration the bundle uses, the model it was chosen on, and what each one scored."""
    c = final.choice
    if c is None:
        return {"choice": final.calibration}
    return {"choice": final.calibration, "model": c.model, "sha256": c.sha256, "split": "dev",
            "n": c.n, "macro_f1": {k: round(v, 6) for k, v in c.macro_f1.items()},
            "accuracy": {k: round(v, 6) for k, v in c.accuracy.items()}}  # fmt: skip


def _dataset(path: str | Path, records: list[Example], used: list[Example]) -> dict[str, Any]:
    return {"file": Path(path).name, "digest": file_digest(path), "records": len(records),
            "used": len(used)}  # fmt: skip


def bundle_metrics(outcome: Outcome) -> Metrics:
    """The bundle's dev metrics: the final rules against zero-shot."""
    final, zero = outcome.score, outcome.zero
    return Metrics(
        n=final.n, macro_f1=round(final.macro_f1, 6), accuracy=round(final.accuracy, 6),
        zero_shot_macro_f1=round(zero.macro_f1, 6), zero_shot_accuracy=round(zero.accuracy, 6),
        split="dev",
    )  # fmt: skip


def describe_backend(teacher: Teacher, spec: str, role: str) -> dict[str, str]:
    """A backend in the provenance; the embedder's entry adds its spec and package version."""
    described = {"backend": spec.strip().split(":", 1)[0], "model": teacher.model}
    if role == "embedder":
        described |= {"spec": spec.strip(), **teacher.describe()}
    return described

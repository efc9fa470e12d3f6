"""Priming bundles before they are activated, so the first request after a switch is as fast as
any other: each bundle's system prompt is decoded once and its prefix state saved where the
device's classifiers look (``D/states``). One ``Model`` per student model serves every bundle.

Knows the runtime's public API, nothing about signatures, stores or generations.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pld.runtime import Classifier

__all__ = ["PrimeJob", "prime"]


class PrimeJob(NamedTuple):
    """One bundle file to prime, with the model it runs on and whether a mismatch is allowed."""

    task: str
    path: Path
    model: str
    allow_model_mismatch: bool
    check: Any = None  # what ``on_opened`` needs to check the bundle (the puller's business)


def prime(
    jobs: Sequence[PrimeJob],
    states: Path,
    *,
    on_model_loaded: Callable[[], None] | None = None,
    on_opened: Callable[[PrimeJob, Classifier], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], float]:
    """Prime (or restore, when already saved) each job's prefix state into ``states``;
    ``on_opened`` sees each primed classifier before it is closed (and may raise).

    Returns milliseconds per task (the classifier's open) and in all (model loads included).
    """
    from pld.runtime import DEVICE_STATES_KEPT, Classifier, Model

    t_all = time.perf_counter()
    per_task: dict[str, float] = {}
    by_model: dict[str, list[PrimeJob]] = {}
    for job in jobs:
        by_model.setdefault(job.model, []).append(job)
    for name, group in by_model.items():
        model = Model.open(name)
        try:
            if on_model_loaded is not None:
                on_model_loaded()
            for job in group:
                t0 = time.perf_counter()
                with warnings.catch_warnings():  # a mismatch here was allowed and is recorded
                    warnings.simplefilter("ignore")
                    clf = Classifier.open(
                        job.path,
                        model=model,
                        state_dir=states,
                        states_kept=DEVICE_STATES_KEPT,
                        allow_model_mismatch=job.allow_model_mismatch,
                    )
                try:
                    how = "restored" if clf.restore_ms is not None else "primed"
                    n_tokens = len(clf.prefix_tokens)
                    if on_opened is not None:
                        on_opened(job, clf)
                finally:
                    clf.close()
                per_task[job.task] = (time.perf_counter() - t0) * 1000
                if log is not None:
                    log(
                        f"{job.task}: {how} {n_tokens} prompt tokens in {per_task[job.task]:.0f} ms"
                    )
        finally:
            model.close()
    return per_task, (time.perf_counter() - t_all) * 1000

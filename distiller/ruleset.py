"""Rules to inspect before paying for consolidation: read from a file or a run's cache,
embedded and clustered exactly as ``pld distill`` would (``pld distill cluster``).

``read_rules`` takes a text file (one rule a line) or a run's response cache; ``cluster_rules``
embeds them with any ``--embedder`` spec, chooses or takes eps and min_samples, and reports
the clusters beside the spread of the distances. Knows nothing about tasks or the student.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.distiller.backends import DEFAULT_EMBEDDER, open_teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import (
    DbscanSettings,
    DistanceSummary,
    choose_settings,
    cluster_vectors,
    distance_summary,
)
from pld.distiller.extract import cached_rules
from pld.errors import DataError
from pld.progress import ProgressCallback

__all__ = ["RuleClusters", "cluster_rules", "read_rules"]


class RuleClusters(msgspec.Struct, frozen=True, kw_only=True):
    """Clusters of rules (lists of rule indices, largest first), the unclustered rules, the
    DBSCAN settings used and why, and the embeddings' pairwise distances."""

    clusters: list[list[int]]
    noise: list[int]
    median_distance: float
    eps: float
    min_samples: int
    embedder: str
    settings: DbscanSettings
    distances: DistanceSummary


def read_rules(path: str | Path) -> list[tuple[int, str]]:
    """``(index, rule)`` pairs: from a text file, one rule a line, indexed by 0-based line
    number (blank lines are not rules); from a folder, the extraction replies of the response
    cache it holds (``extract.cached_rules``), numbered in order.
    """
    path = Path(path)
    if path.is_dir():
        rules = list(enumerate(cached_rules(path)))
        if not rules:
            raise DataError(
                f"'{path}' holds no extraction reply; pass a text file with one rule a line, or "
                "the --cache-dir of a pld distill run"
            )
        return rules
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read rules from '{path}': {exc}; pass a UTF-8 text file") from exc
    rules = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not rules:
        raise DataError(f"'{path}' holds no rule; write one rule a line")
    return rules


def cluster_rules(
    rules: Sequence[str],
    *,
    embedder: str = DEFAULT_EMBEDDER,
    eps: float | None = None,
    min_samples: int | None = None,
    cache: ResponseCache | None = None,
    progress: ProgressCallback | None = None,
) -> RuleClusters:
    """Embed ``rules`` with ``embedder`` (cached) and cluster them as a distillation would;
    indices refer to positions in ``rules``."""
    with open_teacher(embedder, cache=cache if cache is not None else ResponseCache()) as backend:
        vectors = backend.embed(list(rules), progress=progress)
    settings = choose_settings(vectors, eps=eps, min_samples=min_samples)
    clustering = cluster_vectors(vectors, eps=settings.eps, min_samples=settings.min_samples)
    distances = distance_summary(vectors)
    return RuleClusters(
        clusters=clustering.clusters,
        noise=clustering.noise,
        median_distance=distances.median,
        eps=settings.eps,
        min_samples=settings.min_samples,
        embedder=embedder,
        settings=settings,
        distances=distances,
    )

"""Stage 2, clustering: embedded rules grouped by DBSCAN with cosine distance; noise dropped.

Uses scikit-learn's DBSCAN (the paper's defaults: eps 0.4, min_samples 6). Knows nothing about
teachers: it takes vectors and returns groups of indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from pld.errors import ConfigError, DependencyError, DistillError

__all__ = ["Clustering", "cluster_vectors", "median_distance", "representatives"]


class Clustering(msgspec.Struct, frozen=True, kw_only=True):
    """Clusters as lists of input indices, largest first; ``noise`` are the unclustered ones."""

    clusters: list[list[int]]
    noise: list[int]
    eps: float
    min_samples: int

    @property
    def sizes(self) -> list[int]:
        """The size of each cluster, in cluster order."""
        return [len(c) for c in self.clusters]


def cluster_vectors(
    vectors: Sequence[Sequence[float]], *, eps: float = 0.4, min_samples: int = 6
) -> Clustering:
    """DBSCAN over cosine distance. Clusters are ordered by size (then first member)."""
    try:
        from sklearn.cluster import DBSCAN
    except ImportError:
        raise DependencyError(
            "clustering needs scikit-learn, which is not installed; pip install 'pld[distill]'"
        ) from None
    if not 0 < eps <= 2:
        raise ConfigError(
            f"eps is a cosine distance in (0, 2], got {eps}; pass --eps in that range"
        )
    if min_samples < 1:
        raise ConfigError(
            f"min_samples must be at least 1, got {min_samples}; pass --min-samples 1 or more"
        )
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        return Clustering(clusters=[], noise=list(range(len(x))), eps=eps, min_samples=min_samples)
    if not np.all(np.isfinite(x)) or np.any(np.linalg.norm(x, axis=1) == 0):
        raise DistillError(
            "an embedding is zero or not finite; check the embedding model (--embedder)"
        )
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(x)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        groups.setdefault(int(c), []).append(i)
    noise = groups.pop(-1, [])
    clusters = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    return Clustering(clusters=clusters, noise=noise, eps=eps, min_samples=min_samples)


def representatives(
    vectors: Sequence[Sequence[float]], members: Sequence[int], k: int
) -> list[int]:
    """The ``k`` members closest (cosine) to the cluster's centroid, in index order."""
    if len(members) <= k:
        return list(members)
    x = np.asarray([vectors[i] for i in members], dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroid = x.mean(axis=0)
    order = np.argsort(-(x @ centroid), kind="stable")[:k]
    return sorted(members[i] for i in order)


def median_distance(
    vectors: Sequence[Sequence[float]], *, sample: int = 2000, seed: int = 0
) -> float:
    """Median pairwise cosine distance (over at most ``sample`` vectors): the scale ``eps`` is
    judged against. A sentence-embedding model spreads rules over roughly 0.3 to 1; a base
    language model's mean-pooled states sit near 0, and any ``eps`` then merges everything.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    if len(x) > sample:
        x = x[np.random.default_rng(seed).choice(len(x), sample, replace=False)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d = 1.0 - x @ x.T
    return float(np.median(d[np.triu_indices(len(x), 1)]))

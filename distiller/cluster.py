"""Stage 2, clustering: embedded rules grouped by DBSCAN with cosine distance; noise dropped.

Uses scikit-learn (DBSCAN, and NearestNeighbors for the automatic eps). ``choose_settings``
picks what the user left open: eps from the embeddings' k-distance knee, min_samples scaled to
the number of rules (the paper's eps 0.4 and min_samples 6 assume thousands of rules from one
particular embedder). Knows nothing about teachers: it takes vectors and returns groups of
indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from pld.errors import ConfigError, DependencyError, DistillError

__all__ = [
    "PAPER_EPS",
    "PAPER_MIN_SAMPLES",
    "Clustering",
    "DbscanSettings",
    "DistanceSummary",
    "auto_eps",
    "choose_settings",
    "cluster_vectors",
    "distance_summary",
    "median_distance",
    "representatives",
    "scaled_min_samples",
]

PAPER_EPS = 0.4
PAPER_MIN_SAMPLES = 6
# eps never exceeds this share of the median pairwise distance, the distance of two unrelated
# rules: without it, rules with no dense groups (a flat k-distance curve) would all merge.
_EPS_CAP = 0.75

EpsSource = Literal["given", "knee", "median", "cap", "default"]
MinSamplesSource = Literal["given", "scaled"]


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


class DbscanSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The eps and min_samples of a clustering, each given by the user or chosen, and why."""

    eps: float
    eps_source: EpsSource
    eps_reason: str
    min_samples: int
    min_samples_source: MinSamplesSource
    min_samples_reason: str

    def describe(self) -> str:
        """One line for the run's log: both values and where they came from."""
        return (
            f"eps {self.eps:g} ({self.eps_reason}); "
            f"min_samples {self.min_samples} ({self.min_samples_reason})"
        )


class DistanceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Pairwise cosine distances of a set of vectors: how many pairs, and their five numbers."""

    pairs: int
    min: float
    q1: float
    median: float
    q3: float
    max: float


def _sklearn() -> Any:
    try:
        import sklearn.cluster
        import sklearn.neighbors
    except ImportError:
        raise DependencyError(
            "clustering needs scikit-learn, which is not installed; pip install 'pld[distill]'"
        ) from None
    return sklearn


def _matrix(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """The vectors as a float64 matrix; a zero or non-finite row is an error naming the fix."""
    x = np.asarray(vectors, dtype=np.float64)
    if (
        x.ndim == 2
        and len(x)
        and (not np.all(np.isfinite(x)) or np.any(np.linalg.norm(x, axis=1) == 0))
    ):
        raise DistillError(
            "an embedding is zero or not finite; check the embedding model (--embedder)"
        )
    return x


def _check(eps: float | None, min_samples: int | None) -> None:
    if eps is not None and not 0 < eps <= 2:
        raise ConfigError(
            f"eps is a cosine distance in (0, 2], got {eps}; pass --eps in that range"
        )
    if min_samples is not None and min_samples < 1:
        raise ConfigError(
            f"min_samples must be at least 1, got {min_samples}; pass --min-samples 1 or more"
        )


def cluster_vectors(
    vectors: Sequence[Sequence[float]],
    *,
    eps: float = PAPER_EPS,
    min_samples: int = PAPER_MIN_SAMPLES,
) -> Clustering:
    """DBSCAN over cosine distance. Clusters are ordered by size (then first member)."""
    sklearn = _sklearn()
    _check(eps, min_samples)
    x = _matrix(vectors)
    if x.ndim != 2 or len(x) == 0:
        return Clustering(clusters=[], noise=list(range(len(x))), eps=eps, min_samples=min_samples)
    dbscan = sklearn.cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="cosine")
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(dbscan.fit_predict(x)):
        groups.setdefault(int(c), []).append(i)
    noise = groups.pop(-1, [])
    clusters = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    return Clustering(clusters=clusters, noise=noise, eps=eps, min_samples=min_samples)


def scaled_min_samples(n: int) -> int:
    """DBSCAN's min_samples for ``n`` rules: ``max(2, min(6, n // 20))``.

    A cluster needs about min_samples rules, so a theme needs about one rule in 20 (and at least
    2) to become an instruction, and never more than the paper's 6 (reached at 120 rules).
    Measured with the automatic eps on tests/fixtures/rules/paraphrases.tsv (56 rules, 8 themes
    of 6 to 8; scripts/cluster_report.py): min_samples 2, 3, 4, 6 give adjusted Rand indices
    0.86, 0.81, 0.70, 0.44; on random subsets of 16 and 24 rules 2 is best (mean 0.79 and 0.80,
    against 0.66 and 0.75 for 3), at 40 rules 3 edges ahead (0.81 against 0.77).
    """
    return max(2, min(PAPER_MIN_SAMPLES, n // 20))


def auto_eps(vectors: Sequence[Sequence[float]], min_samples: int) -> tuple[float, EpsSource, str]:
    """Choose DBSCAN's eps from the embeddings: ``(eps, source, reason)``.

    A rule's k-distance (k = ``min_samples``, the rule itself counted as DBSCAN counts it) is
    its cosine distance to its (k-1)-th nearest other rule: DBSCAN makes a rule a core point
    exactly when that is at most eps. Sorted, k-distances climb slowly through the rules that
    sit inside a theme and steeply through the outliers; DBSCAN's authors (Ester et al., 1996)
    put eps at that bend. The bend is found as Kneedle does (Satopaa et al., 2011): scale the
    sorted curve to the unit square and take the point farthest below the straight line from
    its first point to its last. Two guards keep it sane on a few dozen rules, where the
    curve is ragged:

    - at least the median k-distance (source ``median``), so half the rules are core points:
      a curve with no convex bend puts the Kneedle point near its start, which would make
      almost every rule noise, and distillation assumes that rules recur;
    - at most 3/4 of the median pairwise distance, the distance of two unrelated rules
      (source ``cap``), so rules without dense groups (a flat curve) never merge wholesale.

    eps is rounded up to 4 decimals (the knee's rule stays a core point). With fewer rules
    than ``max(3, k)`` there is no curve to read: the paper's 0.4 (source ``default``).
    """
    sklearn = _sklearn()
    _check(None, min_samples)
    x = _matrix(vectors)
    k, n = max(2, min_samples), len(x)  # min_samples 1 makes every rule a core point
    if x.ndim != 2 or n < max(3, k):
        return PAPER_EPS, "default", f"too few rules ({n}) for a k-distance curve: the paper's"
    neighbours = sklearn.neighbors.NearestNeighbors(n_neighbors=k, metric="cosine")
    distances, _ = neighbours.fit(x).kneighbors(x)  # each rule is its own nearest, at 0
    curve = np.sort(np.clip(distances[:, -1], 0.0, 2.0))
    at = _knee(curve)
    knee, floor, cap = float(curve[at]), float(np.median(curve)), _EPS_CAP * median_distance(x)
    nearest = f"each rule's {_ordinal(k - 1)} nearest neighbour"
    source: EpsSource = "knee" if knee >= floor else "median"
    eps = max(knee, floor)
    reason = (
        f"knee of the sorted distances to {nearest}, at rule {at + 1} of {n}"
        if source == "knee"
        else f"median distance to {nearest}; the curve's knee, {knee:.4f}, lies below it"
    )
    if eps > cap:
        reason = f"3/4 of the median pairwise distance; the k-distance choice, {eps:.4f}, is above"
        eps, source = cap, "cap"
    return max(math.ceil(eps * 1e4) / 1e4, 1e-4), source, reason


def _knee(curve: np.ndarray) -> int:
    """Index of the point of an ascending curve farthest below its first-to-last chord."""
    span = float(curve[-1] - curve[0])
    if span <= 0:
        return len(curve) - 1
    xs = np.linspace(0.0, 1.0, len(curve))
    return int(np.argmax(xs - (curve - curve[0]) / span))


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def choose_settings(
    vectors: Sequence[Sequence[float]],
    *,
    eps: float | None = None,
    min_samples: int | None = None,
) -> DbscanSettings:
    """eps and min_samples for these vectors: the given ones, else chosen (``auto_eps``,
    ``scaled_min_samples``), each with the reason a run prints."""
    _check(eps, min_samples)
    n = len(vectors)
    ms_source: MinSamplesSource = "given" if min_samples is not None else "scaled"
    ms = min_samples if min_samples is not None else scaled_min_samples(n)
    source: EpsSource = "given"
    eps_reason = "given"
    if eps is None:
        eps, source, eps_reason = auto_eps(vectors, ms)
    return DbscanSettings(
        eps=eps, eps_source=source, eps_reason=eps_reason,
        min_samples=ms, min_samples_source=ms_source,
        min_samples_reason=(
            "given" if ms_source == "given" else f"scaled to {n} rules: max(2, min(6, n // 20))"
        ),
    )  # fmt: skip


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


def _pairwise(
    vectors: Sequence[Sequence[float]] | np.ndarray, sample: int, seed: int
) -> np.ndarray:
    """Cosine distances of all pairs (of at most ``sample`` vectors drawn with ``seed``)."""
    x = np.array(vectors, dtype=np.float64)
    if len(x) < 2:
        return np.zeros(0)
    if len(x) > sample:
        x = x[np.random.default_rng(seed).choice(len(x), sample, replace=False)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d = 1.0 - x @ x.T
    return np.clip(d[np.triu_indices(len(x), 1)], 0.0, 2.0)


def median_distance(
    vectors: Sequence[Sequence[float]] | np.ndarray, *, sample: int = 2000, seed: int = 0
) -> float:
    """Median pairwise cosine distance (over at most ``sample`` vectors): the scale ``eps`` is
    judged against. A sentence-embedding model spreads rules over roughly 0.3 to 1; a base
    language model's mean-pooled states sit near 0, and any fixed ``eps`` then merges everything.
    """
    d = _pairwise(vectors, sample, seed)
    return float(np.median(d)) if len(d) else 0.0


def distance_summary(
    vectors: Sequence[Sequence[float]], *, sample: int = 2000, seed: int = 0
) -> DistanceSummary:
    """Min, quartiles and max of the pairwise cosine distances (over at most ``sample``)."""
    d = _pairwise(vectors, sample, seed)
    if not len(d):
        return DistanceSummary(pairs=0, min=0.0, q1=0.0, median=0.0, q3=0.0, max=0.0)
    q = [round(float(v), 4) for v in np.quantile(d, [0.0, 0.25, 0.5, 0.75, 1.0])]
    return DistanceSummary(pairs=len(d), min=q[0], q1=q[1], median=q[2], q3=q[3], max=q[4])

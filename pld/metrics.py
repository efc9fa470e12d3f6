"""Classification metrics: accuracy, per-label precision/recall/F1, Macro-F1, confusion matrix,
bootstrap confidence intervals (one system, or two systems paired on the same records) and the
nearest-rank percentile that latency tables use. Pure numpy; knows nothing about models.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from pld.errors import ConfigError, DataError

__all__ = [
    "LabelScores",
    "PairedDelta",
    "Report",
    "bootstrap_ci",
    "macro_f1",
    "macro_f1_resampled",
    "paired_bootstrap_delta",
    "percentile",
    "percentile_interval",
    "score",
]


class LabelScores(msgspec.Struct, frozen=True, kw_only=True):
    """Precision, recall and F1 of one label, with its gold count (support)."""

    precision: float
    recall: float
    f1: float
    support: int


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `pld eval` reports about a set of predictions."""

    n: int
    accuracy: float
    macro_f1: float
    per_label: dict[str, LabelScores]
    confusion: list[list[int]]  # rows: gold, columns: predicted, in `labels` order
    labels: list[str]


def _confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        m[index[g], index[p]] += 1
    return m


def _per_label(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(m).astype(float)
    pred = m.sum(axis=0).astype(float)
    gold = m.sum(axis=1).astype(float)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, gold, out=np.zeros_like(tp), where=gold > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean F1 over ``labels`` (a label never predicted nor gold counts as 0)."""
    return float(_per_label(_confusion(gold, pred, labels))[2].mean())


def score(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> Report:
    """Accuracy, Macro-F1, per-label scores and the confusion matrix."""
    unknown = sorted({*gold, *pred} - set(labels))
    if unknown:
        raise DataError(
            f"labels {unknown} are not in the label set {list(labels)}; fix the gold labels "
            "or the predictions so that both use the task's labels"
        )
    m = _confusion(gold, pred, labels)
    precision, recall, f1 = _per_label(m)
    n = int(m.sum())
    return Report(
        n=n,
        accuracy=float(np.trace(m) / n) if n else 0.0,
        macro_f1=float(f1.mean()),
        per_label={
            name: LabelScores(
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(m[i].sum()),
            )
            for i, name in enumerate(labels)
        },
        confusion=m.tolist(),
        labels=list(labels),
    )


def bootstrap_ci(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    *,
    metric: str = "macro_f1",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy or Macro-F1 (fixed seed)."""
    rng = np.random.default_rng(seed)
    g, p = np.asarray(gold), np.asarray(pred)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(g), len(g))
        if metric == "accuracy":
            vals.append(float((g[idx] == p[idx]).mean()))
        else:
            vals.append(macro_f1(g[idx].tolist(), p[idx].tolist(), labels))
    return percentile_interval(vals, alpha)


def percentile_interval(
    values: Sequence[float] | npt.NDArray[np.float64], alpha: float = 0.05
) -> tuple[float, float]:
    """The central ``1 - alpha`` interval of bootstrap ``values``: their ``alpha/2`` and
    ``1 - alpha/2`` quantiles, linearly interpolated (``np.quantile``'s default)."""
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def macro_f1_resampled(
    gold: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], idx: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float64]:
    """Macro-F1 of every bootstrap resample at once: entry ``r`` scores the records ``idx[r]``.

    ``gold`` and ``pred`` hold label codes ``0..k-1``; same definition as ``macro_f1`` (a label
    never gold nor predicted counts as 0), vectorised with one bincount over all resamples.
    """
    b = idx.shape[0]
    codes = gold[idx] * k + pred[idx] + (np.arange(b) * k * k)[:, None]
    m = np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k).astype(float)
    tp = np.diagonal(m, axis1=1, axis2=2)
    n_pred, n_gold = m.sum(axis=1), m.sum(axis=2)
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_gold, out=np.zeros_like(tp), where=n_gold > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1)  # type: ignore[no-any-return]


class PairedDelta(msgspec.Struct, frozen=True, kw_only=True):
    """System ``a`` minus system ``b`` on the same records, each with its paired interval."""

    macro_f1: float
    macro_f1_ci: tuple[float, float]
    accuracy: float
    accuracy_ci: tuple[float, float]


def paired_bootstrap_delta(
    gold: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    labels: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedDelta:
    """Macro-F1 and accuracy of predictions ``a`` minus those of ``b`` on the records ``gold``,
    with percentile intervals from ``n_boot`` resamples that draw the same records for both."""
    if not len(gold) == len(a) == len(b):
        raise DataError(
            f"{len(gold)} gold labels but {len(a)} and {len(b)} predictions; "
            "pass one prediction of each system per gold record, in the same order"
        )
    if len(gold) == 0:
        raise DataError("no records to compare; pass at least one gold label")
    if n_boot < 1:
        raise ConfigError(f"n_boot is {n_boot}; use at least 1 bootstrap resample (1000 is usual)")
    rep_a, rep_b = score(gold, a, labels), score(gold, b, labels)  # also checks the labels
    code = {name: i for i, name in enumerate(labels)}
    g = np.array([code[x] for x in gold])
    pa = np.array([code[x] for x in a])
    pb = np.array([code[x] for x in b])
    idx = np.random.default_rng(seed).integers(0, len(g), (n_boot, len(g)))
    k = len(labels)
    f1 = macro_f1_resampled(g, pa, idx, k) - macro_f1_resampled(g, pb, idx, k)
    acc = (g[idx] == pa[idx]).mean(axis=1) - (g[idx] == pb[idx]).mean(axis=1)
    return PairedDelta(
        macro_f1=rep_a.macro_f1 - rep_b.macro_f1,
        macro_f1_ci=percentile_interval(f1, alpha),
        accuracy=rep_a.accuracy - rep_b.accuracy,
        accuracy_ci=percentile_interval(acc, alpha),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 <= q <= 1): the sorted value at index
    ``round(q * (n - 1))``; never interpolated, so it is always one of ``values``."""
    if not 0 <= q <= 1:
        raise ConfigError(f"percentile q is {q}; use a fraction from 0 to 1 (0.95 for p95)")
    if not values:
        raise DataError("no values to take a percentile of; measure at least one")
    xs = sorted(values)
    return float(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))])

"""Classification metrics: accuracy, per-label precision/recall/F1, Macro-F1, confusion matrix,
and a bootstrap confidence interval. Pure numpy; knows nothing about models.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from pld.errors import DataError

__all__ = ["LabelScores", "Report", "bootstrap_ci", "macro_f1", "score"]


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
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)

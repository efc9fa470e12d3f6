"""Calibration belongs to a (prompt, model) pair: applying a prior, fitting one on labelled data,
choosing between none, contextual and fitted calibration by measurement, and deciding whether a
bundle's recorded choice applies to the model that runs it.

- contextual: divide out the mean label distribution on content-free inputs ("N/A", "", ...);
- fitted: divide out a prior fitted on labelled dev data, one log-probability offset per label
  chosen for Macro-F1 (its score for the choice is cross-validated, never the in-sample one).

Pure numpy over label probabilities; knows no llama.cpp, no data files and no teacher.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from pld.metrics import score
from pld.models import ResolvedModel

from .bundle import Bundle

__all__ = [
    "CALIBRATIONS",
    "Calibration",
    "CalibrationChoice",
    "apply_prior",
    "calibration_applies",
    "choose_calibration",
    "fit_prior",
]

Calibration = Literal["none", "contextual", "fitted"]
CALIBRATIONS: tuple[Calibration, ...] = ("none", "contextual", "fitted")
# log-probability offsets a fitted prior may add to a label, relative to the last label
OFFSET_GRID = np.round(np.arange(-4.0, 4.001, 0.25), 2)
FOLDS = 4  # cross-validation folds that score the fitted calibration for the choice


class CalibrationChoice(msgspec.Struct, frozen=True, kw_only=True):
    """Which calibration scored best on ``n`` labelled records for one prompt and one model,
    with every candidate's Macro-F1 and accuracy (what a bundle's provenance records)."""

    choice: Calibration
    model: str
    sha256: str
    n: int
    macro_f1: dict[str, float]  # "fitted": cross-validated (fitted on the other folds)
    accuracy: dict[str, float]
    prior: list[float] | None = None  # the fitted prior, fitted on all n records


def apply_prior(
    probs: npt.NDArray[np.float64], prior: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Contextual calibration: divide out the content-free prior and renormalise (rows)."""
    p = np.asarray(probs, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return p / p.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _predict(
    logp: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64]
) -> npt.NDArray[np.intp]:
    return np.argmax(logp + offsets, axis=1)  # type: ignore[no-any-return]


def _macro_f1(gold: npt.NDArray[np.intp], pred: npt.NDArray[np.intp], k: int) -> float:
    """Macro-F1 over all ``k`` labels (a label never given nor gold scores 0, as in score())."""
    tp = np.bincount(gold[gold == pred], minlength=k)
    n_pred, n_gold = np.bincount(pred, minlength=k), np.bincount(gold, minlength=k)
    denom = n_pred + n_gold
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


def fit_prior(
    probs: npt.NDArray[np.float64], gold: Sequence[str], labels: Sequence[str]
) -> npt.NDArray[np.float64]:
    """The prior whose division gives the best Macro-F1 on (``probs``, ``gold``): one offset per
    label on ``OFFSET_GRID`` (the last label's fixed at 0), ties to the smallest total offset.
    Every combination is tried for up to three labels; with more, coordinate ascent."""
    logp = np.log(np.asarray(probs, dtype=np.float64) + 1e-12)
    k = len(labels)
    index = {name: i for i, name in enumerate(labels)}
    g = np.asarray([index[x] for x in gold], dtype=np.intp)

    def key(off: npt.NDArray[np.float64]) -> tuple[float, float]:
        return (round(_macro_f1(g, _predict(logp, off), k), 12), -float(np.abs(off).sum()))

    best = np.zeros(k)
    best_key = key(best)
    if k <= 3:
        candidates = (np.array([*c, 0.0]) for c in itertools.product(OFFSET_GRID, repeat=k - 1))
        for off in candidates:
            if (got := key(off)) > best_key:
                best, best_key = off, got
    else:
        for _ in range(4):
            moved = False
            for i in range(k - 1):
                for v in OFFSET_GRID:
                    off = best.copy()
                    off[i] = v
                    if (got := key(off)) > best_key:
                        best, best_key, moved = off, got, True
            if not moved:
                break
    prior = np.exp(-best)
    return prior / prior.sum()  # type: ignore[no-any-return]


def _folds(gold: Sequence[str], n_folds: int) -> npt.NDArray[np.intp]:
    """Stratified fold numbers: each label's records dealt round-robin in their order."""
    seen: dict[str, int] = {}
    out = np.empty(len(gold), dtype=np.intp)
    for i, label in enumerate(gold):
        out[i] = seen.get(label, 0) % n_folds
        seen[label] = seen.get(label, 0) + 1
    return out


def choose_calibration(
    probs: npt.NDArray[np.float64],
    prior: npt.NDArray[np.float64],
    gold: Sequence[str],
    labels: Sequence[str],
    model: ResolvedModel,
    *,
    folds: int = FOLDS,
) -> CalibrationChoice:
    """Score uncalibrated ``probs`` (records x labels) with no calibration, with the content-free
    ``prior`` divided out, and with a prior fitted on the labelled records themselves; another
    calibration than none is chosen only when its Macro-F1 is strictly higher.

    The fitted calibration's score is cross-validated (each fold predicted with a prior fitted
    on the others), so it competes with what it would reach on records it was not fitted on;
    the prior recorded is fitted on all records. With fewer than ``2 * folds`` records it is
    not considered."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = list(gold)
    variants: dict[str, list[str]] = {
        "none": [labels[i] for i in probs.argmax(axis=1)],
        "contextual": [labels[i] for i in apply_prior(probs, prior).argmax(axis=1)],
    }
    fitted: list[float] | None = None
    if len(gold) >= 2 * folds:
        fold = _folds(gold, folds)
        pred = [""] * len(gold)
        for f in range(folds):
            train, test = fold != f, np.flatnonzero(fold == f)
            p = fit_prior(probs[train], [gold[i] for i in np.flatnonzero(train)], labels)
            for i, j in zip(test, apply_prior(probs[test], p).argmax(axis=1)):
                pred[i] = labels[j]
        variants["fitted"] = pred
        fitted = [float(x) for x in fit_prior(probs, gold, labels)]
    f1: dict[str, float] = {}
    acc: dict[str, float] = {}
    for name, preds in variants.items():
        rep = score(gold, preds, list(labels))
        f1[name], acc[name] = rep.macro_f1, rep.accuracy
    choice: Calibration = "none"
    for name in ("contextual", "fitted"):
        if name in f1 and f1[name] > f1[choice]:
            choice = name  # type: ignore[assignment]
    return CalibrationChoice(
        choice=choice,
        model=model.name,
        sha256=model.sha256,
        n=len(gold),
        macro_f1=f1,
        accuracy=acc,
        prior=fitted,
    )


def calibration_applies(bundle: Bundle, model: ResolvedModel) -> tuple[bool, str | None]:
    """Whether the bundle's calibration was chosen on ``model``, and, when it was chosen on
    another model, a line saying that it is turned off and how to decide it for this one."""
    if bundle.runtime.calibration == "none":
        return False, None
    student = bundle.student
    same = model.sha256 == student.sha256 if student.sha256 else model.name == student.model
    if same:
        return True, None
    return False, (
        f"calibration: none (bundle '{bundle.name}' chose {bundle.runtime.calibration} "
        f"calibration on {student.model}, not on {model.name}; calibration is a property of a "
        "prompt and a model: decide it for this model with --calibration-data DEV.jsonl, or "
        "force it with --calibrate)"
    )

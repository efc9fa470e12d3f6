"""Calibration belongs to a (prompt, model) pair: applying a content-free prior, choosing between
none and contextual calibration by measurement on labelled data, and deciding whether a bundle's
recorded choice applies to the model that runs it.

Pure numpy over label probabilities; knows no llama.cpp, no data files and no teacher.
"""

from __future__ import annotations

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
]

Calibration = Literal["none", "contextual"]
CALIBRATIONS: tuple[Calibration, ...] = ("none", "contextual")


class CalibrationChoice(msgspec.Struct, frozen=True, kw_only=True):
    """Which calibration scored best on ``n`` labelled records for one prompt and one model,
    with every candidate's Macro-F1 and accuracy (what a bundle's provenance records)."""

    choice: Calibration
    model: str
    sha256: str
    n: int
    macro_f1: dict[str, float]
    accuracy: dict[str, float]


def apply_prior(
    probs: npt.NDArray[np.float64], prior: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Contextual calibration: divide out the content-free prior and renormalise (rows)."""
    p = np.asarray(probs, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return p / p.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def choose_calibration(
    probs: npt.NDArray[np.float64],
    prior: npt.NDArray[np.float64],
    gold: Sequence[str],
    labels: Sequence[str],
    model: ResolvedModel,
) -> CalibrationChoice:
    """Score uncalibrated ``probs`` (records x labels) with and without the content-free
    ``prior``; contextual calibration is chosen only when its Macro-F1 is strictly higher."""
    probs = np.asarray(probs, dtype=np.float64)
    variants = {"none": probs, "contextual": apply_prior(probs, prior)}
    f1: dict[str, float] = {}
    acc: dict[str, float] = {}
    for name, p in variants.items():
        rep = score(list(gold), [labels[i] for i in p.argmax(axis=1)], list(labels))
        f1[name], acc[name] = rep.macro_f1, rep.accuracy
    choice: Calibration = "contextual" if f1["contextual"] > f1["none"] else "none"
    return CalibrationChoice(
        choice=choice,
        model=model.name,
        sha256=model.sha256,
        n=len(gold),
        macro_f1=f1,
        accuracy=acc,
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

"""``pld bundle calibrate``: a bundle's prompt made ready for another student, with the
calibration decided for that student by measurement on a labelled dev split and recorded with
the model it was measured on (calibration is a property of a prompt and a model)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import msgspec

from pld.runtime import (
    Bundle,
    CalibrationChoice,
    Classifier,
    ClassifierOptions,
    Student,
    load_bundle,
    resolve_bundle_path,
)

from .evaluate import decide_calibration

__all__ = ["calibrate_bundle"]


def calibrate_bundle(
    bundle: str | Path,
    data: str | Path,
    options: ClassifierOptions | None = None,
    *,
    model: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> tuple[Bundle, CalibrationChoice]:
    """The bundle for ``model`` (default: its own student) with the calibration that scores
    best on labelled ``data``: none, contextual or a fitted prior (cross-validated).

    The rules and prompt are unchanged. The student becomes ``model`` (name and sha256); the
    metrics, measured with another student or calibration, are dropped; the provenance gains
    the decision with every candidate's scores and the bundle it was made from."""
    source = load_bundle(resolve_bundle_path(bundle))
    opts = dataclasses.replace(
        options or ClassifierOptions(), calibrate=False, allow_model_mismatch=True
    )
    with warnings.catch_warnings():  # another student than the bundle's is the point here
        warnings.filterwarnings("ignore", message="model file .* is not the one bundle")
        clf = Classifier.open(source, model=model, options=opts)
    with clf:
        choice = decide_calibration(clf, data, progress)
        resolved = clf.resolved
    made = Bundle.create(
        name=name or source.name,
        version=source.version,
        task=source.task,
        instructions=list(source.instructions),
        student=Student(model=resolved.name, sha256=resolved.sha256),
        runtime=msgspec.structs.replace(
            source.runtime,
            calibration=choice.choice,
            prior=choice.prior if choice.choice == "fitted" else None,
        ),
        provenance={
            **source.provenance,
            "calibration": msgspec.to_builtins(choice) | {"data": str(data)},
            "calibrated_from": {"name": source.name, "digest": source.digest},
        },
    )
    return made, choice

"""Accuracy of a bundle on a labelled split: the numbers behind `pld eval`.

Runs the runtime's Classifier over JSON Lines records and scores the predictions, with the
bundle's own system prompt or a baseline's (``baseline.py``); ``evaluate_with_predictions`` also
hands back every record's prediction (``report.py`` builds on it). Knows nothing about how the
bundle was made.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

import msgspec
import numpy as np

from pld.errors import DataError
from pld.metrics import Report, bootstrap_ci, score
from pld.progress import progress as progress_bar
from pld.runtime import (
    Bundle,
    CalibrationChoice,
    Classifier,
    ClassifierOptions,
    Model,
    Prediction,
    apply_prior,
    choose_calibration,
    load_bundle,
    read_records,
    resolve_bundle_path,
)

from .baseline import EXAMPLE_CHARS, baseline_prompt, parse_baseline

__all__ = [
    "EvalResult",
    "Evaluation",
    "decide_calibration",
    "describe_choice",
    "evaluate",
    "evaluate_with_predictions",
    "format_report",
]

P = ParamSpec("P")
N_BOOT = 1000  # bootstrap resamples behind every interval of `pld eval` and `pld report`


class EvalResult(msgspec.Struct, frozen=True, kw_only=True):
    """A metrics report plus how it was produced (``baseline`` "none" is the bundle as is)."""

    bundle: str
    baseline: str
    model: str
    data: str
    n: int
    accuracy: float
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    accuracy_ci: tuple[float, float]
    per_request_ms: float
    calibrated: bool
    report: Report
    train: str | None = None
    seed: int | None = None
    calibration_note: str | None = None  # why the bundle's calibration was not used
    calibration_choice: CalibrationChoice | None = None  # decided on --calibration-data


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """An ``EvalResult`` with what lies under it: every record's prediction (label, each label's
    probability, timings) in the data's order, and what the system prompt's prefix cost."""

    result: EvalResult
    predictions: list[Prediction]
    prompt_tokens: int  # the system prompt's prefix, decoded once
    prime_ms: float | None  # None: the prefix state was restored from the cache
    restore_ms: float | None


def evaluate_with_predictions(
    bundle: str | Path | Bundle,
    data: str | Path,
    options: ClassifierOptions | None = None,
    *,
    model: str | Model | None = None,
    limit: int | None = None,
    progress: bool = True,
    baseline: str = "none",
    train: str | Path | None = None,
    seed: int = 0,
    example_chars: int = EXAMPLE_CHARS,
    calibration_data: str | Path | None = None,
) -> Evaluation:
    """Classify every record of ``data`` (or the first ``limit``), score against gold labels, and
    keep every record's ``Prediction`` (``evaluate`` returns the scores alone: the JSON of
    `pld eval` leaves the predictions out, they grow with the data).

    ``options`` run the classifier (inputs that do not fit are always truncated here; requests
    go ``options.max_batch`` at a time). ``baseline`` "zero-shot" drops the bundle's rules;
    "few-shot:K" also shows K examples from ``train`` (drawn with ``seed``, stratified by label,
    each cut to ``example_chars``). ``model`` may be a loaded ``Model`` to share (left open).
    ``calibration_data`` (labelled records, never ``data`` itself) re-decides calibration for
    this prompt and model by measurement instead of taking the bundle's choice.
    """
    spec = parse_baseline(baseline)
    records = list(read_records(data, limit=limit))
    if not records:
        raise DataError(f"{data} has no records")
    unlabelled = [r.id for r in records if r.label is None]
    if unlabelled:
        raise DataError(
            f"{data}: records without a 'label' field, e.g. {unlabelled[:3]}; eval needs gold labels"
        )
    gold = [str(r.label) for r in records]
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(resolve_bundle_path(bundle))
    system = baseline_prompt(loaded, spec, train=train, seed=seed, max_chars=example_chars)
    opts = dataclasses.replace(options or ClassifierOptions(), truncate=True)
    if calibration_data is not None:
        if Path(calibration_data).resolve() == Path(data).resolve():
            raise DataError(
                "--calibration-data must not be the data being evaluated: decide calibration "
                "on a separate labelled split (e.g. a dev slice), then evaluate on another"
            )
        opts = dataclasses.replace(opts, calibrate=False)  # applied below, once decided
    batch_size = opts.max_batch
    clf = Classifier.open(loaded, opts, model=model, system_prompt=system)
    try:
        labels = clf.labels
        bad = sorted(set(gold) - set(labels))
        if bad:
            raise DataError(
                f"{data}: gold labels {bad} are not labels of bundle {clf.bundle.name} ({labels})"
            )
        choice = None
        if calibration_data is not None:
            choice = decide_calibration(clf, calibration_data, progress)
        predictions: list[Prediction] = []
        label = "evaluating" if spec.kind == "none" else f"evaluating {spec}"
        t0 = time.perf_counter()
        with progress_bar(label, len(records), show=progress) as update:
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                predictions += clf.classify_many([r.text for r in chunk])
                update(len(predictions), len(records))
        per_request_ms = (time.perf_counter() - t0) * 1000 / len(records)
        if choice is not None and choice.choice == "contextual":
            predictions = _calibrated(predictions, clf.labels, clf.content_free_prior())
        elif choice is not None and choice.choice == "fitted" and choice.prior is not None:
            predictions = _calibrated(predictions, clf.labels, np.asarray(choice.prior))
        preds = [p.label for p in predictions]
        rep = score(gold, preds, labels)
        result = EvalResult(
            bundle=clf.bundle.name,
            baseline=str(spec),
            model=clf.resolved.name,
            data=str(data),
            n=rep.n,
            accuracy=rep.accuracy,
            macro_f1=rep.macro_f1,
            macro_f1_ci=bootstrap_ci(gold, preds, labels, n_boot=N_BOOT),
            accuracy_ci=bootstrap_ci(gold, preds, labels, metric="accuracy", n_boot=N_BOOT),
            per_request_ms=per_request_ms,
            calibrated=predictions[0].calibrated,
            report=rep,
            calibration_note=None if choice is not None else clf.calibration_note,
            calibration_choice=choice,
            train=str(train) if spec.kind == "few-shot" else None,
            seed=seed if spec.kind == "few-shot" else None,
        )
        return Evaluation(
            result=result,
            predictions=predictions,
            prompt_tokens=len(clf.prefix_tokens),
            prime_ms=clf.prime_ms,
            restore_ms=clf.restore_ms,
        )
    finally:
        clf.close()


def _scores_only(run: Callable[P, Evaluation]) -> Callable[P, EvalResult]:
    """``run`` returning ``.result`` alone, with ``run``'s parameters (for help() too)."""

    def evaluate(*args: P.args, **kwargs: P.kwargs) -> EvalResult:
        """``evaluate_with_predictions`` without the predictions: the scores and how they were
        produced (what `pld eval` prints); same arguments, same numbers."""
        return run(*args, **kwargs).result

    evaluate.__signature__ = inspect.signature(run).replace(  # type: ignore[attr-defined]
        return_annotation="EvalResult"
    )
    return evaluate


evaluate = _scores_only(evaluate_with_predictions)


def decide_calibration(clf: Classifier, data: str | Path, show: bool) -> CalibrationChoice:
    """Choose calibration for the classifier's prompt and model on labelled ``data`` (the
    classifier's own calibration is not applied: open it with ``calibrate=False``)."""
    records = list(read_records(data))
    if not records or any(r.label is None for r in records):
        raise DataError(f"--calibration-data {data} needs labelled records ('label' on each)")
    probs: list[list[float]] = []
    with progress_bar("deciding calibration", len(records), show=show) as update:
        for r in records:
            p = clf.classify(r.text)
            probs.append([p.probs[name] for name in clf.labels])
            update(len(probs), len(records))
    gold = [str(r.label) for r in records]
    return choose_calibration(
        np.asarray(probs), clf.content_free_prior(), gold, clf.labels, clf.resolved
    )


def describe_choice(c: CalibrationChoice) -> str:
    """The choice and every candidate's Macro-F1, for one line of output."""
    tried = ", ".join(
        f"{k} {v:.3f}" + (" (cross-validated)" if k == "fitted" else "")
        for k, v in c.macro_f1.items()
    )
    return f"{c.choice} (Macro-F1 {tried})"


def _calibrated(
    predictions: list[Prediction], labels: list[str], prior: np.ndarray
) -> list[Prediction]:
    raw = np.asarray([[p.probs[name] for name in labels] for p in predictions])
    cal = apply_prior(raw, prior)
    return [
        msgspec.structs.replace(
            p,
            label=labels[int(row.argmax())],
            probs={name: float(v) for name, v in zip(labels, row)},
            calibrated=True,
        )
        for p, row in zip(predictions, cal)
    ]


def format_report(res: EvalResult) -> str:
    """A table for people: per-label scores and the confusion matrix."""
    rep = res.report
    w = max(12, *(len(x) for x in rep.labels))
    base = res.baseline + (f" (train {res.train}, seed {res.seed})" if res.train else "")
    lines = [
        f"bundle {res.bundle}  baseline {base}  model {res.model}  data {res.data}  "
        f"calibrated {res.calibrated}",
        f"n {res.n}  accuracy {res.accuracy:.3f} [{res.accuracy_ci[0]:.3f}, {res.accuracy_ci[1]:.3f}]  "
        f"macro-F1 {res.macro_f1:.3f} [{res.macro_f1_ci[0]:.3f}, {res.macro_f1_ci[1]:.3f}] (95% bootstrap)  "
        f"{res.per_request_ms:.0f} ms/request",
    ]
    if res.calibration_note:
        lines.append(res.calibration_note)
    if (c := res.calibration_choice) is not None:
        lines.append(f"calibration decided on {c.n} records for {c.model}: {describe_choice(c)}")
    lines += [
        "",
        f"{'label':<{w}} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]
    for name, s in rep.per_label.items():
        lines.append(
            f"{name:<{w}} {s.precision:>9.3f} {s.recall:>7.3f} {s.f1:>6.3f} {s.support:>8}"
        )
    lines += [
        "",
        "confusion (rows gold, columns predicted):",
        " " * w + "".join(f"{x[:10]:>11}" for x in rep.labels),
    ]
    for name, row in zip(rep.labels, rep.confusion):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>11}" for v in row))
    return "\n".join(lines)

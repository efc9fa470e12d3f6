"""Accuracy of a bundle on a labelled split: the numbers behind `pld eval`.

Runs the runtime's Classifier over JSON Lines records and scores the predictions, with the
bundle's own system prompt or a baseline's (``baseline.py``); ``evaluate_with_predictions`` also
hands back every record's prediction (``report.py`` builds on it). Knows nothing about how the
bundle was made.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import msgspec

from pld.errors import DataError
from pld.metrics import Report, bootstrap_ci, score
from pld.progress import progress as progress_bar
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Model,
    Prediction,
    load_bundle,
    read_records,
    resolve_bundle_path,
)

from .baseline import EXAMPLE_CHARS, baseline_prompt, parse_baseline

__all__ = ["EvalResult", "Evaluation", "evaluate", "evaluate_with_predictions", "format_report"]

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


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """An ``EvalResult`` with what lies under it: every record's prediction (label, each label's
    probability, timings) in the data's order, and what the system prompt's prefix cost."""

    result: EvalResult
    predictions: list[Prediction]
    prompt_tokens: int  # the system prompt's prefix, decoded once
    prime_ms: float | None  # None: the prefix state was restored from the cache
    restore_ms: float | None


def evaluate(
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
) -> EvalResult:
    """Classify every record of ``data`` (or the first ``limit``) and score against gold labels.

    ``options`` run the classifier (inputs that do not fit are always truncated here; requests
    go ``options.max_batch`` at a time). ``baseline`` "zero-shot" drops the bundle's rules;
    "few-shot:K" also shows K examples from ``train`` (drawn with ``seed``, stratified by label,
    each cut to ``example_chars``). ``model`` may be a loaded ``Model`` to share (left open).
    """
    return evaluate_with_predictions(
        bundle,
        data,
        options,
        model=model,
        limit=limit,
        progress=progress,
        baseline=baseline,
        train=train,
        seed=seed,
        example_chars=example_chars,
    ).result


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
) -> Evaluation:
    """``evaluate``, keeping every record's ``Prediction`` (the JSON of `pld eval` leaves them
    out: they grow with the data); same arguments, same numbers."""
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
    batch_size = opts.max_batch
    clf = Classifier.open(loaded, opts, model=model, system_prompt=system)
    try:
        labels = clf.labels
        bad = sorted(set(gold) - set(labels))
        if bad:
            raise DataError(
                f"{data}: gold labels {bad} are not labels of bundle {clf.bundle.name} ({labels})"
            )
        predictions: list[Prediction] = []
        label = "evaluating" if spec.kind == "none" else f"evaluating {spec}"
        t0 = time.perf_counter()
        with progress_bar(label, len(records), show=progress) as update:
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                predictions += clf.classify_many([r.text for r in chunk])
                update(len(predictions), len(records))
        per_request_ms = (time.perf_counter() - t0) * 1000 / len(records)
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
            calibrated=clf.calibrated,
            report=rep,
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

"""The accuracy report (``pld report``): one self-contained HTML page and its numbers as JSON.

Classifies a labelled split with a bundle and with each baseline (``baseline.py``) through
``evaluate.py`` (so the numbers agree with `pld eval`), compares the bundle with each baseline
(paired bootstrap), and gathers rules with provenance, latency per request and the inputs the
bundle gets wrong into a ``ReportResult`` (``report_types.py``); ``report_html.py`` renders the
page. Knows the runtime and the evaluation helpers, nothing of the distiller.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import ConfigError, DataError
from pld.metrics import paired_bootstrap_delta, percentile
from pld.runtime import (
    Bundle,
    ClassifierOptions,
    Model,
    load_bundle,
    read_records,
    resolve_bundle_path,
)
from pld.text import clip

from .baseline import EXAMPLE_CHARS, baseline_prompt, parse_baseline
from .evaluate import N_BOOT, Evaluation, evaluate_with_predictions
from .report_html import render_html
from .report_types import ERROR_CHARS, Comparison, Error, Latency, ReportResult, Rule, System

__all__ = [
    "ReportResult",
    "build_report",
    "format_summary",
    "json_path_for",
    "write_report",
]


def _system(ev: Evaluation) -> System:
    res, preds = ev.result, ev.predictions
    ms = [p.timings.total_ms for p in preds]
    return System(
        name="bundle" if res.baseline == "none" else res.baseline,
        n=res.n,
        accuracy=res.accuracy,
        accuracy_ci=res.accuracy_ci,
        macro_f1=res.macro_f1,
        macro_f1_ci=res.macro_f1_ci,
        calibrated=res.calibrated,
        report=res.report,
        latency=Latency(
            requests=len(ms),
            p50_ms=percentile(ms, 0.5),
            p95_ms=percentile(ms, 0.95),
            mean_ms=sum(ms) / len(ms),
            mean_input_tokens=sum(p.timings.input_tokens for p in preds) / len(preds),
            prompt_tokens=ev.prompt_tokens,
            prime_ms=ev.prime_ms,
            restore_ms=ev.restore_ms,
        ),
        predictions=[p.label for p in preds],
        probs=[[p.probs[name] for name in res.report.labels] for p in preds],
    )


def _compare(labels: list[str], gold: list[str], a: System, b: System) -> Comparison:
    """``a`` minus ``b`` on the same resampled records (seed 0, as ``pld bundle audit``)."""
    d = paired_bootstrap_delta(gold, a.predictions, b.predictions, labels, n_boot=N_BOOT, seed=0)
    return Comparison(
        baseline=b.name,
        delta_macro_f1=d.macro_f1,
        delta_macro_f1_ci=d.macro_f1_ci,
        delta_accuracy=d.accuracy,
        delta_accuracy_ci=d.accuracy_ci,
    )


def build_report(
    bundle: str | Path,
    data: str | Path,
    options: ClassifierOptions | None = None,
    *,
    baselines: Sequence[str] = (),
    train: str | Path | None = None,
    model: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ReportResult:
    """Classify the first ``limit`` records of ``data`` with the bundle and each baseline
    (``zero-shot``, ``few-shot:K`` drawn from ``train`` with ``seed``) and score them.

    Each system runs through ``evaluate_with_predictions`` (inputs that do not fit are
    truncated, ``options.max_batch`` requests at a time), on one loaded model shared by all.
    """
    t0 = time.perf_counter()
    specs = [parse_baseline(s) for s in baselines]
    if any(s.kind == "none" for s in specs):
        raise ConfigError("--baseline none is the bundle itself, always reported; leave it out")
    records = list(read_records(data, limit=limit))
    if not records:
        raise DataError(f"{data} has no records")
    if missing := [r.id for r in records if r.label is None]:
        raise DataError(
            f"{data}: records without a 'label' field, e.g. {missing[:3]}; a report needs gold labels"
        )
    gold = [str(r.label) for r in records]
    path = resolve_bundle_path(bundle)
    b = load_bundle(path)
    if bad := sorted(set(gold) - set(b.labels)):
        raise DataError(f"{data}: gold labels {bad} are not labels of bundle {b.name} ({b.labels})")
    for s in specs:  # a missing or unusable --train fails now, not after the bundle's run
        baseline_prompt(b, s, train=train, seed=seed, max_chars=EXAMPLE_CHARS)
    opts = options or ClassifierOptions()
    llm = Model.open(model or b.student.model, n_gpu_layers=opts.n_gpu_layers)
    try:
        systems = [
            _system(
                evaluate_with_predictions(
                    b,
                    data,
                    opts,
                    model=llm,
                    limit=limit,
                    progress=progress,
                    baseline=name,
                    train=train,
                    seed=seed,
                )
            )
            for name in ["none", *map(str, specs)]
        ]
    finally:
        llm.close()
    main = systems[0]
    col = {name: i for i, name in enumerate(b.labels)}
    errors = [
        Error(
            index=i,
            id=r.id,
            text=clip(r.text, ERROR_CHARS, keep_end=True),
            gold=g,
            predicted=p,
            probability=main.probs[i][col[p]],
            gold_probability=main.probs[i][col[g]],
        )
        for i, (r, g, p) in enumerate(zip(records, gold, main.predictions, strict=True))
        if g != p
    ]
    return ReportResult(
        bundle=b.name,
        version=b.version,
        digest=b.digest,
        bundle_file=str(path),
        task=b.task.name,
        labels={lab.name: lab.definition for lab in b.task.labels},
        model=llm.resolved.name,
        model_sha256=llm.resolved.sha256,
        data=str(data),
        split=Path(data).stem,
        n=len(records),
        limit=limit,
        systems=systems,
        comparisons=[_compare(b.labels, gold, main, s) for s in systems[1:]],
        rules=_rules(b),
        errors=sorted(errors, key=lambda e: (-e.probability, e.index)),
        provenance=b.provenance,
        n_boot=N_BOOT,
        seed=seed,
        train=str(train) if any(s.kind == "few-shot" for s in specs) else None,
        batch_size=opts.max_batch,
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        wall_s=time.perf_counter() - t0,
    )


def _rules(b: Bundle) -> list[Rule]:
    effects = {e.id: e for e in (b.metrics.rule_effects or [])} if b.metrics else {}
    return [
        Rule(
            index=i,
            id=ins.id,
            text=ins.text,
            support=ins.support,
            cluster=ins.cluster,
            round=ins.round,
            effect=msgspec.to_builtins(effects[ins.id]) if ins.id in effects else None,
        )
        for i, ins in enumerate(b.instructions, 1)
    ]


def json_path_for(html_path: str | Path) -> Path:
    """The JSON file written next to a report: same stem, ``.json`` (the page must be .html)."""
    out = Path(html_path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(
            f"report file {out} must end in .html; its numbers go next to it as .json "
            f"(e.g. --out {out.with_suffix('.html')})"
        )
    return out.with_suffix(".json")


def write_report(res: ReportResult, html_path: str | Path) -> tuple[Path, Path]:
    """Write the HTML page and its JSON twin; returns both paths."""
    out = Path(html_path)
    twin = json_path_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(res), encoding="utf-8")
    twin.write_bytes(msgspec.json.format(msgspec.json.encode(res), indent=1) + b"\n")
    return out, twin


def format_summary(res: ReportResult) -> str:
    """A short table for the terminal."""
    lines = [
        f"bundle {res.bundle} {res.version}  model {res.model}  data {res.data}  n {res.n}",
        f"{'system':<14} {'macro-F1 [95% CI]':>24} {'accuracy [95% CI]':>24} {'p50 ms':>8}",
    ]
    for s in res.systems:
        f1 = f"{s.macro_f1:.3f} [{s.macro_f1_ci[0]:.3f}, {s.macro_f1_ci[1]:.3f}]"
        acc = f"{s.accuracy:.3f} [{s.accuracy_ci[0]:.3f}, {s.accuracy_ci[1]:.3f}]"
        lines.append(f"{s.name:<14} {f1:>24} {acc:>24} {s.latency.p50_ms:>8.1f}")
    for c in res.comparisons:
        lo, hi = c.delta_macro_f1_ci
        lines.append(
            f"bundle - {c.baseline}: macro-F1 {c.delta_macro_f1:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired)"
        )
    lines.append(f"wrong answers: {len(res.errors)} of {res.n} (listed in the HTML report)")
    return "\n".join(lines)

"""`pld eval`, `pld report` and `pld bundle audit`: thin wrappers that print a table (or write a
page), then one JSON line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer

from pld.errors import ConfigError
from pld.runtime import load_bundle, resolve_bundle_path, save_bundle
from pld.runtime.cli_options import (
    AllowModelMismatchOpt,
    BatchSizeOpt,
    BundleOpt,
    CalibrateOpt,
    DataOpt,
    GpuLayersOpt,
    ModelOpt,
    ThreadsOpt,
    classifier_options,
)

from .baseline import EXAMPLE_CHARS

__all__ = ["BUNDLE_COMMANDS", "audit", "calibrate", "evaluate", "report"]


def evaluate(
    bundle: BundleOpt,
    data: DataOpt,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.")] = None,
    model: ModelOpt = None,
    calibrate: CalibrateOpt = None,
    batch_size: BatchSizeOpt = 1,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
    allow_model_mismatch: AllowModelMismatchOpt = False,
    baseline: Annotated[
        str,
        typer.Option(
            help="What to compare the bundle with: 'none' (the bundle as is), 'zero-shot' (its task, "
            "labels and definitions without the rules) or 'few-shot:K' (zero-shot plus K examples "
            f"from --train, stratified by label, each cut to {EXAMPLE_CHARS} characters with "
            "'[...]' in the middle so that long inputs still fit)."
        ),
    ] = "none",
    train: Annotated[
        Path | None, typer.Option(help="Labelled JSON Lines split to draw few-shot examples from.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the few-shot example draw.")] = 0,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled split (not --data) on which to decide calibration for this prompt and "
            "model, instead of the bundle's choice (which applies only to the bundle's student)."
        ),
    ] = None,
) -> None:
    """Accuracy, Macro-F1, per-label scores and confusion matrix of a bundle (or a baseline) on a split."""
    from .evaluate import evaluate as run
    from .evaluate import format_report

    options = classifier_options(
        calibrate=calibrate,
        batch_size=batch_size,
        threads=threads,
        gpu_layers=gpu_layers,
        allow_model_mismatch=allow_model_mismatch or model is not None,
    )
    res = run(
        bundle,
        data,
        options,
        model=model,
        limit=limit,
        baseline=baseline,
        train=train,
        seed=seed,
        calibration_data=calibration_data,
    )
    typer.echo(format_report(res))
    summary = {k: v for k, v in msgspec.to_builtins(res).items() if k != "report"}
    summary["per_label"] = msgspec.to_builtins(res.report.per_label)
    typer.echo(msgspec.json.encode(summary).decode())


def report(
    bundle: BundleOpt,
    data: DataOpt,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.")] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="A baseline to compare with (repeatable): 'zero-shot' or 'few-shot:K' "
            "(K examples from --train)."
        ),
    ] = None,
    train: Annotated[
        Path | None, typer.Option(help="Labelled JSON Lines split to draw few-shot examples from.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="HTML file to write (the JSON goes next to it, .json); default "
            "report-<bundle>-<split>.html here."
        ),
    ] = None,
    model: ModelOpt = None,
    threads: ThreadsOpt = 0,
    seed: Annotated[int, typer.Option(help="Seed of the few-shot example draw.")] = 0,
    batch_size: BatchSizeOpt = 1,
) -> None:
    """One self-contained HTML accuracy report (and its numbers as JSON): the bundle against
    baselines, per-label scores, confusion matrices, latency, rules and errors."""
    from .report import build_report, format_summary, json_path_for, write_report

    if out is None:
        out = Path(f"report-{load_bundle(resolve_bundle_path(bundle)).name}-{data.stem}.html")
    json_path_for(out)  # a wrong --out fails now, not after the run
    options = classifier_options(
        batch_size=batch_size, threads=threads, allow_model_mismatch=model is not None
    )
    res = build_report(
        bundle,
        data,
        options,
        baselines=baseline or [],
        train=train,
        model=model,
        limit=limit,
        seed=seed,
    )
    html_path, json_path = write_report(res, out)
    typer.echo(format_summary(res))
    typer.echo(f"wrote {html_path} and {json_path}")
    line = {
        "html": str(html_path),
        "json": str(json_path),
        "bundle": res.bundle,
        "version": res.version,
        "model": res.model,
        "data": res.data,
        "n": res.n,
        "systems": [
            {
                "name": s.name,
                "macro_f1": s.macro_f1,
                "macro_f1_ci": s.macro_f1_ci,
                "accuracy": s.accuracy,
                "accuracy_ci": s.accuracy_ci,
                "p50_ms": s.latency.p50_ms,
                "p95_ms": s.latency.p95_ms,
            }
            for s in res.systems
        ],
        "errors": len(res.errors),
        "wall_s": res.wall_s,
    }
    typer.echo(msgspec.json.encode(line).decode())


def audit(
    bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")],
    data: DataOpt,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.")] = None,
    by: Annotated[
        Literal["rule", "group"],
        typer.Option(
            help="Leave out each rule, or each group: rules of one distiller cluster together, or "
            "blocks of --group-size consecutive rules when the bundle has no clusters."
        ),
    ] = "rule",
    group_size: Annotated[int, typer.Option(help="Rules per block with --by group.")] = 8,
    write: Annotated[
        bool,
        typer.Option(help="Store each rule's effect in the bundle file (metrics.rule_effects)."),
    ] = False,
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = 2,
    n_batch: Annotated[
        int,
        typer.Option(
            help="Tokens per decode call; a switch between prompts restarts at a multiple of it."
        ),
    ] = 512,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Each rule's effect on Macro-F1 and accuracy, measured by leaving it out, sorted by effect.

    Requests are decoded at least two together (the full-size window cache)."""
    from .ablation import audit as run
    from .ablation import format_audit, with_rule_effects

    if write and by != "rule":
        raise ConfigError("--write stores each rule's own effect; audit with --by rule")
    path = resolve_bundle_path(bundle)
    if write and not Path(bundle).exists():
        raise ConfigError(
            f"--write changes a bundle file, and {bundle!r} is a shipped bundle; copy it first "
            f"(cp $(pld bundle path {bundle}) {bundle}.pld.json) and audit the copy"
        )
    b = load_bundle(path)
    options = dataclasses.replace(
        classifier_options(batch_size=batch_size, threads=threads, gpu_layers=gpu_layers),
        n_batch=n_batch,
    )
    res = run(
        b,
        data,
        limit=limit,
        by=by,
        group_size=group_size,
        options=options,
        model=model,
        n_boot=n_boot,
        seed=seed,
    )
    typer.echo(format_audit(res))
    if write:
        save_bundle(with_rule_effects(b, res), path)
        typer.echo(f"wrote {len(res.rules)} rule effects into {path}")
    summary = msgspec.to_builtins(res)
    del summary["baseline_predictions"]
    for effect in summary["rules"]:  # the table has the text; the JSON names rules by id
        del effect["text"], effect["predictions"]
    typer.echo(msgspec.json.encode(summary).decode())


def calibrate(
    bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")],
    model: ModelOpt = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the new bundle (default: the source's).")
    ] = None,
    batch_size: BatchSizeOpt = 1,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
) -> None:
    """Make a bundle's prompt ready for a student: decide calibration for it on --data, a
    labelled dev split kept apart from what results are reported on (none, contextual, or a
    prior fitted there, scored by cross-validation), and write a bundle that records the choice
    with that model."""
    from .calibrate import calibrate_bundle
    from .evaluate import describe_choice

    if out.exists() and out.resolve() == Path(resolve_bundle_path(bundle)).resolve():
        raise ConfigError(f"--out {out} is the source bundle; write the new bundle elsewhere")
    made, choice = calibrate_bundle(
        bundle,
        data,
        classifier_options(batch_size=batch_size, threads=threads, gpu_layers=gpu_layers),
        model=model,
        name=name,
    )
    save_bundle(made, out)
    typer.echo(
        f"calibration for {choice.model} decided on {choice.n} records: "
        f"{describe_choice(choice)}; wrote {out}"
    )
    typer.echo(msgspec.json.encode(choice).decode())


# `pld bundle NAME` commands from this package; pld.cli mounts them.
BUNDLE_COMMANDS: dict[str, Callable[..., None]] = {"audit": audit, "calibrate": calibrate}

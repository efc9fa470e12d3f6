"""`pld classify`, `pld demo` and `pld bundle ...`: a thin layer over ``pld.runtime``.

Parses arguments, calls the public API and formats output. Errors propagate to ``pld.cli``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from pld.errors import InputError
from pld.progress import progress

from .audit import render_audit
from .bundle import load_bundle, render_system_prompt
from .classifier import Classifier
from .cli_options import (
    AllowModelMismatchOpt,
    BatchSizeOpt,
    CalibrateOpt,
    DeviceDirOpt,
    FlashAttnOpt,
    GpuLayersOpt,
    KvTypeOpt,
    ModelOpt,
    NCtxOpt,
    ThreadsOpt,
    TruncateOpt,
    UbatchOpt,
    bundle_option,
    classifier_options,
)
from .records import read_records
from .store import resolve_bundle_path, shipped_bundles

__all__ = ["BUNDLE_COMMANDS", "classify", "demo"]


def classify(
    text: Annotated[str | None, typer.Argument(help="Text to classify (or use --input).")] = None,
    bundle: Annotated[str | None, bundle_option("stereoset")] = None,
    device_dir: DeviceDirOpt = None,
    task: Annotated[
        str | None,
        typer.Option(help="With --device-dir: the task (default: the only one)."),
    ] = None,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="JSON Lines file with 'text' (and 'id').")
    ] = None,
    model: ModelOpt = None,
    calibrate: CalibrateOpt = None,
    truncate: TruncateOpt = False,
    n_ctx: NCtxOpt = 0,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
    batch_size: BatchSizeOpt = 1,
    kv_type: KvTypeOpt = None,
    ubatch: UbatchOpt = None,
    flash_attn: FlashAttnOpt = None,
    allow_model_mismatch: AllowModelMismatchOpt = False,
) -> None:
    """Classify TEXT, or every line of --input, printing one JSON prediction per line."""
    if (text is None) == (input is None):
        raise InputError("give either TEXT or --input FILE (not both, not neither)")
    if device_dir is not None and bundle is not None:
        raise InputError("give --bundle or --device-dir, not both")
    if task is not None and device_dir is None:
        raise InputError("--task needs --device-dir (for a bundle file, use --bundle)")
    options = classifier_options(
        calibrate=calibrate,
        truncate=truncate,
        n_ctx=n_ctx,
        threads=threads,
        gpu_layers=gpu_layers,
        batch_size=batch_size,
        allow_model_mismatch=allow_model_mismatch,
        kv_type=kv_type,
        ubatch=ubatch,
        flash_attn=flash_attn,
    )
    if device_dir is not None:
        clf = Classifier.open(task, options, model=model, device_dir=device_dir)
    else:
        clf = Classifier.open(bundle or "stereoset", options, model=model)
    if clf.calibration_note:
        typer.echo(clf.calibration_note, err=True)
    out = sys.stdout.buffer
    try:
        if text is not None:
            out.write(msgspec.json.encode(clf.classify(text)) + b"\n")
            return
        assert input is not None
        records = list(read_records(input))
        with progress("classifying", len(records)) as update:
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                preds = clf.classify_many([r.text for r in chunk], ids=[r.id for r in chunk])
                for p in preds:
                    out.write(msgspec.json.encode(p) + b"\n")
                out.flush()
                update(start + len(chunk), len(records))
    finally:
        clf.close()


DEMO_INPUTS = [
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The people are very thin and good at distance running.",
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The people are fat and unathletic.",
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The cat ran up the tree.",
    "Target: chess player\nContext: The chess player was BLANK.\nSentence: The chess player was hispanic.",
]


def _demo_bundle(student: str | None) -> str:
    """The shipped StereoSet bundle distilled for ``student`` (default: the default one)."""
    if student is None:
        return "stereoset"
    made = [
        name
        for name, path in shipped_bundles().items()
        if (b := load_bundle(path)).task.name == "stereoset" and b.student.model == student
    ]
    if not made:
        raise InputError(
            f"no shipped StereoSet bundle was distilled for student '{student}'; the shipped "
            f"ones are for {', '.join(sorted({load_bundle(p).student.model for p in shipped_bundles().values()}))} "
            "(or pass --model to run the default bundle on another model)"
        )
    return made[0]


def demo(
    model: ModelOpt = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="Show the StereoSet bundle distilled for this student (e.g. "
            "qwen2.5-coder-1.5b-instruct, installed by './install.sh qwen') next to zero-shot."
        ),
    ] = None,
    threads: ThreadsOpt = 0,
) -> None:
    """Classify a few example inputs with a shipped StereoSet bundle, next to the same model's
    zero-shot answer when the bundle has rules, so you see what the rules change."""
    name = _demo_bundle(student)
    bundle = load_bundle(resolve_bundle_path(name))
    typer.echo(
        f"loading {model or bundle.student.model} and priming bundle '{name}' "
        f"({len(bundle.instructions)} rules)...",
        err=True,
    )
    options = classifier_options(threads=threads, allow_model_mismatch=model is not None)
    clf = Classifier.open(bundle, options, model=model)
    zero = None
    try:
        if bundle.instructions:
            zero = Classifier(
                bundle,
                clf.model,
                dataclasses.replace(options, calibrate=False),
                system_prompt=render_system_prompt(bundle.task, []),
            )
        how = (
            f"restored in {clf.restore_ms:.0f} ms"
            if clf.restore_ms
            else f"primed in {clf.prime_ms:.0f} ms"
        )
        typer.echo(
            f"model {clf.resolved.name} ({clf.backend}); bundle {name} {bundle.version}: "
            f"{len(bundle.instructions)} rules, system prompt {len(clf.prefix_tokens)} tokens, "
            f"{how}; calibration {'contextual' if clf.calibrated else 'none'}"
        )
        if clf.calibration_note:
            typer.echo(clf.calibration_note)
        if not bundle.instructions:
            typer.echo(
                "this bundle has no rules: its prompt is the zero-shot one (try "
                "'pld demo --student qwen2.5-coder-1.5b-instruct' after './install.sh qwen')"
            )
        if (m := bundle.metrics) is not None and m.zero_shot_macro_f1 is not None:
            typer.echo(
                f"measured on {m.n} {m.split} records: Macro-F1 {m.macro_f1:.3f} with the rules, "
                f"{m.zero_shot_macro_f1:.3f} zero-shot"
            )
        for text in DEMO_INPUTS:
            typer.echo(f"\n{text.splitlines()[-1]}")
            for who, c in (("rules", clf), ("zero-shot", zero)):
                if c is None:
                    continue
                p = c.classify(text)
                probs = "  ".join(f"{k}={v:.2f}" for k, v in p.probs.items())
                tag = f"{who:<10}" if zero is not None else ""
                typer.echo(
                    f"  {tag}-> {p.label:<16} {probs}  ({p.timings.total_ms:.0f} ms, "
                    f"{p.timings.input_tokens} tokens)"
                )
    finally:
        if zero is not None:
            zero.close()
        clf.close()


def show(bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")]) -> None:
    """Render a bundle's task, labels and numbered rules for a human auditor."""
    b = load_bundle(resolve_bundle_path(bundle))
    typer.echo(render_audit(b))


def validate(bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")]) -> None:
    """Check a bundle's schema, digest and system prompt; exit non-zero if it fails."""
    path = resolve_bundle_path(bundle)
    b = load_bundle(path)
    typer.echo(
        f"ok: {path}: {b.name} {b.version}, {len(b.labels)} labels, {len(b.instructions)} rules, {b.digest}"
    )


def list_() -> None:
    """List the bundles shipped with pld."""
    for name, path in shipped_bundles().items():
        b = load_bundle(path)
        typer.echo(
            f"{name:<14} {b.version:<8} labels: {', '.join(b.labels):<44} rules: {len(b.instructions)}"
        )


def path(name: Annotated[str, typer.Argument(help="Shipped bundle name.")]) -> None:
    """Print the file of a shipped bundle."""
    typer.echo(str(resolve_bundle_path(name).resolve()))


# `pld bundle NAME` commands from this package; pld.cli mounts them.
BUNDLE_COMMANDS: dict[str, Callable[..., None]] = {
    "show": show,
    "validate": validate,
    "list": list_,
    "path": path,
}

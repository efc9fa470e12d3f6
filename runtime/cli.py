"""`pld classify`, `pld demo` and `pld bundle ...`: a thin layer over ``pld.runtime``.

Parses arguments, calls the public API and formats output. Errors propagate to ``pld.cli``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from pld.errors import InputError
from pld.progress import progress

from .audit import render_audit
from .bundle import load_bundle, render_system_prompt
from .classifier import Classifier
from .options import ClassifierOptions, FlashAttn, tuning_overrides
from .records import read_records
from .store import resolve_bundle_path, shipped_bundles

bundle_app = typer.Typer(no_args_is_help=True, help="Inspect and check instruction bundles.")

BundleOpt = Annotated[
    str, typer.Option("--bundle", "-b", help="Bundle file or shipped bundle name.")
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name or .gguf path (default: the bundle's student)."),
]
# llama.cpp tuning knobs (ClassifierOptions.type_k/type_v, n_ubatch, flash_attn); left out, each
# keeps the library default. bench/cli.py uses them too.
KvTypeOpt = Annotated[
    str | None,
    typer.Option(
        help="KV cache type for K and V (f16, q8_0, q4_0, ...), or K/V such as q8_0/f16; a "
        "quantized V needs --flash-attn on. Default: f16."
    ),
]
UbatchOpt = Annotated[
    int | None,
    typer.Option(help="Tokens per llama.cpp compute step (0: the decode batch, 512)."),
]
FlashAttnOpt = Annotated[
    FlashAttn | None,
    typer.Option(help="Flash attention: on, off or auto (llama.cpp decides). Default: off."),
]


def classify(
    text: Annotated[str | None, typer.Argument(help="Text to classify (or use --input).")] = None,
    bundle: Annotated[
        str | None,
        typer.Option("--bundle", "-b", help="Bundle file or shipped name (default: stereoset)."),
    ] = None,
    device_dir: Annotated[
        Path | None,
        typer.Option(help="Classify with the bundle active in this device directory."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="With --device-dir: the task (default: the only one)."),
    ] = None,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="JSON Lines file with 'text' (and 'id').")
    ] = None,
    model: ModelOpt = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate", help="Contextual calibration (default: the bundle's)."
        ),
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="Cut inputs that do not fit instead of failing.")
    ] = False,
    n_ctx: Annotated[int, typer.Option(help="Context size in tokens (0: fit the prompt).")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    gpu_layers: Annotated[int, typer.Option(help="Layers to offload to a GPU (-1: all).")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(help="Requests decoded together (1 is fastest on a CPU; raise it on a GPU)."),
    ] = 1,
    kv_type: KvTypeOpt = None,
    ubatch: UbatchOpt = None,
    flash_attn: FlashAttnOpt = None,
    allow_model_mismatch: Annotated[
        bool, typer.Option(help="Run a model other than the bundle's.")
    ] = False,
) -> None:
    """Classify TEXT, or every line of --input, printing one JSON prediction per line."""
    if (text is None) == (input is None):
        raise InputError("give either TEXT or --input FILE (not both, not neither)")
    if device_dir is not None and bundle is not None:
        raise InputError("give --bundle or --device-dir, not both")
    if task is not None and device_dir is None:
        raise InputError("--task needs --device-dir (for a bundle file, use --bundle)")
    options = ClassifierOptions(
        calibrate=calibrate,
        truncate=truncate,
        n_ctx=n_ctx,
        n_threads=threads,
        n_gpu_layers=gpu_layers,
        max_batch=batch_size,
        allow_model_mismatch=allow_model_mismatch,
        **tuning_overrides(kv_type, ubatch, flash_attn),
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
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
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
    options = ClassifierOptions(n_threads=threads, allow_model_mismatch=model is not None)
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


@bundle_app.command("show")
def show(bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")]) -> None:
    """Render a bundle's task, labels and numbered rules for a human auditor."""
    b = load_bundle(resolve_bundle_path(bundle))
    typer.echo(render_audit(b))


@bundle_app.command("validate")
def validate(bundle: Annotated[str, typer.Argument(help="Bundle file or shipped name.")]) -> None:
    """Check a bundle's schema, digest and system prompt; exit non-zero if it fails."""
    path = resolve_bundle_path(bundle)
    b = load_bundle(path)
    typer.echo(
        f"ok: {path}: {b.name} {b.version}, {len(b.labels)} labels, {len(b.instructions)} rules, {b.digest}"
    )


@bundle_app.command("list")
def list_() -> None:
    """List the bundles shipped with pld."""
    for name, path in shipped_bundles().items():
        b = load_bundle(path)
        typer.echo(
            f"{name:<14} {b.version:<8} labels: {', '.join(b.labels):<44} rules: {len(b.instructions)}"
        )


@bundle_app.command("path")
def path(name: Annotated[str, typer.Argument(help="Shipped bundle name.")]) -> None:
    """Print the file of a shipped bundle."""
    typer.echo(str(resolve_bundle_path(name).resolve()))

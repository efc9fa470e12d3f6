"""`pld distill`: a thin wrapper over ``pld.distiller.pipeline.distill``.

Parses options, runs the pipeline, prints the rules and a JSON summary. Importing it loads
nothing heavy: ``pld classify`` on a device imports this module through the root CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer

from pld import models
from pld.distiller.teacher import StructuredOutput
from pld.errors import RunInterrupted

__all__ = ["distill"]

Calibration = Literal["none", "contextual"]  # pipeline.Settings.calibration

INTERRUPTED = (
    "interrupted; finished work is kept (teacher replies are cached): run the same command "
    "again to resume"
)


def distill(
    task: Annotated[
        str,
        typer.Option(
            help="Built-in task (stereoset, contractnli, logiqa) or a JSON/TOML task file."
        ),
    ],
    train: Annotated[Path, typer.Option(help="Labelled training data (.jsonl or .csv).")],
    dev: Annotated[Path, typer.Option(help="Labelled validation data (.jsonl or .csv).")],
    teacher: Annotated[
        str,
        typer.Option(
            help="'openai:MODEL@BASE_URL' (key from PLD_TEACHER_API_KEY or OPENAI_API_KEY) or 'local:NAME_OR_PATH'."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Bundle file to write (.pld.json).")],
    synthesis: Annotated[
        str | None,
        typer.Option(help="Model for consolidation and the conflict loop (default: the teacher)."),
    ] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedding model, same syntax (default: local:STUDENT).")
    ] = None,
    student: Annotated[
        str, typer.Option(help="Student model name or .gguf path.")
    ] = models.DEFAULT_MODEL,
    limit: Annotated[
        int | None,
        typer.Option(help="Training records to use, sampled stratified by label (default: all)."),
    ] = None,
    dev_limit: Annotated[
        int, typer.Option(help="Dev records scored each round, stratified (0: all).")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed of every sample.")] = 0,
    eps: Annotated[float, typer.Option(help="DBSCAN radius (cosine distance).")] = 0.4,
    min_samples: Annotated[int, typer.Option(help="DBSCAN core size.")] = 6,
    rounds: Annotated[int, typer.Option(help="Most conflict-loop rounds (0: none).")] = 2,
    loop_limit: Annotated[
        int, typer.Option(help="Training records the student runs per round.")
    ] = 100,
    loop_failures: Annotated[
        int, typer.Option(help="Failures shown to the synthesis model per round.")
    ] = 16,
    loop_successes: Annotated[int, typer.Option(help="Successes shown per round.")] = 8,
    example_chars: Annotated[
        int,
        typer.Option(
            help="Characters of each input shown per round (longer inputs are cut); lower this, or the two above, for a teacher with a short context."
        ),
    ] = 3000,
    max_rules: Annotated[int, typer.Option(help="Most rules a revision may hold.")] = 40,
    prompt_budget: Annotated[
        int, typer.Option(help="Most system-prompt tokens; lowest-support rules are pruned first.")
    ] = 4096,
    calibration: Annotated[
        Calibration, typer.Option(help="Student calibration in the bundle.")
    ] = "none",
    text_field: Annotated[str, typer.Option(help="Input text column.")] = "text",
    label_field: Annotated[str, typer.Option(help="Gold label column.")] = "label",
    concurrency: Annotated[int, typer.Option(help="Parallel teacher requests.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one teacher reply.")] = 120.0,
    retries: Annotated[
        int,
        typer.Option(
            help="Attempts per teacher request (429, 5xx, timeouts and lost connections are retried with backoff)."
        ),
    ] = 6,
    structured_output: Annotated[
        StructuredOutput,
        typer.Option(
            help="How JSON replies are requested from openai: teachers (json_object for llama-cpp-python's server)."
        ),
    ] = "json_schema",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Teacher response cache (default: teacher-cache/ in pld's cache directory: $PLD_CACHE_DIR, else $XDG_CACHE_HOME/pld, else ~/.cache/pld)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Distil a bundle: teacher rules, clustered, merged and revised against the student."""
    from pld.runtime.bundle import load_bundle

    try:
        from pld.distiller.pipeline import Settings
        from pld.distiller.pipeline import distill as run

        settings = Settings(
            limit=limit, dev_limit=dev_limit or None, seed=seed, eps=eps, min_samples=min_samples,
            max_rounds=rounds, loop_limit=loop_limit, max_failures=loop_failures,
            max_successes=loop_successes, example_chars=example_chars, max_rules=max_rules,
            prompt_budget=prompt_budget, calibration=calibration, text_field=text_field,
            label_field=label_field,
        )  # fmt: skip
        result = run(
            task=task, train=train, dev=dev, teacher=teacher, out=out, synthesis=synthesis,
            embedder=embedder, student=student, settings=settings, cache_dir=cache_dir,
            concurrency=concurrency, show_progress=progress,
            teacher_options={"timeout": timeout, "structured_output": structured_output,
                             "max_attempts": retries},
        )  # fmt: skip
    except KeyboardInterrupt:
        raise RunInterrupted(INTERRUPTED) from None
    bundle = load_bundle(result.bundle)
    typer.echo(f"\nbundle {result.bundle} ({'unchanged' if result.unchanged else 'written'}): "
               f"{result.rules} rules, {result.prompt_tokens} prompt tokens")  # fmt: skip
    for i, ins in enumerate(bundle.instructions, 1):
        typer.echo(f"{i:>3}. [support {ins.support}, round {ins.round}] {ins.text}")
    typer.echo(f"dev Macro-F1 (n={result.dev_n}): zero-shot {result.dev_macro_f1_zero_shot:.3f} -> "
               f"bundle {result.dev_macro_f1_bundle:.3f}; teacher calls {result.teacher_calls}, "
               f"cache hits {result.cache_hits}, tokens spent {result.tokens_spent:,}")  # fmt: skip
    typer.echo(msgspec.json.encode(result).decode())

"""`pld distill`: a thin wrapper over ``pld.distiller.pipeline.distill``, and `pld distill
cluster` over ``pld.distiller.ruleset``.

``app`` is a group whose callback runs the pipeline when no subcommand is named, so that
``pld distill --task ...`` distils and ``pld distill cluster`` clusters. Each command parses
options, calls the public API and prints a readable report and a JSON line last. Importing it
loads nothing heavy: ``pld classify`` on a device imports this module through the root CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer

from pld import models
from pld.distiller.backends import DEFAULT_EMBEDDER
from pld.distiller.teacher import StructuredOutput
from pld.errors import RunInterrupted

__all__ = ["app", "cluster", "distill"]

Calibration = Literal["none", "contextual", "fitted", "auto"]  # pipeline.Settings.calibration
Revise = Literal["list", "targeted"]  # pipeline.Settings.revise

INTERRUPTED = (
    "interrupted; finished work is kept (teacher replies are cached): run the same command "
    "again to resume"
)
EMBEDDER_HELP = (
    f"Embedding model: '{DEFAULT_EMBEDDER}' (shipped in its wheel, offline), 'onnx:DIR' (model.onnx and "
    "tokenizer.json), or a teacher spec ('openai:MODEL@BASE_URL', 'local:NAME')."
)
EPS_HELP = (
    "DBSCAN radius (cosine distance); default: chosen from the embeddings (the knee of the "
    "k-distance curve), and printed."
)
MIN_SAMPLES_HELP = "DBSCAN core size; default: max(2, min(6, rules // 20)), and printed."
CACHE_HELP = (
    "Teacher response cache (default: teacher-cache/ in pld's cache directory: $PLD_CACHE_DIR, "
    "else $XDG_CACHE_HOME/pld, else ~/.cache/pld)."
)

app = typer.Typer(pretty_exceptions_enable=False)


@app.callback(invoke_without_command=True)
def distill(
    ctx: typer.Context,
    task: Annotated[
        str | None,
        typer.Option(
            help="Built-in task (stereoset, contractnli, logiqa) or a JSON/TOML task file. Required."
        ),
    ] = None,
    train: Annotated[
        Path | None, typer.Option(help="Labelled training data (.jsonl or .csv). Required.")
    ] = None,
    dev: Annotated[
        Path | None, typer.Option(help="Labelled validation data (.jsonl or .csv). Required.")
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="'openai:MODEL@BASE_URL' (key from PLD_TEACHER_API_KEY or OPENAI_API_KEY) or 'local:NAME_OR_PATH'. Required."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Bundle file to write (.pld.json). Required.")
    ] = None,
    synthesis: Annotated[
        str | None,
        typer.Option(help="Model for consolidation and the conflict loop (default: the teacher)."),
    ] = None,
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP)] = DEFAULT_EMBEDDER,
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
    eps: Annotated[float | None, typer.Option(help=EPS_HELP)] = None,
    min_samples: Annotated[int | None, typer.Option(help=MIN_SAMPLES_HELP)] = None,
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
    revise: Annotated[
        Revise,
        typer.Option(
            help="How the conflict loop revises: 'list' has the synthesis model rewrite the whole "
            "list (the paper's way); 'targeted' asks for one new rule per round for the student's "
            "most frequent confusion (for a teacher too weak to rewrite a list)."
        ),
    ] = "list",
    confidence: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.999,
            help="Keep a revision only if the lower bound of its paired bootstrap gain in dev "
            "Macro-F1 is above zero at this one-sided confidence; 0 keeps any rise, as the "
            "paper does (on a few hundred dev records a rise of 0.02 is noise).",
        ),
    ] = 0.9,
    prompt_budget: Annotated[
        int, typer.Option(help="Most system-prompt tokens; lowest-support rules are pruned first.")
    ] = 4096,
    calibration: Annotated[
        Calibration,
        typer.Option(
            help="Student calibration in the bundle; 'auto' measures none, contextual and a "
            "prior fitted on dev (scored by cross-validation) for this student and keeps the best."
        ),
    ] = "auto",
    vote: Annotated[
        bool,
        typer.Option(
            help="Before clustering, drop the minority of rules whose condition (label names "
            "masked) also led to another label; a tie drops them all."
        ),
    ] = True,
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
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Distil a bundle: teacher rules, clustered, merged and revised against the student.

    With a command (pld distill cluster RULES) the options here are not used.
    """
    if ctx.invoked_subcommand is not None:
        return
    if task is None or train is None or dev is None or teacher is None or out is None:
        given = {"--task": task, "--train": train, "--dev": dev, "--teacher": teacher, "--out": out}
        missing = ", ".join(f"'{name}'" for name, value in given.items() if value is None)
        ctx.fail(f"Missing option {missing}.")  # a usage error: exit code 2
    from pld.runtime import load_bundle

    try:
        from pld.distiller.pipeline import Settings
        from pld.distiller.pipeline import distill as run

        settings = Settings(
            limit=limit, dev_limit=dev_limit or None, seed=seed, eps=eps, min_samples=min_samples,
            max_rounds=rounds, loop_limit=loop_limit, max_failures=loop_failures,
            max_successes=loop_successes, example_chars=example_chars, max_rules=max_rules,
            prompt_budget=prompt_budget, calibration=calibration, text_field=text_field,
            label_field=label_field, vote=vote, revise=revise, confidence=confidence,
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


@app.command()
def cluster(
    rules: Annotated[
        Path,
        typer.Argument(
            help="A text file with one rule a line, or the --cache-dir of a pld distill run "
            "(its extraction replies' rules)."
        ),
    ],
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP)] = DEFAULT_EMBEDDER,
    eps: Annotated[float | None, typer.Option(help=EPS_HELP)] = None,
    min_samples: Annotated[int | None, typer.Option(help=MIN_SAMPLES_HELP)] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Cluster rules as pld distill would, before paying for consolidation: the clusters, the
    distances' spread, and a JSON line last (clusters and noise as 0-based line indices)."""
    from pld.distiller.cache import ResponseCache
    from pld.distiller.ruleset import cluster_rules, read_rules
    from pld.progress import progress as bar

    numbered = read_rules(rules)
    index = [i for i, _ in numbered]
    texts = [text for _, text in numbered]
    with bar("embedding rules", len(texts), show=progress) as update:
        found = cluster_rules(texts, embedder=embedder, eps=eps, min_samples=min_samples,
                              cache=ResponseCache(cache_dir), progress=update)  # fmt: skip
    d, st = found.distances, found.settings
    typer.echo(f"{len(texts)} rules, embedder {embedder}")
    typer.echo(f"pairwise cosine distances ({d.pairs} pairs): min {d.min:.3f}, q1 {d.q1:.3f}, "
               f"median {d.median:.3f}, q3 {d.q3:.3f}, max {d.max:.3f}")  # fmt: skip
    typer.echo(f"DBSCAN: {st.describe()}")
    typer.echo(f"{len(found.clusters)} clusters of sizes {[len(c) for c in found.clusters]}, "
               f"{len(found.noise)} noise rules")  # fmt: skip
    groups = [(f"cluster {n}", members) for n, members in enumerate(found.clusters, 1)]
    for name, members in [*groups, ("noise", found.noise)]:
        if members:
            typer.echo(f"\n{name}: {len(members)} rules")
            for i in members:
                typer.echo(f"  [{index[i]}] {texts[i]}")
    summary = {
        "clusters": [[index[i] for i in c] for c in found.clusters],
        "noise": [index[i] for i in found.noise],
        "median_distance": found.median_distance,
        "eps": found.eps,
        "min_samples": found.min_samples,
        "embedder": embedder,
        "eps_source": st.eps_source,
        "min_samples_source": st.min_samples_source,
        "distances": d,
    }
    typer.echo(msgspec.json.encode(summary).decode())

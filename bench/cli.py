"""`pld eval`, `pld bundle audit` and `pld bench ...`: thin wrappers that print a table, then one
JSON line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer

from pld.errors import ConfigError
from pld.runtime import ClassifierOptions, load_bundle, resolve_bundle_path, save_bundle
from pld.runtime.cli import FlashAttnOpt, KvTypeOpt, UbatchOpt
from pld.runtime.options import tuning_overrides

from .baseline import EXAMPLE_CHARS
from .scaling_cli import scaling

bench_app = typer.Typer(no_args_is_help=True, help="Latency benchmarks.")
bench_app.command("scaling")(scaling)


def evaluate(
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Bundle file or shipped name.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled JSON Lines split.")],
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name or .gguf path.")
    ] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option("--calibrate/--no-calibrate", help="Default: the bundle's setting."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(help="Requests decoded together (1 is fastest on a CPU; raise it on a GPU)."),
    ] = 1,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    gpu_layers: Annotated[int, typer.Option(help="Layers to offload to a GPU (-1: all).")] = 0,
    allow_model_mismatch: Annotated[
        bool, typer.Option(help="Run a model other than the bundle's.")
    ] = False,
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

    options = ClassifierOptions(
        calibrate=calibrate,
        max_batch=batch_size,
        n_threads=threads,
        n_gpu_layers=gpu_layers,
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
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Bundle file or shipped name.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled JSON Lines split.")],
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
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name or .gguf path.")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the few-shot example draw.")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(help="Requests decoded together (1 is fastest on a CPU; raise it on a GPU)."),
    ] = 1,
) -> None:
    """One self-contained HTML accuracy report (and its numbers as JSON): the bundle against
    baselines, per-label scores, confusion matrices, latency, rules and errors."""
    from .report import build_report, format_summary, json_path_for, write_report

    if out is None:
        out = Path(f"report-{load_bundle(resolve_bundle_path(bundle)).name}-{data.stem}.html")
    json_path_for(out)  # a wrong --out fails now, not after the run
    options = ClassifierOptions(
        max_batch=batch_size, n_threads=threads, allow_model_mismatch=model is not None
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
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled JSON Lines split.")],
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
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name or .gguf path.")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(help="Requests decoded together (at least 2: the full-size window cache)."),
    ] = 2,
    n_batch: Annotated[
        int,
        typer.Option(
            help="Tokens per decode call; a switch between prompts restarts at a multiple of it."
        ),
    ] = 512,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    gpu_layers: Annotated[int, typer.Option(help="Layers to offload to a GPU (-1: all).")] = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Each rule's effect on Macro-F1 and accuracy, measured by leaving it out, sorted by effect."""
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
    options = ClassifierOptions(
        max_batch=batch_size, n_batch=n_batch, n_threads=threads, n_gpu_layers=gpu_layers
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


@bench_app.command("latency")
def latency(
    bundle: Annotated[
        str | None,
        typer.Option("--bundle", "-b", help="Default: Contract-NLI with ~4,600 tokens of rules."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Inputs (default: the first 64 StereoSet dev records, shipped)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name or .gguf path.")
    ] = None,
    requests: Annotated[int, typer.Option(help="Distinct inputs timed per repeat.")] = 16,
    repeats: Annotated[
        int, typer.Option(help="Interleaved repeats of the reuse/floor/batched modes.")
    ] = 3,
    full_requests: Annotated[
        int, typer.Option(help="Requests timed with the whole prompt (slow).")
    ] = 3,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    gpu_layers: Annotated[int, typer.Option(help="Layers to offload (-1: all).")] = 0,
    kv_type: KvTypeOpt = None,
    ubatch: UbatchOpt = None,
    flash_attn: FlashAttnOpt = None,
    batch_size: Annotated[int, typer.Option(help="Requests per batch in mode (c).")] = 8,
) -> None:
    """Full prompt vs prefix reuse vs batched vs empty prompt; prime vs restore; peak memory."""
    from .latency import format_latency, run_latency

    options = ClassifierOptions(
        n_threads=threads,
        n_gpu_layers=gpu_layers,
        **tuning_overrides(kv_type, ubatch, flash_attn),
    )
    r = run_latency(
        bundle=bundle,
        data=data,
        options=options,
        model=model,
        requests=requests,
        repeats=repeats,
        full_requests=full_requests,
        batch_size=batch_size,
    )
    typer.echo(format_latency(r))
    typer.echo(msgspec.json.encode(r).decode())


def compare(
    bundle: Annotated[
        str | None,
        typer.Option("--bundle", "-b", help="Default: Contract-NLI with ~4,600 tokens of rules."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Inputs (default: the first 64 StereoSet dev records, shipped)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name or .gguf path.")
    ] = None,
    requests: Annotated[int, typer.Option(help="Inputs timed per repeat.")] = 16,
    repeats: Annotated[
        int, typer.Option(help="Round-robin repeats (on new inputs while the data lasts).")
    ] = 3,
    threads: Annotated[int, typer.Option(help="CPU threads for every contender (0: all).")] = 0,
    gpu_layers: Annotated[int, typer.Option(help="Layers every contender offloads (-1: all).")] = 0,
    server_bin: Annotated[
        Path | None,
        typer.Option(
            help="llama-server binary (default: the one scripts/build_llama_server.sh caches)."
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help="Contenders to leave out (repeat or comma-separate): pld_batched, "
            "chat_completion, chat_completion_cached, llama_server, llama_server_swa_full."
        ),
    ] = None,
    grammar: Annotated[
        bool,
        typer.Option(help="Limit generation to the labels with a grammar (else a few tokens)."),
    ] = True,
    batch_size: Annotated[int, typer.Option(help="Requests per batch for pld_batched.")] = 8,
    slow_requests: Annotated[
        int,
        typer.Option(help="Requests timed for a contender that re-evaluates the whole prompt."),
    ] = 3,
    ram_cache_mb: Annotated[
        int, typer.Option(help="Capacity of chat_completion_cached's LlamaRAMCache.")
    ] = 512,
    json_out: Annotated[
        Path | None,
        typer.Option(help="Also write the full result, with every request, to this file."),
    ] = None,
) -> None:
    """pld against create_chat_completion (with and without LlamaRAMCache) and llama-server."""
    from .compare import format_compare, run_compare

    r = run_compare(
        bundle=bundle,
        data=data,
        model=model,
        requests=requests,
        repeats=repeats,
        threads=threads,
        gpu_layers=gpu_layers,
        server_bin=server_bin,
        skip=[s.strip() for item in skip or [] for s in item.split(",") if s.strip()],
        grammar=grammar,
        batch_size=batch_size,
        slow_requests=slow_requests,
        ram_cache_mb=ram_cache_mb,
    )
    if json_out is not None:
        json_out.write_bytes(msgspec.json.encode(r))
    typer.echo(format_compare(r))
    typer.echo(msgspec.json.encode({k: v for k, v in r.items() if k != "per_request"}).decode())


bench_app.command("compare")(compare)

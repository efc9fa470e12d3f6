"""`pld bench ...`: thin wrappers over the latency benchmarks that print a table, then one JSON
line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer

from pld.runtime.cli_options import (
    BatchSizeOpt,
    FlashAttnOpt,
    GpuLayersOpt,
    KvTypeOpt,
    ModelOpt,
    ThreadsOpt,
    UbatchOpt,
    bundle_option,
    classifier_options,
    data_option,
)

from .scaling_cli import BENCH_BUNDLE, BENCH_DATA, scaling

bench_app = typer.Typer(no_args_is_help=True, help="Latency benchmarks.")
bench_app.command("scaling")(scaling)


@bench_app.command("latency")
def latency(
    bundle: Annotated[str | None, bundle_option(BENCH_BUNDLE)] = None,
    data: Annotated[Path | None, data_option(BENCH_DATA)] = None,
    model: ModelOpt = None,
    requests: Annotated[int, typer.Option(help="Distinct inputs timed per repeat.")] = 16,
    repeats: Annotated[
        int, typer.Option(help="Interleaved repeats of the reuse/floor/batched modes.")
    ] = 3,
    full_requests: Annotated[
        int, typer.Option(help="Requests timed with the whole prompt (slow).")
    ] = 3,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
    kv_type: KvTypeOpt = None,
    ubatch: UbatchOpt = None,
    flash_attn: FlashAttnOpt = None,
    batch_size: BatchSizeOpt = 8,
) -> None:
    """Full prompt vs prefix reuse vs batched (--batch-size together) vs empty prompt; prime vs
    restore; peak memory."""
    from .latency import format_latency, run_latency

    options = classifier_options(
        threads=threads,
        gpu_layers=gpu_layers,
        kv_type=kv_type,
        ubatch=ubatch,
        flash_attn=flash_attn,
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
    bundle: Annotated[str | None, bundle_option(BENCH_BUNDLE)] = None,
    data: Annotated[Path | None, data_option(BENCH_DATA)] = None,
    model: ModelOpt = None,
    requests: Annotated[int, typer.Option(help="Inputs timed per repeat.")] = 16,
    repeats: Annotated[
        int, typer.Option(help="Round-robin repeats (on new inputs while the data lasts).")
    ] = 3,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
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
            "chat_completion, chat_completion_cached, chat_completion_logprobs, llama_server, "
            "llama_server_swa_full, llama_server_logprobs, llama_server_logprobs_swa_full."
        ),
    ] = None,
    grammar: Annotated[
        bool,
        typer.Option(help="Limit generation to the labels with a grammar (else a few tokens)."),
    ] = True,
    batch_size: BatchSizeOpt = 8,
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
    """pld against create_chat_completion (with and without LlamaRAMCache), create_completion
    reading one token's logits, and llama-server (generating, or one token's log-probabilities).

    Every contender runs with --threads and --gpu-layers; --batch-size is pld_batched's."""
    from .compare import run_compare
    from .compare_summary import format_compare

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
    typer.echo(msgspec.json.encode(r.line()).decode())


bench_app.command("compare")(compare)

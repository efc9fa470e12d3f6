"""`pld bench ...`: thin wrappers over the latency benchmarks that print a table, then one JSON
line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer

from pld.runtime import ClassifierOptions
from pld.runtime.cli import FlashAttnOpt, KvTypeOpt, UbatchOpt
from pld.runtime.options import tuning_overrides

from .scaling_cli import scaling

bench_app = typer.Typer(no_args_is_help=True, help="Latency benchmarks.")
bench_app.command("scaling")(scaling)


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

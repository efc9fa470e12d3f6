"""`pld bench scaling`: parses the grid's options into a ``ScalingConfig``, runs the sweeps
through ``run_scaling`` and prints the tables, then one JSON line. Owns no measuring and no
drawing (those live in ``pld.bench.scaling``, ``sweeps`` and ``plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from pld.errors import ConfigError
from pld.runtime.cli_options import GpuLayersOpt, ModelOpt, ThreadsOpt, bundle_option, data_option

from .scaling import format_scaling, run_scaling
from .scaling_config import SWEEPS, ScalingConfig

__all__ = ["BENCH_BUNDLE", "BENCH_DATA", "scaling"]

# What the benchmarks run when --bundle and --data are left out (pld.bench.inputs).
BENCH_BUNDLE = "Contract-NLI with ~4,600 tokens of rules"
BENCH_DATA = "the first 64 StereoSet dev records, shipped"


def _ints(value: str | None, option: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"{option} takes comma-separated whole numbers, e.g. 0,1000,4000"
        ) from None


def scaling(
    out: Annotated[Path, typer.Option(help="Folder for the CSV and PNG files.")] = Path(
        "bench/results"
    ),
    sweeps: Annotated[
        str, typer.Option(help=f"Comma-separated subset of {','.join(SWEEPS)}.")
    ] = ",".join(SWEEPS),
    quick: Annotated[
        bool, typer.Option(help="A tiny grid (seconds): for tests and a first look.")
    ] = False,
    bundle: Annotated[str | None, bundle_option(BENCH_BUNDLE)] = None,
    data: Annotated[Path | None, data_option(BENCH_DATA)] = None,
    model: ModelOpt = None,
    prompt_tokens: Annotated[
        str | None, typer.Option(help="System prompt lengths (tokens), e.g. 0,1000,4000.")
    ] = None,
    input_tokens: Annotated[
        str | None, typer.Option(help="Input lengths (tokens) for the input sweep.")
    ] = None,
    batch_sizes: Annotated[str | None, typer.Option(help="Batch sizes, e.g. 1,2,4,8.")] = None,
    fixed_prompt_tokens: Annotated[
        int | None,
        typer.Option(help="Prompt length of the input and batch sweeps (default: the bundle's)."),
    ] = None,
    requests: Annotated[int | None, typer.Option(help="Inputs timed per point and repeat.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Interleaved repeats.")] = None,
    full_requests: Annotated[
        int | None, typer.Option(help="Inputs timed with full evaluation per point (slow).")
    ] = None,
    batch_requests: Annotated[
        int | None, typer.Option(help="Inputs per throughput pass of the batch sweep.")
    ] = None,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
) -> None:
    """Latency against prompt and input length, throughput against batch size, prime and restore
    against prompt length: CSV and PNG per sweep."""
    given: dict[str, Any] = {
        "bundle": bundle,
        "data": None if data is None else str(data),
        "model": model,
        "sweeps": tuple(s.strip() for s in sweeps.split(",") if s.strip()),
        "prompt_tokens": _ints(prompt_tokens, "--prompt-tokens"),
        "input_tokens": _ints(input_tokens, "--input-tokens"),
        "batch_sizes": _ints(batch_sizes, "--batch-sizes"),
        "fixed_prompt_tokens": fixed_prompt_tokens,
        "requests": requests,
        "repeats": repeats,
        "full_requests": full_requests,
        "batch_requests": batch_requests,
        "threads": threads,
        "gpu_layers": gpu_layers,
    }
    given = {k: v for k, v in given.items() if v is not None}
    cfg = ScalingConfig.quick(**given) if quick else ScalingConfig(**given)
    result = run_scaling(cfg, out)
    typer.echo(format_scaling(result))
    typer.echo(msgspec.json.encode(result).decode())

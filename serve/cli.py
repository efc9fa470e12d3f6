"""`pld serve`: parse options, check that the serve extra is installed, run the server.

Imports nothing of the extra at module level, so `pld --help` works on a device without it.
Errors propagate to ``pld.cli``, which prints them (exit 2).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated

import typer

from pld.errors import ConfigError, DependencyError, InputError
from pld.runtime.cli_options import (
    BatchSizeOpt,
    BundlesOpt,
    DeviceDirOpt,
    GpuLayersOpt,
    MaxBatchOpt,
    ThreadsOpt,
    TruncateOpt,
    batch_size_of,
    classifier_options,
)

__all__ = ["serve"]


def require_serve_extra() -> None:
    """Refuse with the install command when starlette, uvicorn or prometheus-client is missing."""
    from importlib.util import find_spec

    missing = [n for n in ("starlette", "uvicorn", "prometheus_client") if find_spec(n) is None]
    if missing:
        raise DependencyError(
            f"{', '.join(missing)} not installed; pld serve needs the serve extra: "
            "pip install 'pld[serve]'"
        )


def serve(
    device_dir: DeviceDirOpt = None,
    bundle: BundlesOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes (413).")] = 1 << 20,
    max_inputs: Annotated[int, typer.Option(help="Most inputs in one request (413).")] = 64,
    max_queue: Annotated[
        int, typer.Option(help="Most inputs waiting over all requests (503 + Retry-After).")
    ] = 256,
    batch_size: BatchSizeOpt = 1,
    max_batch: MaxBatchOpt = None,
    batch_window_ms: Annotated[
        float, typer.Option(help="With --batch-size > 1: wait this long for a fuller batch.")
    ] = 0.0,
    truncate: TruncateOpt = False,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="PLD_ADMIN_TOKEN", help="Token that allows POST /v1/reload off loopback."
        ),
    ] = None,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at most; more are answered 503.")
    ] = 128,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a request head may take to arrive.")
    ] = 10.0,
    threads: ThreadsOpt = 0,
    gpu_layers: GpuLayersOpt = 0,
    poll: Annotated[
        float, typer.Option(help="Seconds between checks of the device directory for a pull.")
    ] = 1.0,
) -> None:
    """Serve every task of a device directory (or some bundles) over HTTP on one loaded model.

    Give --device-dir, or --bundle [TASK=]NAME_OR_PATH once per task. POST /v1/classify
    {"task", "inputs": [...]} | {"text": ...}; GET /v1/tasks, /healthz, /readyz, /metrics;
    POST /v1/reload (or SIGHUP). SIGTERM drains and exits 0. With --truncate, an input too
    long for the context is cut instead of answered 422.
    """
    batch_size = batch_size_of(batch_size, max_batch)
    if admin_token is not None and not admin_token.strip():
        raise ConfigError(
            "--admin-token is empty: anyone could reload; give a long random token (e.g. "
            "from 'openssl rand -hex 32'), or leave it out to allow loopback only"
        )
    if (device_dir is None) == (not bundle):
        raise InputError("give --device-dir D or one or more --bundle NAME_OR_PATH (not both)")
    for name, value in (("--max-body", max_body), ("--max-inputs", max_inputs),
                        ("--max-queue", max_queue), ("--batch-size", batch_size),
                        ("--max-connections", max_connections)):  # fmt: skip
        if value < 1:
            raise ConfigError(f"{name} is {value}; give a positive number")
    if header_timeout <= 0:
        raise ConfigError(f"--header-timeout is {header_timeout:g}; give seconds above 0")
    if poll <= 0:
        raise ConfigError(f"--poll is {poll:g}; give the seconds between checks, above 0")
    if batch_window_ms < 0:
        raise ConfigError(f"--batch-window-ms is {batch_window_ms:g}; give 0 or more")
    if max_queue < max_inputs:
        raise ConfigError(
            f"--max-queue ({max_queue}) is below --max-inputs ({max_inputs}): a full request "
            "could never be admitted; raise --max-queue"
        )
    require_serve_extra()
    from .server import run
    from .service import ServeOptions
    from .sources import BundleSource, DeviceSource, Source

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s pld serve: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("pld.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    source: Source = (
        DeviceSource(device_dir) if device_dir is not None else BundleSource(bundle or [])
    )
    if device_dir is not None and not device_dir.is_dir():
        raise InputError(f"device directory {device_dir} does not exist; run pld device pull first")
    source.wanted()  # fail now, not after binding, when nothing is there to serve
    t0 = time.time()
    service = run(
        source,
        host=host,
        port=port,
        options=ServeOptions(
            max_body=max_body,
            max_inputs=max_inputs,
            max_queue=max_queue,
            max_batch=batch_size,
            batch_window_ms=batch_window_ms,
            admin_token=admin_token,
            poll_s=poll,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
        ),
        classifier=classifier_options(
            truncate=truncate, threads=threads, gpu_layers=gpu_layers, batch_size=batch_size
        ),
    )
    import msgspec

    summary = {
        "served_s": round(time.time() - t0, 1),
        "ready_s": round(service.ready_at - t0, 2) if service.ready_at else None,
        "queue_left": service.worker.pending,
    }
    typer.echo(msgspec.json.encode(summary).decode())

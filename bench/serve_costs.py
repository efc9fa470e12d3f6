"""The server's costs beside the load test (commands of ``load_serve.py``): ``batching``, one
at a time (`--batch-size 1`) against micro-batching under the same load; ``rss``, peak memory of one
server with several bundles against separate classifiers; ``ready``, time to ready, cold and with
the prefix states a pull saved. Each prints a table, then one JSON line.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import httpx
import msgspec
import typer

from pld.metrics import percentile
from pld.progress import progress
from pld.runtime.cli_options import BatchSizeOpt, MaxBatchOpt, batch_size_of

from .inputs import default_bundle, default_texts
from .serve_harness import (
    BATCHES,
    BATCHES_TEXT,
    TASKS,
    BatchesOpt,
    Clients,
    Device,
    Server,
    ServerOutputOpt,
    ThreadsOpt,
    log_stderr,
    parse_sizes,
    request_stream,
)
from .serve_types import BatchingResult, BatchingRow

__all__ = ["batching", "ready", "rss", "run_batching"]

# ---- one at a time against micro-batching, interleaved -----------------------------------------


def run_batching(
    *,
    clients: int = 8,
    requests: int = 48,
    repeats: int = 4,
    max_batch: int = 8,
    batch_window_ms: float = 5.0,
    long: bool = False,
    threads: int = 0,
    batches: Sequence[int] = BATCHES,
    seed: int = 0,
    server_output: bool = False,
    log: Callable[[str], None] = log_stderr,
) -> BatchingResult:
    """`pld serve --batch-size 1` against `--batch-size N`: two servers on the same bundles, started
    once; each repeat sends one wave of ``requests`` requests (K clients) to each, in alternating
    order, the same requests to both. Returns the result."""
    if max_batch < 2:
        raise typer.BadParameter(f"--batch-size {max_batch}: give 2 or more (1 is the baseline)")
    specs = [f"contractnli-long={default_bundle()}"] if long else list(TASKS)
    tasks = [s.split("=")[0] for s in specs]
    common = [a for s in specs for a in ("--bundle", s)]
    common += ["--threads", str(threads), "--max-queue", "4096"]
    sizes = (1, max_batch)
    waits = {1: 0.0, max_batch: batch_window_ms}
    nth, warm = request_stream(tasks, batches, seed), request_stream(tasks, batches, seed + 1)
    lat: dict[int, list[float]] = {b: [] for b in sizes}
    inputs = dict.fromkeys(sizes, 0)
    wall = dict.fromkeys(sizes, 0.0)
    per_repeat: dict[int, list[float]] = {b: [] for b in sizes}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="pld-batching-") as tmp:
        servers: dict[int, Server] = {}
        try:
            for b in sizes:
                servers[b] = Server(
                    *common, "--batch-size", str(b), "--batch-window-ms", str(waits[b]),
                    log_dir=Path(tmp), echo=server_output,
                )  # fmt: skip
                log(f"--batch-size {b}: ready in {servers[b].ready_s:.1f} s")
            for b in sizes:  # warm up each server with a wave it is not measured on
                with Clients(servers[b].url, clients, warm, count=clients) as cl:
                    failed += sum(a.status != 200 for a in cl.join())
            stats0 = {b: servers[b].batch_stats() for b in sizes}
            with progress("waves", repeats * len(sizes)) as bar:
                for r in range(repeats):
                    for j, b in enumerate(sizes if r % 2 == 0 else sizes[::-1]):
                        with Clients(
                            servers[b].url, clients, nth, first=r * requests, count=requests
                        ) as cl:
                            wave = cl.join()
                        failed += sum(a.status != 200 for a in wave)
                        span = max(a.got for a in wave) - min(a.sent for a in wave)
                        lat[b] += [(a.got - a.sent) * 1000 for a in wave]
                        inputs[b] += sum(a.n for a in wave)
                        wall[b] += span
                        per_repeat[b].append(sum(a.n for a in wave) / span)
                        bar(r * len(sizes) + j + 1, repeats * len(sizes))
            stats1 = {b: servers[b].batch_stats() for b in sizes}
        finally:
            for s in servers.values():
                s.stop()
    rows: list[BatchingRow] = []
    for b in sizes:
        calls = stats1[b][1] - stats0[b][1]
        rows.append(
            BatchingRow(
                max_batch=b,
                batch_window_ms=waits[b],
                requests=len(lat[b]),
                inputs=inputs[b],
                p50_ms=round(percentile(lat[b], 0.5), 1) if lat[b] else float("nan"),
                p99_ms=round(percentile(lat[b], 0.99), 1) if lat[b] else float("nan"),
                inputs_per_s=round(inputs[b] / wall[b], 2),
                mean_batch=round((stats1[b][0] - stats0[b][0]) / calls, 2) if calls else None,
            )
        )
    one, many = rows
    ratios = [n / o for o, n in zip(per_repeat[1], per_repeat[max_batch], strict=True)]
    return BatchingResult(
        bundles="long" if long else "shipped",
        tasks=tasks,
        clients=clients,
        threads=threads,
        requests_per_wave=requests,
        repeats=repeats,
        batches=list(batches),
        failed=failed,
        rows=rows,
        throughput_ratio=round(statistics.median(ratios), 3),
        throughput_ratios=[round(x, 3) for x in ratios],
        p50_ratio=round(many.p50_ms / one.p50_ms, 3),
        p99_ratio=round(many.p99_ms / one.p99_ms, 3),
    )


def batching(
    batch_size: BatchSizeOpt = 8,
    max_batch: MaxBatchOpt = None,
    batch_window_ms: Annotated[
        float, typer.Option(help="The batched server's --batch-window-ms.")
    ] = 5.0,
    clients: Annotated[int, typer.Option(help="Concurrent client threads.")] = 8,
    requests: Annotated[int, typer.Option(help="Requests per wave.")] = 48,
    repeats: Annotated[int, typer.Option(help="Waves per server, alternating.")] = 4,
    long: Annotated[
        bool,
        typer.Option(
            "--long/--short",
            help="The long benchmark bundle (about 4,600 prompt tokens) or the shipped three.",
        ),
    ] = False,
    threads: ThreadsOpt = 0,
    batches: BatchesOpt = BATCHES_TEXT,
    seed: Annotated[int, typer.Option(help="Seed of the request stream.")] = 0,
    server_output: ServerOutputOpt = False,
) -> None:
    """--batch-size 1 against --batch-size N (the batched server's), interleaved waves; a
    table, then one JSON line."""
    result = run_batching(
        clients=clients, requests=requests, repeats=repeats,
        max_batch=batch_size_of(batch_size, max_batch),
        batch_window_ms=batch_window_ms, long=long, threads=threads,
        batches=parse_sizes(batches), seed=seed, server_output=server_output,
    )  # fmt: skip
    print(f"bundles: {result.bundles} ({', '.join(result.tasks)}); failed: {result.failed}")
    print(f"{'max_batch':>9} {'requests':>8} {'inputs':>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'inputs/s':>9} {'mean batch':>10}")  # fmt: skip
    for r in result.rows:
        print(
            f"{r.max_batch:>9} {r.requests:>8} {r.inputs:>7} {r.p50_ms:>9} "
            f"{r.p99_ms:>9} {r.inputs_per_s:>9} {r.mean_batch!s:>10}"
        )
    print(
        f"batched / one at a time: throughput x{result.throughput_ratio} (median of "
        f"{result.repeats}), p50 x{result.p50_ratio}, p99 x{result.p99_ratio}"
    )
    print(msgspec.json.encode(result).decode())


# ---- memory and time to ready -------------------------------------------------------------------

_SEPARATE = """
import sys
from pld.proc import peak_rss_mb
from pld.runtime import Classifier
clfs = [Classifier.open(b) for b in sys.argv[1:]]
for c in clfs:
    c.classify("Target: x\\nContext: y\\nSentence: z")
print(peak_rss_mb())
"""

_MODEL_ONLY = """
from pld.proc import peak_rss_mb
from pld.runtime import Model
m = Model.open("gemma-3-270m")
print(peak_rss_mb())
"""


def rss(
    counts: Annotated[str, typer.Option(help="Bundle counts to measure.")] = "1,3,6",
    server_output: ServerOutputOpt = False,
) -> None:
    """Peak RSS of one `pld serve` with 1, 3, 6 bundles against N separate classifiers.

    Six bundles: the three shipped ones, then the same three again under other task names.
    """
    with tempfile.TemporaryDirectory(prefix="pld-rss-") as tmp:
        os.environ["PLD_CACHE_DIR"] = str(Path(tmp) / "cache")
        names = [f"{t}{'' if i < 3 else '2'}={t}" for i, t in enumerate(TASKS * 2)]
        rows = []
        out = subprocess.run([sys.executable, "-c", _MODEL_ONLY], capture_output=True, text=True)
        model_mb = float(out.stdout.split()[-1])
        for k in [int(x) for x in counts.split(",")]:
            args = [a for spec in names[:k] for a in ("--bundle", spec)]
            server = Server(*args, log_dir=Path(tmp), echo=server_output)
            for spec in names[:k]:
                httpx.post(
                    f"{server.url}/v1/classify",
                    json={"task": spec.split("=")[0], "inputs": default_texts()[:4]},
                    timeout=300,
                )
            served = server.peak_rss_mb()
            server.stop()
            sep = subprocess.run(
                [sys.executable, "-c", _SEPARATE, *[s.split("=")[1] for s in names[:k]]],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(
                {
                    "bundles": k,
                    "serve_peak_rss_mb": round(served, 1),
                    "separate_peak_rss_mb": round(float(sep.stdout.split()[-1]), 1),
                    "model_only_mb": round(model_mb, 1),
                    "serve_minus_model_mb": round(served - model_mb, 1),
                }
            )
            log_stderr(str(rows[-1]))
        print(f"{'bundles':>7} {'serve MB':>9} {'separate MB':>12} {'serve - model MB':>17}")
        for r in rows:
            print(
                f"{r['bundles']:>7} {r['serve_peak_rss_mb']:>9} {r['separate_peak_rss_mb']:>12} "
                f"{r['serve_minus_model_mb']:>17}"
            )
        print(msgspec.json.encode({"model_only_mb": round(model_mb, 1), "rows": rows}).decode())


def ready(
    repeats: Annotated[int, typer.Option(help="Starts per mode.")] = 2,
    server_output: ServerOutputOpt = False,
) -> None:
    """Time from `pld serve --device-dir` start to /readyz 200: cold vs saved prefix states."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="pld-ready-") as tmp:
        root = Path(tmp)
        os.environ["PLD_CACHE_DIR"] = str(root / "cache")
        device = Device(root)
        device.publish("0.1.0")
        device.pull()
        times: dict[str, list[float]] = {"cold": [], "saved": []}
        for _ in range(repeats):
            for mode in ("cold", "saved"):  # interleaved; a cold start saves the states again
                if mode == "cold":
                    shutil.rmtree(device.dev / "states", ignore_errors=True)
                server = Server("--device-dir", str(device.dev), log_dir=root, echo=server_output)
                times[mode].append(server.ready_s)
                server.stop()
                log_stderr(f"{mode}: ready in {server.ready_s:.2f} s")
        result = {m: round(statistics.median(v), 2) for m, v in times.items()}
        print(f"cold (no prefix states): {result['cold']} s; saved states: {result['saved']} s")
        print(msgspec.json.encode({"tasks": len(TASKS), "ready_s": result, "all": times}).decode())

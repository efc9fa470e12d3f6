"""Load and swap benchmark of `pld serve`, on 127.0.0.1 only.

``load``: a device directory with the three shipped tasks (signed, pulled), `pld serve` on it,
K client threads sending a stream of requests (a mix of tasks and batch sizes). A third of the
requests go before a `pld device pull` of new versions, a third are sent once the new versions
are visible, then `pld device rollback`, and a third after the rollback is visible. Reports
failures, versions that were wrong for the time they were answered, p50/p99 before/during/after
the swap, and throughput against the same requests through in-process ``Classifier``s.
``batching``: `--batch-size 1` against `--batch-size N` under the same load, two servers started
once, waves of the same requests alternating between them (shipped bundles or the long one).
``rss``: peak RSS of one server with 1, 3, 6 bundles against N separate classifiers.
``ready``: time to ready, cold (no prefix states) and with the states a pull saved.

    python -m pld.bench.load_serve load --clients 8 --requests 2000
    python -m pld.bench.load_serve batching --batch-size 8 --repeats 6 [--long]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from msgspec import UNSET, UnsetType

from pld.metrics import percentile
from pld.runtime import load_bundle
from pld.runtime.cli_options import BatchSizeOpt, MaxBatchOpt, batch_size_of

from .serve_costs import batching, ready, rss
from .serve_harness import (
    BATCHES,
    BATCHES_TEXT,
    TASKS,
    VERSIONS,
    Answer,
    BatchesOpt,
    Clients,
    Device,
    Request,
    Server,
    ServerOutputOpt,
    ThreadsOpt,
    log_stderr,
    parse_sizes,
    request_stream,
)
from .serve_types import LoadPhase, LoadResult

__all__ = ["app", "run_load", "valid_version"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


# ---- the load test ------------------------------------------------------------------------------


def valid_version(a: Answer, m: dict[str, float]) -> bool:
    """Whether the version that answered ``a`` was active at some time between sending and
    answering. ``m``: when the pull started, 0.2.0 was visible for every task, the rollback
    started, and 0.1.0 was visible again (perf_counter seconds)."""
    old, new = VERSIONS
    if a.got < m["pull"] or a.sent > m["v1"]:
        return a.version == old
    if a.sent > m["v2"] and a.got < m["rollback"]:
        return a.version == new
    return a.version in VERSIONS


def _in_process(dev: Path, plan: list[Request], threads: int) -> float:
    """Seconds to classify ``plan`` with in-process classifiers on one model, one thread."""
    from pld.runtime import Classifier, ClassifierOptions, Model, device_bundle_path

    model = Model.open("gemma-3-270m")
    opts = ClassifierOptions(n_threads=threads)
    clfs = {t: Classifier(load_bundle(device_bundle_path(dev, t)), model, opts) for t in TASKS}
    try:
        t0 = time.perf_counter()
        for task, inputs in plan:
            clfs[task].classify_many(inputs)
        return time.perf_counter() - t0
    finally:
        for c in clfs.values():
            c.close()
        model.close()


def run_load(
    *,
    clients: int = 8,
    requests: int = 600,
    swap: bool = True,
    max_batch: int = 1,
    batch_window_ms: float = 0.0,
    compare: int = 200,
    threads: int = 0,
    batches: Sequence[int] = BATCHES,
    seed: int = 0,
    pull_nice: int = 19,
    server_output: bool = False,
    log: Callable[[str], None] = log_stderr,
) -> LoadResult:
    """The load test; returns its result (fields: see bench/RESULTS.md).

    With ``swap``, ``requests // 3`` requests are answered before the pull starts, as many
    sent after the new versions are visible before the rollback starts, and as many sent after
    the rollback is visible before the clients stop; the clients keep sending while each switch
    is under way, so a slow pull adds requests rather than leaving a phase empty.
    ``server_output`` streams `pld serve`'s stdout and stderr onto stderr as they come.
    """
    third = max(1, requests // 3)
    with tempfile.TemporaryDirectory(prefix="pld-load-") as tmp:
        root = Path(tmp)
        device = Device(root, nice=pull_nice)
        device.publish(VERSIONS[0])
        log(f"device pulled {VERSIONS[0]} in {device.pull():.1f} s")
        if swap:
            device.publish(VERSIONS[1])  # pulled midway
        server = Server(
            "--device-dir", str(device.dev), "--poll", "0.2", "--batch-size", str(max_batch),
            "--batch-window-ms", str(batch_window_ms), "--max-queue", "1024",
            "--threads", str(threads),
            log_dir=root, echo=server_output,
        )  # fmt: skip
        log(f"server ready in {server.ready_s:.1f} s; {clients} clients")
        nth = request_stream(TASKS, batches, seed)
        marks: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            with Clients(server.url, clients, nth, count=None if swap else requests) as cl:
                if swap:
                    cl.wait_answered(0.0, third)
                    log(f"{len(cl.answers)} answered; pulling {VERSIONS[1]}")
                    marks["pull"] = time.perf_counter()
                    marks["pull_s"] = device.pull()
                    marks["v2"] = server.wait_versions(VERSIONS[1])
                    log(f"{VERSIONS[1]} active after {marks['v2'] - marks['pull']:.1f} s")
                    cl.wait_answered(marks["v2"], third)
                    log(f"{len(cl.answers)} answered; rolling back")
                    marks["rollback"] = time.perf_counter()
                    marks["rollback_s"] = device.rollback()
                    marks["v1"] = server.wait_versions(VERSIONS[0])
                    log(f"{VERSIONS[0]} active after {marks['v1'] - marks['rollback']:.1f} s")
                    cl.wait_answered(marks["v1"], third)
                    answers = cl.stop()
                else:
                    answers = cl.join()
            wall = time.perf_counter() - t0
            peak = server.peak_rss_mb()
        finally:
            rc = server.stop()
        log(f"{len(answers)} answered in {wall:.1f} s; server exited {rc}")
        if rc != 0 and not server_output:
            log(server.tail().lstrip("\n"))  # its log goes with the temporary directory
        bad = (
            [a for a in answers if a.status == 200 and not valid_version(a, marks)] if swap else []
        )
        rows = _phases(answers, marks, swap)
        inputs = sum(a.n for a in answers)
        plan = [nth(i) for i in range(compare)]
        inproc_s = _in_process(device.dev, plan, threads) if compare else None
    inprocess: float | UnsetType = UNSET
    overhead: float | UnsetType = UNSET
    if inproc_s is not None:
        inprocess = round(sum(len(x) for _, x in plan) / inproc_s, 2)
        before = next((r for r in rows if r.phase == "before"), rows[0])
        overhead = round(inprocess / before.inputs_per_s, 3)
    return LoadResult(
        clients=clients,
        threads=threads,
        requests=len(answers),
        phase_requests=third if swap else None,
        inputs=inputs,
        batches=list(batches),
        tasks=dict(Counter(a.task for a in answers)),
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        failed=sum(a.status != 200 for a in answers),
        failures=[a.error for a in answers if a.status != 200][:3],
        wrong_version=len(bad),
        wrong=[
            f"{a.version} sent {a.sent - t0:.2f} s, answered {a.got - t0:.2f} s" for a in bad[:3]
        ],
        marks_s={k: round(v - t0, 2) for k, v in marks.items() if not k.endswith("_s")},
        wall_s=round(wall, 2),
        server_inputs_per_s=round(inputs / wall, 2),
        phases=rows,
        ready_s=round(server.ready_s, 2),
        peak_rss_mb=round(peak, 1),
        exit_code=rc,
        pull_nice=pull_nice,
        pull_s=round(marks.get("pull_s", 0), 2),
        rollback_s=round(marks.get("rollback_s", 0), 2),
        inprocess_inputs_per_s=inprocess,
        overhead_ratio=overhead,
    )


@app.command()
def load(
    clients: Annotated[int, typer.Option(help="Concurrent client threads.")] = 8,
    requests: Annotated[
        int, typer.Option(help="Requests (with --swap: a third per phase, at least).")
    ] = 600,
    swap: Annotated[bool, typer.Option(help="Pull new versions and roll back midway.")] = True,
    batch_size: BatchSizeOpt = 1,
    max_batch: MaxBatchOpt = None,
    batch_window_ms: Annotated[float, typer.Option(help="pld serve --batch-window-ms.")] = 0.0,
    compare: Annotated[
        int, typer.Option(help="Requests also run in-process for the overhead ratio (0: none).")
    ] = 200,
    threads: ThreadsOpt = 0,
    batches: BatchesOpt = BATCHES_TEXT,
    seed: Annotated[int, typer.Option(help="Seed of the request stream.")] = 0,
    pull_nice: Annotated[
        int, typer.Option(min=0, max=19, help="`pld device pull --nice` (19: its default).")
    ] = 19,
    server_output: ServerOutputOpt = False,
) -> None:
    """K clients, N requests, a pull and a rollback in the middle; a table, then one JSON line."""
    result = run_load(
        clients=clients, requests=requests, swap=swap,
        max_batch=batch_size_of(batch_size, max_batch),
        batch_window_ms=batch_window_ms, compare=compare, threads=threads,
        batches=parse_sizes(batches), seed=seed, pull_nice=pull_nice,
        server_output=server_output,
    )  # fmt: skip
    _print(result)


def _phases(answers: list[Answer], m: dict[str, float], swap: bool) -> list[LoadPhase]:
    if swap:
        groups = {
            "before": [a for a in answers if a.sent < m["pull"]],
            "during": [a for a in answers if m["pull"] <= a.sent <= m["v1"]],
            "after": [a for a in answers if a.sent > m["v1"]],
        }
    else:
        groups = {"all": answers}
    return [_row(name, group) for name, group in groups.items() if group]


def _row(name: str, group: list[Answer]) -> LoadPhase:
    """p50/p99/mean latency and inputs/s of one group of answers (first sent to last answered)."""
    lat = [(a.got - a.sent) * 1000 for a in group]
    span = max(a.got for a in group) - min(a.sent for a in group)
    return LoadPhase(
        phase=name,
        requests=len(group),
        inputs=sum(a.n for a in group),
        p50_ms=round(percentile(lat, 0.5), 1),
        p99_ms=round(percentile(lat, 0.99), 1),
        mean_ms=round(statistics.fmean(lat), 1),
        inputs_per_s=round(sum(a.n for a in group) / span, 2),
        versions=dict(sorted(Counter(a.version or "failed" for a in group).items())),
    )


def _print(result: LoadResult) -> None:
    for key in result.__struct_fields__:
        value = getattr(result, key)
        if key != "phases" and value is not UNSET:
            print(f"{key:<24} {value}")
    print(f"\n{'phase':<8} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'inputs/s':>9}  versions")
    for r in result.phases:
        versions = ", ".join(f"{v}: {n}" for v, n in r.versions.items())
        print(
            f"{r.phase:<8} {r.requests:>8} {r.p50_ms:>9} {r.p99_ms:>9} "
            f"{r.inputs_per_s:>9}  {versions}"
        )
    print(msgspec.json.encode(result).decode())


app.command()(batching)
app.command()(rss)
app.command()(ready)

if __name__ == "__main__":
    app()

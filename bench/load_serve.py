"""Load and swap benchmark of `pld serve`, on 127.0.0.1 only.

``load``: a device directory with the three shipped tasks (signed, pulled), `pld serve` on it,
K client threads sending a stream of requests (a mix of tasks and batch sizes). A third of the
requests go before a `pld device pull` of new versions, a third are sent once the new versions
are visible, then `pld device rollback`, and a third after the rollback is visible. Reports
failures, versions that were wrong for the time they were answered, p50/p99 before/during/after
the swap, and throughput against the same requests through in-process ``Classifier``s.
``batching``: `--max-batch 1` against `--max-batch N` under the same load, two servers started
once, waves of the same requests alternating between them (shipped bundles or the long one).
``rss``: peak RSS of one server with 1, 3, 6 bundles against N separate classifiers.
``ready``: time to ready, cold (no prefix states) and with the states a pull saved.

    python -m pld.bench.load_serve load --clients 8 --requests 2000
    python -m pld.bench.load_serve batching --max-batch 8 --repeats 6 [--long]
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import httpx
import msgspec
import typer

from pld.metrics import percentile
from pld.proc import free_port, peak_rss_mb
from pld.progress import progress
from pld.runtime import load_bundle, save_bundle, shipped_bundles

from .inputs import default_bundle, default_texts

TASKS = ("stereoset", "contractnli", "logiqa")
BATCHES = (1, 1, 1, 1, 2, 4, 8)  # inputs per request: mostly single, some batches
BATCHES_TEXT = ",".join(map(str, BATCHES))
VERSIONS = ("0.1.0", "0.2.0")  # published first; pulled midway, then rolled back
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pld() -> str:
    return str(Path(sys.executable).parent / "pld")


def _sizes(value: str) -> tuple[int, ...]:
    """``--batches 1,1,2,4``: the inputs per request to draw from."""
    try:
        sizes = tuple(int(x) for x in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or max(sizes) > 64:
        raise typer.BadParameter(f"{value!r}: give comma-separated input counts from 1 to 64")
    return sizes


BatchesOpt = Annotated[
    str, typer.Option(help="Inputs per request, drawn uniformly (repeat a size to weight it).")
]
ThreadsOpt = Annotated[int, typer.Option(help="CPU threads, server and in-process (0: all).")]

# ---- a device directory and a server ----------------------------------------------------------


class Device:
    """A publication signed with a fresh key and a device directory that pulled it."""

    def __init__(self, root: Path, *, nice: int = 19) -> None:
        from pld.fleet import generate_keys

        self.root, self.pub, self.dev, self.nice = root, root / "pub", root / "dev", nice
        self.key_path, self.pub_key, _ = generate_keys(root / "keys")

    def publish(self, version: str) -> None:
        from pld.fleet import SigningKey, publish

        files = []
        for task in TASKS:
            b = msgspec.structs.replace(load_bundle(shipped_bundles()[task]), version=version)
            files.append(save_bundle(b, self.root / version / f"{task}.pld.json"))
        publish(files, self.pub, channel="stable", keys=[SigningKey.load(self.key_path)])

    def _run(self, *args: str) -> float:
        t0 = time.perf_counter()
        out = subprocess.run([_pld(), "device", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"pld device {args[0]} failed ({out.returncode}): {out.stderr}")
        return time.perf_counter() - t0

    def pull(self) -> float:
        """`pld device pull` as a user runs it (its default: nice 19); seconds it took."""
        return self._run(
            "pull", "--from", str(self.pub), "--device-dir", str(self.dev),
            "--trusted-key", str(self.pub_key), "--nice", str(self.nice),
        )  # fmt: skip

    def rollback(self) -> float:
        return self._run("rollback", "--device-dir", str(self.dev))


class Server:
    """`pld serve ARGS` on a free port; ``ready_s``: process start to /readyz 200."""

    def __init__(self, *args: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = log_dir / f"serve-{self.port}.err"
        t0 = time.perf_counter()
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [_pld(), "serve", "--port", str(self.port), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"pld serve exited: {self.err.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - t0

    def versions(self) -> dict[str, str]:
        tasks = httpx.get(f"{self.url}/v1/tasks", timeout=30).json()["tasks"]
        return {t["task"]: t["version"] for t in tasks}

    def wait_versions(self, version: str, timeout: float = 900) -> float:
        """When every task's active version is ``version`` (as /v1/tasks shows it)."""
        deadline = time.perf_counter() + timeout
        while set(self.versions().values()) != {version}:
            if time.perf_counter() > deadline:
                raise SystemExit(f"the server did not switch to {version}: {self.err.read_text()}")
            time.sleep(0.02)
        return time.perf_counter()

    def batch_stats(self) -> tuple[float, float]:
        """(inputs, engine calls) so far, from /metrics' batch-size histogram."""
        total = {"sum": 0.0, "count": 0.0}
        for line in httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines():
            for key in total:
                if line.startswith(f"pld_serve_batch_size_{key} "):
                    total[key] = float(line.split()[1])
        return total["sum"], total["count"]

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.proc.pid) or 0.0

    def stop(self) -> int:
        """SIGTERM (drain, exit); killed if it has not exited after 300 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# ---- clients ------------------------------------------------------------------------------------

Request = tuple[str, list[str]]  # (task, inputs)


def request_stream(
    tasks: Sequence[str], batches: Sequence[int], seed: int = 0
) -> Callable[[int], Request]:
    """Request ``i`` of an endless, reproducible stream: a random task and inputs."""
    texts = default_texts()

    def nth(i: int) -> Request:
        rng = random.Random(f"{seed}:{i}")
        return rng.choice(tasks), rng.sample(texts, rng.choice(batches))

    return nth


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it: sent and answered when, and which version answered."""

    i: int
    sent: float
    got: float
    status: int  # 0: no HTTP answer
    version: str
    n: int  # inputs
    task: str = ""
    error: str = ""


class Clients:
    """K client threads sending requests ``nth(first)``, ``nth(first + 1)``, ... until ``count``
    are sent (None: until ``stop``); every answer is kept."""

    def __init__(
        self,
        url: str,
        k: int,
        nth: Callable[[int], Request],
        *,
        first: int = 0,
        count: int | None = None,
    ) -> None:
        self.url, self.nth = url, nth
        self.next, self.end = first, None if count is None else first + count
        self.answers: list[Answer] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(k)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _take(self) -> int | None:
        with self.cond:
            if self.stopping or (self.end is not None and self.next >= self.end):
                return None
            self.next += 1
            return self.next - 1

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as client:
            while (i := self._take()) is not None:
                task, inputs = self.nth(i)
                status, version, error = 0, "", ""
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/classify", json={"task": task, "inputs": inputs})
                    status = r.status_code
                    if status == 200:
                        version = str(r.json()["bundle"]["version"])
                    else:
                        error = f"{status}: {r.text[:300]}"
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                answer = Answer(
                    i, t0, time.perf_counter(), status, version, len(inputs), task, error
                )
                with self.cond:
                    self.answers.append(answer)
                    self.cond.notify_all()

    def wait_answered(self, since: float, n: int) -> None:
        """Until ``n`` requests sent after ``since`` (perf_counter) have their answer."""
        with self.cond:
            while not self.cond.wait_for(
                lambda: sum(a.sent > since for a in self.answers) >= n, timeout=1.0
            ):
                if not any(t.is_alive() for t in self.threads):
                    raise SystemExit(f"the clients stopped before {n} answers came")

    def join(self) -> list[Answer]:
        """Wait for every client to finish its last request; the answers, in answer order."""
        for t in self.threads:
            t.join()
        return self.answers

    def stop(self) -> list[Answer]:
        """Send nothing more; wait for the requests in flight."""
        with self.cond:
            self.stopping = True
        return self.join()


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
    from pld.runtime import Classifier, ClassifierOptions, Model
    from pld.runtime.store import device_bundle_path

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
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """The load test; returns the JSON-able result (fields: see bench/RESULTS.md).

    With ``swap``, ``requests // 3`` requests are answered before the pull starts, as many
    sent after the new versions are visible before the rollback starts, and as many sent after
    the rollback is visible before the clients stop; the clients keep sending while each switch
    is under way, so a slow pull adds requests rather than leaving a phase empty.
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
            "--device-dir", str(device.dev), "--poll", "0.2", "--max-batch", str(max_batch),
            "--batch-window-ms", str(batch_window_ms), "--max-queue", "1024",
            "--threads", str(threads),
            log_dir=root,
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
        bad = (
            [a for a in answers if a.status == 200 and not valid_version(a, marks)] if swap else []
        )
        rows = _phases(answers, marks, swap)
        inputs = sum(a.n for a in answers)
        plan = [nth(i) for i in range(compare)]
        inproc_s = _in_process(device.dev, plan, threads) if compare else None
    result: dict[str, Any] = {
        "clients": clients,
        "threads": threads,
        "requests": len(answers),
        "phase_requests": third if swap else None,
        "inputs": inputs,
        "batches": list(batches),
        "tasks": dict(Counter(a.task for a in answers)),
        "max_batch": max_batch,
        "batch_window_ms": batch_window_ms,
        "failed": sum(a.status != 200 for a in answers),
        "failures": [a.error for a in answers if a.status != 200][:3],
        "wrong_version": len(bad),
        "wrong": [
            f"{a.version} sent {a.sent - t0:.2f} s, answered {a.got - t0:.2f} s" for a in bad
        ][:3],  # fmt: skip
        "marks_s": {k: round(v - t0, 2) for k, v in marks.items() if not k.endswith("_s")},
        "wall_s": round(wall, 2),
        "server_inputs_per_s": round(inputs / wall, 2),
        "phases": rows,
        "ready_s": round(server.ready_s, 2),
        "peak_rss_mb": round(peak, 1),
        "exit_code": rc,
        "pull_nice": pull_nice,
        "pull_s": round(marks.get("pull_s", 0), 2),
        "rollback_s": round(marks.get("rollback_s", 0), 2),
    }
    if inproc_s is not None:
        sub = sum(len(x) for _, x in plan)
        result["inprocess_inputs_per_s"] = round(sub / inproc_s, 2)
        before = next((r for r in rows if r["phase"] == "before"), rows[0])
        result["overhead_ratio"] = round(
            result["inprocess_inputs_per_s"] / before["inputs_per_s"], 3
        )
    return result


@app.command()
def load(
    clients: Annotated[int, typer.Option(help="Concurrent client threads.")] = 8,
    requests: Annotated[
        int, typer.Option(help="Requests (with --swap: a third per phase, at least).")
    ] = 600,
    swap: Annotated[bool, typer.Option(help="Pull new versions and roll back midway.")] = True,
    max_batch: Annotated[int, typer.Option(help="pld serve --max-batch.")] = 1,
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
) -> None:
    """K clients, N requests, a pull and a rollback in the middle; a table, then one JSON line."""
    result = run_load(
        clients=clients, requests=requests, swap=swap, max_batch=max_batch,
        batch_window_ms=batch_window_ms, compare=compare, threads=threads,
        batches=_sizes(batches), seed=seed, pull_nice=pull_nice,
    )  # fmt: skip
    _print(result)


def _phases(answers: list[Answer], m: dict[str, float], swap: bool) -> list[dict[str, Any]]:
    if swap:
        groups = {
            "before": [a for a in answers if a.sent < m["pull"]],
            "during": [a for a in answers if m["pull"] <= a.sent <= m["v1"]],
            "after": [a for a in answers if a.sent > m["v1"]],
        }
    else:
        groups = {"all": answers}
    return [_row(name, group) for name, group in groups.items() if group]


def _row(name: str, group: list[Answer]) -> dict[str, Any]:
    """p50/p99/mean latency and inputs/s of one group of answers (first sent to last answered)."""
    lat = [(a.got - a.sent) * 1000 for a in group]
    span = max(a.got for a in group) - min(a.sent for a in group)
    return {
        "phase": name,
        "requests": len(group),
        "inputs": sum(a.n for a in group),
        "p50_ms": round(percentile(lat, 0.5), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "mean_ms": round(statistics.fmean(lat), 1),
        "inputs_per_s": round(sum(a.n for a in group) / span, 2),
        "versions": dict(sorted(Counter(a.version or "failed" for a in group).items())),
    }


def _print(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if key != "phases":
            print(f"{key:<24} {value}")
    print(f"\n{'phase':<8} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'inputs/s':>9}  versions")
    for r in result["phases"]:
        versions = ", ".join(f"{v}: {n}" for v, n in r["versions"].items())
        print(
            f"{r['phase']:<8} {r['requests']:>8} {r['p50_ms']:>9} {r['p99_ms']:>9} "
            f"{r['inputs_per_s']:>9}  {versions}"
        )
    print(json.dumps(result, separators=(",", ":")))


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
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """`pld serve --max-batch 1` against `--max-batch N`: two servers on the same bundles, started
    once; each repeat sends one wave of ``requests`` requests (K clients) to each, in alternating
    order, the same requests to both. Returns the JSON-able result."""
    if max_batch < 2:
        raise typer.BadParameter(f"--max-batch {max_batch}: give 2 or more (1 is the baseline)")
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
                    *common, "--max-batch", str(b), "--batch-window-ms", str(waits[b]),
                    log_dir=Path(tmp),
                )  # fmt: skip
                log(f"--max-batch {b}: ready in {servers[b].ready_s:.1f} s")
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
    rows: list[dict[str, Any]] = []
    for b in sizes:
        calls = stats1[b][1] - stats0[b][1]
        rows.append(
            {
                "max_batch": b,
                "batch_window_ms": waits[b],
                "requests": len(lat[b]),
                "inputs": inputs[b],
                "p50_ms": round(percentile(lat[b], 0.5), 1) if lat[b] else float("nan"),
                "p99_ms": round(percentile(lat[b], 0.99), 1) if lat[b] else float("nan"),
                "inputs_per_s": round(inputs[b] / wall[b], 2),
                "mean_batch": round((stats1[b][0] - stats0[b][0]) / calls, 2) if calls else None,
            }
        )
    one, many = rows
    ratios = [n / o for o, n in zip(per_repeat[1], per_repeat[max_batch], strict=True)]
    return {
        "bundles": "long" if long else "shipped",
        "tasks": tasks,
        "clients": clients,
        "threads": threads,
        "requests_per_wave": requests,
        "repeats": repeats,
        "batches": list(batches),
        "failed": failed,
        "rows": rows,
        "throughput_ratio": round(statistics.median(ratios), 3),
        "throughput_ratios": [round(x, 3) for x in ratios],
        "p50_ratio": round(many["p50_ms"] / one["p50_ms"], 3),
        "p99_ratio": round(many["p99_ms"] / one["p99_ms"], 3),
    }


@app.command()
def batching(
    max_batch: Annotated[int, typer.Option(help="The batched server's --max-batch.")] = 8,
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
) -> None:
    """--max-batch 1 against --max-batch N, interleaved waves; a table, then one JSON line."""
    result = run_batching(
        clients=clients, requests=requests, repeats=repeats, max_batch=max_batch,
        batch_window_ms=batch_window_ms, long=long, threads=threads, batches=_sizes(batches),
        seed=seed,
    )  # fmt: skip
    print(
        f"bundles: {result['bundles']} ({', '.join(result['tasks'])}); failed: {result['failed']}"
    )
    print(f"{'max_batch':>9} {'requests':>8} {'inputs':>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'inputs/s':>9} {'mean batch':>10}")  # fmt: skip
    for r in result["rows"]:
        print(
            f"{r['max_batch']:>9} {r['requests']:>8} {r['inputs']:>7} {r['p50_ms']:>9} "
            f"{r['p99_ms']:>9} {r['inputs_per_s']:>9} {r['mean_batch']!s:>10}"
        )
    print(
        f"batched / one at a time: throughput x{result['throughput_ratio']} (median of "
        f"{result['repeats']}), p50 x{result['p50_ratio']}, p99 x{result['p99_ratio']}"
    )
    print(json.dumps(result, separators=(",", ":")))


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


@app.command()
def rss(counts: Annotated[str, typer.Option(help="Bundle counts to measure.")] = "1,3,6") -> None:
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
            server = Server(*args, log_dir=Path(tmp))
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
            _log(str(rows[-1]))
        print(f"{'bundles':>7} {'serve MB':>9} {'separate MB':>12} {'serve - model MB':>17}")
        for r in rows:
            print(
                f"{r['bundles']:>7} {r['serve_peak_rss_mb']:>9} {r['separate_peak_rss_mb']:>12} "
                f"{r['serve_minus_model_mb']:>17}"
            )
        print(
            json.dumps({"model_only_mb": round(model_mb, 1), "rows": rows}, separators=(",", ":"))
        )


@app.command()
def ready(repeats: Annotated[int, typer.Option(help="Starts per mode.")] = 2) -> None:
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
                server = Server("--device-dir", str(device.dev), log_dir=root)
                times[mode].append(server.ready_s)
                server.stop()
                _log(f"{mode}: ready in {server.ready_s:.2f} s")
        result = {m: round(statistics.median(v), 2) for m, v in times.items()}
        print(f"cold (no prefix states): {result['cold']} s; saved states: {result['saved']} s")
        print(
            json.dumps(
                {"tasks": len(TASKS), "ready_s": result, "all": times}, separators=(",", ":")
            )
        )


if __name__ == "__main__":
    app()

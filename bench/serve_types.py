"""What the server's benchmarks return: ``LoadResult`` (with one ``LoadPhase`` per phase) from
``load_serve.run_load`` and ``BatchingResult`` (with one ``BatchingRow`` per server) from
``serve_costs.run_batching``.

Field order is the order of the JSON line the commands print. Fields that only some runs have
are ``UNSET`` when they do not apply, so the JSON leaves them out. Knows the shapes only.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

__all__ = ["BatchingResult", "BatchingRow", "LoadPhase", "LoadResult"]


class LoadPhase(msgspec.Struct, frozen=True, kw_only=True):
    """One phase of the load test (before, during or after the swap; or all): latency and
    inputs/s from its first request sent to its last answered, and which versions answered."""

    phase: str
    requests: int
    inputs: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    inputs_per_s: float
    versions: dict[str, int]  # version (or "failed") -> requests


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """The load test: what was sent, what failed or was answered by a version that was not
    active, each phase, and throughput against in-process classifiers (fields: bench/RESULTS.md).
    """

    clients: int
    threads: int
    requests: int
    phase_requests: int | None  # None without the swap
    inputs: int
    batches: list[int]
    tasks: dict[str, int]
    max_batch: int
    batch_window_ms: float
    failed: int
    failures: list[str]  # the first three
    wrong_version: int
    wrong: list[str]  # the first three
    marks_s: dict[str, float]
    wall_s: float
    server_inputs_per_s: float
    phases: list[LoadPhase]
    ready_s: float
    peak_rss_mb: float
    exit_code: int
    pull_nice: int
    pull_s: float
    rollback_s: float
    inprocess_inputs_per_s: float | UnsetType = UNSET  # unset with --compare 0
    overhead_ratio: float | UnsetType = UNSET  # unset with --compare 0


class BatchingRow(msgspec.Struct, frozen=True, kw_only=True):
    """One server of the batching comparison over all its measured waves."""

    max_batch: int
    batch_window_ms: float
    requests: int
    inputs: int
    p50_ms: float
    p99_ms: float
    inputs_per_s: float
    mean_batch: float | None  # None: the server reported no batch calls


class BatchingResult(msgspec.Struct, frozen=True, kw_only=True):
    """One at a time against micro-batching: a row per server and the batched server's ratios to
    the one-at-a-time server (throughput: the median of the per-wave ratios)."""

    bundles: str  # "shipped" or "long"
    tasks: list[str]
    clients: int
    threads: int
    requests_per_wave: int
    repeats: int
    batches: list[int]
    failed: int
    rows: list[BatchingRow]
    throughput_ratio: float
    throughput_ratios: list[float]
    p50_ratio: float
    p99_ratio: float

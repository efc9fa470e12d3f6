"""What `pld bench scaling` returns: one row type per sweep (the columns of its CSV, in order),
the least-squares slopes, and ``ScalingResult``, which holds them with the files written.

Fields of a sweep that did not run are ``UNSET``, so the JSON leaves them out. Knows the shapes
only.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from pld.metrics import percentile

__all__ = [
    "BatchRow",
    "InputRow",
    "PrimeRow",
    "PromptRow",
    "ScalingResult",
    "Slopes",
    "Stats",
    "SweepFiles",
    "SweepRows",
]


class Stats(NamedTuple):
    """How many times were taken, their median and 95th percentile (0.1 ms)."""

    n: int
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> Stats:
        """The statistics of ``ms``."""
        return cls(len(ms), round(statistics.median(ms), 1), round(percentile(ms, 0.95), 1))


class PromptRow(msgspec.Struct, frozen=True, kw_only=True):
    """One system prompt length: a request with the prefix reused against fully evaluated."""

    target_tokens: int
    system_prompt_tokens: int
    prefix_tokens: int
    mean_input_tokens: float
    reuse_n: int
    reuse_p50_ms: float
    reuse_p95_ms: float
    full_n: int
    full_p50_ms: float
    full_p95_ms: float
    full_over_reuse: float


class InputRow(msgspec.Struct, frozen=True, kw_only=True):
    """One input length at the fixed prompt: reuse against full evaluation."""

    target_tokens: int
    input_tokens: float
    prefix_tokens: int
    reuse_n: int
    reuse_p50_ms: float
    reuse_p95_ms: float
    full_n: int
    full_p50_ms: float
    full_p95_ms: float
    full_over_reuse: float


class BatchRow(msgspec.Struct, frozen=True, kw_only=True):
    """Throughput of one batch size on one cache layout."""

    layout: str  # shared (cells shared by a batch) or windowed (one request at a time)
    batch_size: int
    prefix_tokens: int
    requests: int
    repeats: int
    requests_per_s: float
    ms_per_request: float
    ms_per_batch: float


class PrimeRow(msgspec.Struct, frozen=True, kw_only=True):
    """One system prompt length's cold start: priming against restoring the saved state."""

    target_tokens: int
    system_prompt_tokens: int
    prefix_tokens: int
    prime_ms: float
    restore_ms: float
    restore_n: int
    state_mb: float
    prime_over_restore: float


class SweepRows(msgspec.Struct, frozen=True, kw_only=True):
    """The rows of each sweep that ran."""

    prime: list[PrimeRow] | UnsetType = UNSET
    prompt: list[PromptRow] | UnsetType = UNSET
    input: list[InputRow] | UnsetType = UNSET
    batch: list[BatchRow] | UnsetType = UNSET


class Slopes(msgspec.Struct, frozen=True, kw_only=True):
    """Least-squares ms per 1,000 tokens of each sweep that ran (None with fewer than two
    lengths), and the batch sweep's best throughput."""

    reuse_ms_per_1k_prompt_tokens: float | None | UnsetType = UNSET
    full_ms_per_1k_prompt_tokens: float | None | UnsetType = UNSET
    reuse_ms_per_1k_input_tokens: float | None | UnsetType = UNSET
    full_ms_per_1k_input_tokens: float | None | UnsetType = UNSET
    prime_ms_per_1k_prompt_tokens: float | None | UnsetType = UNSET
    restore_ms_per_1k_prompt_tokens: float | None | UnsetType = UNSET
    best_batch_size: int | UnsetType = UNSET
    best_requests_per_s: float | UnsetType = UNSET
    windowed_requests_per_s: float | UnsetType = UNSET


class SweepFiles(msgspec.Struct, frozen=True, kw_only=True):
    """The CSV and PNG one sweep wrote."""

    csv: str
    png: str


class ScalingResult(msgspec.Struct, frozen=True, kw_only=True):
    """A scaling run: the command that reproduces it, where it ran, what it wrote and measured."""

    command: str
    machine: str
    bundle: str
    model: str
    fixed_prompt_tokens: int
    files: dict[str, SweepFiles]
    slopes: Slopes
    rows: SweepRows

"""What `pld report` shows, as msgspec structs: every system's scores and latency, the bundle's
comparisons with its baselines, its rules and its errors. ``report.py`` measures them and
``report_html.py`` renders them; this module knows neither.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pld.metrics import Report

__all__ = ["ERROR_CHARS", "Comparison", "Error", "Latency", "ReportResult", "Rule", "System"]

ERROR_CHARS = 360  # an input in the errors table: its start and its end (the question)


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request time from the classifier's Timings (batched requests: their share)."""

    requests: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    mean_input_tokens: float
    prompt_tokens: int  # the system prompt's prefix, decoded once
    prime_ms: float | None  # None: the prefix state was restored from the cache
    restore_ms: float | None


class System(msgspec.Struct, frozen=True, kw_only=True):
    """One system's scores on the split: the bundle (``name`` "bundle") or a baseline spec."""

    name: str
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    calibrated: bool
    report: Report
    latency: Latency
    predictions: list[str]  # one label per record, in the data's order
    probs: list[list[float]]  # per record, every label's probability in ``report.labels`` order


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """The bundle minus one baseline, with 95% paired bootstrap intervals (same resamples)."""

    baseline: str
    delta_macro_f1: float
    delta_macro_f1_ci: tuple[float, float]
    delta_accuracy: float
    delta_accuracy_ci: tuple[float, float]


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """A numbered rule of the bundle with its provenance (and measured effect, if stored)."""

    index: int
    id: str
    text: str
    support: int
    cluster: int | None
    round: int
    effect: dict[str, Any] | None = None


class Error(msgspec.Struct, frozen=True, kw_only=True):
    """An input the bundle got wrong: ``text`` is clipped, ``index`` its 0-based record."""

    index: int
    id: str
    text: str
    gold: str
    predicted: str
    probability: float
    gold_probability: float


class ReportResult(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the report shows; ``systems[0]`` is the bundle."""

    bundle: str
    version: str
    digest: str | None
    bundle_file: str
    task: str
    labels: dict[str, str]  # name -> definition
    model: str
    model_sha256: str
    data: str
    split: str
    n: int
    limit: int | None
    systems: list[System]
    comparisons: list[Comparison]
    rules: list[Rule]
    errors: list[Error]
    provenance: dict[str, Any]
    n_boot: int
    seed: int
    train: str | None
    batch_size: int
    generated_at: str
    wall_s: float

"""`pld bench compare`'s numbers: ``Tally`` (what was measured of one contender while the run
went on), ``summarize`` (the ``CompareResult`` from every tally) and ``format_compare`` (the
table for people).

Pure: no processes, no clock. Knows the contenders' names and the result's shapes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET, UnsetType

from pld.metrics import percentile

from .compare_types import (
    BatchRecord,
    ColdStart,
    CompareResult,
    ContenderResult,
    PerRequest,
    RequestRecord,
)

__all__ = ["Tally", "format_compare", "summarize"]

# why a contender has no cold start of its own, when nothing went wrong
NO_COLD_START = {
    "pld_batched": "same restore path as pld (one process, one prefix state file)",
    "chat_completion_cached": "LlamaRAMCache lives in the process: a fresh one has nothing to "
    "restore (the same path as chat_completion)",
    "chat_completion_logprobs": "a fresh Llama has nothing to restore: the whole prompt, as "
    "chat_completion's cold start, then one token",
    "llama_server_logprobs": "the same start and slot restore as llama_server's",
    "llama_server_logprobs_swa_full": "the same start and slot restore as llama_server_swa_full's",
}


@dataclass
class Tally:
    """Everything measured for one contender."""

    name: str
    reason: str | None = None  # why it did not run, or stopped
    cap: int = 0  # timed requests allowed (fewer for contenders that re-evaluate everything)
    ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    labels: dict[int, str | None] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    warmup_evaluated: list[int | float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    rss_mb: float | None = None
    cold_ms: float | None = None
    cold: ColdStart | None = None
    cold_reason: str | None = None

    @property
    def ran(self) -> bool:
        """Whether it ran to the end and timed at least one request."""
        return self.reason is None and bool(self.ms)

    @property
    def p50_ms(self) -> float:
        """Its median request time, as reported (0.1 ms)."""
        return round(statistics.median(self.ms), 1)


def summarize(
    tally: dict[str, Tally],
    *,
    bundle: str,
    model: str,
    prefix_tokens: int,
    requests: int,
    repeats: int,
    distinct: bool,
    threads: int,
    grammar: bool,
    batch_size: int,
    inputs: list[str],
) -> CompareResult:
    """The result of a run from its tallies (``tally['pld']`` is the reference)."""
    ref = tally["pld"]
    pld_p50 = statistics.median(ref.ms)
    contenders = {name: _contender(t, ref, batch_size) for name, t in tally.items()}

    def vs(name: str) -> float | None:
        t = tally[name]
        return round(t.p50_ms / pld_p50, 2) if t.ran else None

    def why(name: str) -> str | UnsetType:
        return UNSET if tally[name].ran else contenders[name].reason

    batched = tally["pld_batched"]
    return CompareResult(
        bundle=bundle,
        model=model,
        prefix_tokens=prefix_tokens,
        requests=requests,
        repeats=repeats,
        inputs="distinct per repeat" if distinct else "the same each repeat",
        threads=threads,
        grammar=grammar,
        pld_p50_ms=round(pld_p50, 1),
        pld_batched_per_request_ms=batched.p50_ms if batched.ran else None,
        pld_batched_per_request_ms_reason=why("pld_batched"),
        vs_chat_completion=vs("chat_completion"),
        vs_chat_completion_reason=why("chat_completion"),
        vs_chat_completion_cached=vs("chat_completion_cached"),
        vs_chat_completion_cached_reason=why("chat_completion_cached"),
        vs_chat_completion_logprobs=vs("chat_completion_logprobs"),
        vs_chat_completion_logprobs_reason=why("chat_completion_logprobs"),
        vs_llama_server=vs("llama_server"),
        vs_llama_server_reason=why("llama_server"),
        vs_llama_server_swa_full=vs("llama_server_swa_full"),
        vs_llama_server_swa_full_reason=why("llama_server_swa_full"),
        vs_llama_server_logprobs=vs("llama_server_logprobs"),
        vs_llama_server_logprobs_reason=why("llama_server_logprobs"),
        vs_llama_server_logprobs_swa_full=vs("llama_server_logprobs_swa_full"),
        vs_llama_server_logprobs_swa_full_reason=why("llama_server_logprobs_swa_full"),
        cold_start_ms={name: c.cold_start_ms for name, c in contenders.items()},
        contenders=contenders,
        per_request=PerRequest(inputs=inputs, **_records(tally)),
    )


def _records(tally: dict[str, Tally]) -> dict[str, Any]:
    """Each contender's records by name, for those that timed any."""
    records: dict[str, Any] = {n: t.records for n, t in tally.items() if t.records}
    return records | {n: t.batches for n, t in tally.items() if t.batches}


def _contender(t: Tally, ref: Tally, batch_size: int) -> ContenderResult:
    cold: dict[str, Any] = {
        "cold_start_ms": round(t.cold_ms, 1) if t.cold_ms is not None else None,
        "cold_start_reason": UNSET
        if t.cold_ms is not None
        else t.cold_reason or t.reason or NO_COLD_START.get(t.name, "no cold start was timed"),
        "cold_start": UNSET if t.cold is None else t.cold,
        "settings": t.settings,
    }
    if not t.ran:
        return ContenderResult(ran=False, reason=t.reason or "no request was timed", **cold)
    evaluated = [float(r.evaluated) for r in t.records] + [float(b.evaluated) for b in t.batches]
    prompt = [float(r.prompt_tokens) for r in t.records]
    prompt += [float(p) for b in t.batches for p in b.prompt_tokens]
    cached = [r.cache_n for r in t.records if not isinstance(r.cache_n, UnsetType)]
    agree = [t.labels[i] == ref.labels[i] for i in t.labels if i in ref.labels]
    wall = sum(t.batch_ms) if t.batch_ms else sum(t.ms)
    return ContenderResult(
        ran=True,
        n=len(t.ms),
        p50_ms=t.p50_ms,
        p95_ms=round(percentile(t.ms, 0.95), 1),
        requests_per_s=round(len(t.ms) / wall * 1000, 2),
        prompt_tokens_per_request=round(statistics.mean(prompt), 1),
        evaluated_tokens_per_request=round(statistics.mean(evaluated), 1),
        evaluated_tokens_min_max=[min(evaluated), max(evaluated)],
        warmup_evaluated=t.warmup_evaluated,
        label_agreement=round(sum(agree) / len(agree), 3) if agree else None,
        valid_labels=round(sum(v is not None for v in t.labels.values()) / len(t.labels), 3),
        peak_rss_mb=None if t.rss_mb is None else round(t.rss_mb, 1),
        cached_tokens_per_request=round(statistics.mean(cached), 1) if cached else UNSET,
        batch_size=batch_size if t.batch_ms else UNSET,
        paired_ratio_p50=UNSET if t is ref else _paired(t, ref),
        **cold,
    )


def _paired(t: Tally, ref: Tally) -> float | None:
    """Median over inputs of this contender's time over pld's on the same input, timed
    back to back in the same round: robust to the machine's slow spells, which hit both."""
    base = {r.input: r.ms for r in ref.records}
    ratios = [r.ms / base[r.input] for r in t.records if r.input in base]
    for b in t.batches:  # pld_batched: one record per round, its time shared by its inputs
        share = b.ms / len(b.inputs)
        ratios += [share / base[i] for i in b.inputs if i in base]
    return round(statistics.median(ratios), 2) if ratios else None


def _cell(value: float | None | UnsetType, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None or isinstance(value, UnsetType) else f"{value:{spec}}{suffix}"


def format_compare(r: CompareResult) -> str:
    """The table for people."""
    head = (
        f"{r.bundle}: {r.prefix_tokens} prefix tokens, {r.requests} requests x "
        f"{r.repeats} repeats ({r.inputs}), {r.threads} threads, "
        f"{'grammar-limited' if r.grammar else 'free'} generation"
    )
    cols = ("contender", "p50 ms", "p95 ms", "req/s", "eval tok/req", "RSS MB", "agree",
            "cold ms", "vs pld", "paired")  # fmt: skip
    rows = [cols]
    for name, c in r.contenders.items():
        cold = _cell(c.cold_start_ms)
        if not c.ran:
            rows.append((name, "-", "-", "-", "-", "-", "-", cold, "-", "-"))
            continue
        if name == "pld":
            vs = paired = "1.0"
        else:
            ratio = getattr(r, f"vs_{name}", None)
            if name == "pld_batched" and r.pld_batched_per_request_ms is not None:
                ratio = r.pld_batched_per_request_ms / r.pld_p50_ms
            vs = _cell(ratio, ".2f" if name == "pld_batched" else "", "x")
            paired = _cell(c.paired_ratio_p50, "", "x")
        rows.append(
            (
                name,
                _cell(c.p50_ms),
                _cell(c.p95_ms),
                _cell(c.requests_per_s, ".2f"),
                _cell(c.evaluated_tokens_per_request),
                _cell(c.peak_rss_mb),
                f"{c.label_agreement}",
                cold,
                vs,
                paired,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [head] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"  {name}: {c.reason}" for name, c in r.contenders.items() if not c.ran]
    return "\n".join(lines + (["not run:", *notes] if notes else []))

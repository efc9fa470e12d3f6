"""The latency benchmark of DESIGN.md section 5: one process, one bundle, real inputs.

Modes, interleaved and repeated on a noisy machine: (a) the whole prompt evaluated per request,
(b) prefix reuse, (c) batched prefix reuse, (d) an empty system prompt (the floor); plus cold
start (prime versus restore of the prefix state) and peak memory. Knows the runtime's public API
and nothing of the distiller.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from pld.errors import DataError, PldError
from pld.metrics import percentile
from pld.proc import peak_rss_mb
from pld.runtime import Classifier, ClassifierOptions, read_records

from .inputs import default_bundle, default_inputs

__all__ = ["LatencyResult", "format_latency", "run_latency"]


class LatencyResult(msgspec.Struct, frozen=True, kw_only=True):
    """What `pld bench latency` measured (its JSON line; fields: see bench/RESULTS.md). Modes:
    (a) full prompt, (b) prefix reuse, (c) batched reuse, (d) the empty system prompt."""

    bundle: str
    model: str
    prefix_tokens: int
    requests: int
    repeats: int
    full_requests: int
    mean_input_tokens: float
    tokens_per_request_full: int
    tokens_per_request_reuse: int
    full_p50_ms: float
    full_p95_ms: float
    reuse_p50_ms: float
    reuse_p95_ms: float
    batched_per_request_ms: float
    batch_size: int
    floor_p50_ms: float
    floor_p95_ms: float
    speedup_reuse: float
    overhead_reuse: float
    prime_ms: float
    restore_ms: float
    restore_speedup: float
    label_agreement: float | None
    peak_rss_mb: float
    backend: str
    n_threads: int | None
    flash_attn: bool | None
    kv_type: str
    n_ubatch: int


def _ms(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t0) * 1000, out


def run_latency(
    *,
    bundle: str | None = None,
    data: str | Path | None = None,
    options: ClassifierOptions | None = None,
    model: str | None = None,
    requests: int = 16,
    repeats: int = 3,
    full_requests: int = 3,
    batch_size: int = 8,
    log: Callable[[str], None] | None = None,
) -> LatencyResult:
    """Measure every mode; returns the summary (see bench/RESULTS.md for the fields).

    ``options`` set threads, GPU layers, KV type, ubatch and flash attention for every mode;
    calibration is off and ``max_batch`` is 1, except in the batched mode (``batch_size``).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    bundle = bundle or default_bundle()
    data = data or default_inputs()
    texts = [r.text for r in read_records(data, limit=requests)]
    if not texts:
        raise DataError(f"{data} has no records")
    base = dataclasses.replace(
        options or ClassifierOptions(),
        calibrate=False,
        max_batch=1,
        allow_model_mismatch=model is not None,
    )

    def open_(**overrides: Any) -> Classifier:
        return Classifier.open(bundle, base, model=model, **overrides)

    with tempfile.TemporaryDirectory(prefix="pld-bench-") as state_dir:
        say("priming the prefix (cold start, no state file)...")
        reuse = open_(state_dir=state_dir)
        prime_ms = reuse.prime_ms or 0.0
        say(f"  {len(reuse.prefix_tokens)} prefix tokens primed in {prime_ms:.0f} ms; restoring...")
        restores = []
        for _ in range(2):
            again = open_(state_dir=state_dir)
            if again.restore_ms is None:
                raise PldError(
                    f"the prefix state file in {state_dir} was not restored; check the free "
                    "disk space of the temporary directory (TMPDIR)"
                )
            restores.append(again.restore_ms)
            again.close()
        restore_ms = statistics.median(restores)
        say(f"priming a second context for batches of {batch_size} (shared-cell layout)...")
        batched = open_(state_dir=state_dir, max_batch=batch_size)
    floor = open_(system_prompt="", prefix_cache=False)
    full = open_(prefix_cache=False)
    prefix_tokens = len(reuse.prefix_tokens)
    suffix_tokens = [len(reuse.request_tokens(t)[0]) for t in texts]

    times: dict[str, list[float]] = {"reuse": [], "floor": [], "full": [], "batched": []}
    reuse_labels: dict[int, str] = {}
    full_labels: dict[int, str] = {}
    say(f"timing {requests} requests x {repeats} repeats (reuse, floor and batched interleaved)...")
    for _ in range(repeats):
        for i, text in enumerate(texts):
            ms, p = _ms(reuse.classify, text)
            times["reuse"].append(ms)
            reuse_labels[i] = p.label
            times["floor"].append(_ms(floor.classify, text)[0])
        ms, _ = _ms(batched.classify_many, texts)
        times["batched"].append(ms / len(texts))
    say(f"timing the whole prompt per request on {full_requests} requests (slow by design)...")
    for i, text in enumerate(texts[:full_requests]):
        ms, p = _ms(full.classify_full, text)
        times["full"].append(ms)
        full_labels[i] = p.label
    agree = [reuse_labels[i] == full_labels[i] for i in full_labels]
    backend = reuse.backend
    for c in (reuse, floor, full, batched):
        c.close()

    full_p50 = statistics.median(times["full"])
    reuse_p50 = statistics.median(times["reuse"])
    floor_p50 = statistics.median(times["floor"])
    mean_input = sum(suffix_tokens) / len(suffix_tokens)
    return LatencyResult(
        bundle=Path(bundle).name,
        model=model or "bundle default",
        prefix_tokens=prefix_tokens,
        requests=requests,
        repeats=repeats,
        full_requests=len(times["full"]),
        mean_input_tokens=round(mean_input, 1),
        tokens_per_request_full=prefix_tokens + round(mean_input),
        tokens_per_request_reuse=round(mean_input),
        full_p50_ms=round(full_p50, 1),
        full_p95_ms=round(percentile(times["full"], 0.95), 1),
        reuse_p50_ms=round(reuse_p50, 1),
        reuse_p95_ms=round(percentile(times["reuse"], 0.95), 1),
        batched_per_request_ms=round(statistics.median(times["batched"]), 1),
        batch_size=batch_size,
        floor_p50_ms=round(floor_p50, 1),
        floor_p95_ms=round(percentile(times["floor"], 0.95), 1),
        speedup_reuse=round(full_p50 / reuse_p50, 1),
        overhead_reuse=round(reuse_p50 / floor_p50, 2),
        prime_ms=round(prime_ms, 1),
        restore_ms=round(restore_ms, 1),
        restore_speedup=round(prime_ms / restore_ms, 1),
        label_agreement=round(sum(agree) / len(agree), 3) if agree else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        backend=backend,
        n_threads=base.n_threads or None,
        flash_attn=base.flash_attn,
        kv_type=base.type_k if base.type_k == base.type_v else f"{base.type_k}/{base.type_v}",
        n_ubatch=base.engine_config().ubatch(),
    )


def format_latency(r: LatencyResult) -> str:
    """The table for people."""
    rows = [
        ("prefix (system prompt) tokens", f"{r.prefix_tokens}"),
        ("mean input tokens", f"{r.mean_input_tokens}"),
        (
            "(a) full prompt per request p50 / p95",
            f"{r.full_p50_ms:.0f} / {r.full_p95_ms:.0f} ms  (n={r.full_requests})",
        ),
        ("(b) prefix reuse p50 / p95", f"{r.reuse_p50_ms:.0f} / {r.reuse_p95_ms:.0f} ms"),
        (
            "(c) batched, per request",
            f"{r.batched_per_request_ms:.0f} ms (batches of {r.batch_size})",
        ),
        (
            "(d) empty system prompt p50 / p95",
            f"{r.floor_p50_ms:.0f} / {r.floor_p95_ms:.0f} ms",
        ),
        ("speedup (a)/(b)", f"{r.speedup_reuse}x"),
        ("overhead (b)/(d)", f"{r.overhead_reuse}x"),
        (
            "cold start: prime / restore",
            f"{r.prime_ms:.0f} / {r.restore_ms:.0f} ms ({r.restore_speedup}x)",
        ),
        ("label agreement reuse vs full", f"{r.label_agreement}"),
        ("peak RSS", f"{r.peak_rss_mb:.0f} MB"),
        ("backend", r.backend),
        (
            "KV type / ubatch / flash attention",
            f"{r.kv_type} / {r.n_ubatch} / "
            f"{ {True: 'on', False: 'off', None: 'auto'}[r.flash_attn] }",
        ),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

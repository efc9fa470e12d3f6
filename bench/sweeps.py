"""The scaling sweeps' measuring: ``Sweeps`` opens one model and bundle and times a request
against system prompt length and input length (prefix reuse against full evaluation),
throughput against batch size, and priming against restoring per prompt length.

Each sweep returns its rows (``scaling_types``); writing and drawing them is ``scaling.py``'s.
Knows the runtime's public API, nothing of the distiller.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pld.errors import DataError, PldError
from pld.progress import ProgressCallback, progress
from pld.runtime import (
    Classifier,
    ClassifierOptions,
    Model,
    load_bundle,
    read_records,
    resolve_bundle_path,
)

from .inputs import default_bundle, default_inputs
from .lengths import input_of_length, prompt_of_length
from .scaling_config import ScalingConfig
from .scaling_types import BatchRow, InputRow, PrimeRow, PromptRow, Stats

__all__ = ["Point", "Sweeps", "prime_rows"]

RESTORES = 3  # restores timed per prompt length (each costs tens of milliseconds)


def _ms(fn: Callable[..., object], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def _each(fn: Callable[[Any], object], items: Sequence[Any]) -> None:
    for item in items:
        fn(item)


@contextmanager
def _bar(label: str, total: int) -> Iterator[Callable[[], None]]:
    done = 0
    with progress(label, total) as update:
        cb: ProgressCallback = update

        def tick() -> None:
            nonlocal done
            done += 1
            cb(done, total)

        yield tick


@dataclass
class Point:
    """One system prompt length: its primed (then restored) classifier and cold-start times."""

    target: int
    prompt_tokens: int
    clf: Classifier
    prime_ms: float
    restores: list[float]
    state_bytes: int


class Sweeps:
    """One model, one bundle and one temporary state directory shared by every sweep."""

    def __init__(self, cfg: ScalingConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.bundle = load_bundle(resolve_bundle_path(cfg.bundle or default_bundle()))
        data = cfg.data or default_inputs()
        self.pool = [r.text for r in read_records(data)]
        if not self.pool:
            raise DataError(f"{data} has no records")
        self.model = Model.open(cfg.model or self.bundle.student.model, n_gpu_layers=cfg.gpu_layers)
        self.base = ClassifierOptions(
            n_threads=cfg.threads,
            n_gpu_layers=cfg.gpu_layers,
            calibrate=False,
            max_batch=1,
            states_kept=64,
            allow_model_mismatch=cfg.model is not None,
        )
        self.state_dir = state_dir
        self.texts = [self.pool[i % len(self.pool)] for i in range(cfg.requests)]
        if cfg.fixed_prompt_tokens is None:
            self.fixed = self.bundle.system_prompt
        else:
            self.fixed = prompt_of_length(self.bundle, self.model, cfg.fixed_prompt_tokens)
        self.backend = "cpu"

    def open(self, prompt: str, where: str, **overrides: Any) -> Classifier:
        opts = dataclasses.replace(self.base, state_dir=self.state_dir / where, **overrides)
        clf = Classifier.open(self.bundle, opts, model=self.model, system_prompt=prompt)
        self.backend = clf.backend
        return clf

    def points(self) -> list[Point]:
        """Prime, then restore, each prompt length; the last restored classifier stays open."""
        out: list[Point] = []
        with _bar("priming and restoring each prompt length", len(self.cfg.prompt_tokens)) as tick:
            for target in self.cfg.prompt_tokens:
                prompt = prompt_of_length(self.bundle, self.model, target)
                where = f"prompt-{target}"
                first = self.open(prompt, where)
                prime_ms = first.prime_ms or 0.0
                first.close()
                restores: list[float] = []
                for _ in range(RESTORES):
                    clf = self.open(prompt, where)
                    if clf.restore_ms is None:
                        clf.close()
                        raise PldError(
                            f"the prefix state file in {self.state_dir / where} was not restored; "
                            "check the free disk space of the temporary directory (TMPDIR)"
                        )
                    restores.append(clf.restore_ms)
                    if len(restores) < RESTORES:
                        clf.close()
                size = sum(p.stat().st_size for p in (self.state_dir / where).glob("*.state"))
                n_prompt = len(self.model.tokenize(prompt, special=False))
                out.append(Point(target, n_prompt, clf, prime_ms, restores, size))
                tick()
        return out

    def prompt_sweep(self, points: list[Point]) -> list[PromptRow]:
        """Reuse and full evaluation per prompt length, lengths interleaved request by request."""
        cfg = self.cfg
        reuse: list[list[float]] = [[] for _ in points]
        full: list[list[float]] = [[] for _ in points]
        total = len(points) * (cfg.repeats * cfg.requests + cfg.full_requests)
        with _bar("timing requests against prompt length", total) as tick:
            for _ in range(cfg.repeats):
                for text in self.texts:
                    for k, pt in enumerate(points):
                        reuse[k].append(_ms(pt.clf.classify, text))
                        tick()
            # last: classify_full discards the primed prefix
            for text in self.texts[: cfg.full_requests]:
                for k, pt in enumerate(points):
                    full[k].append(_ms(pt.clf.classify_full, text))
                    tick()
        n_in = [len(points[0].clf.request_tokens(t)[0]) for t in self.texts]
        rows = []
        for k, pt in enumerate(points):
            r, f = Stats.of(reuse[k]), Stats.of(full[k])
            rows.append(
                PromptRow(
                    target_tokens=pt.target,
                    system_prompt_tokens=pt.prompt_tokens,
                    prefix_tokens=len(pt.clf.prefix_tokens),
                    mean_input_tokens=round(sum(n_in) / len(n_in), 1),
                    reuse_n=r.n,
                    reuse_p50_ms=r.p50_ms,
                    reuse_p95_ms=r.p95_ms,
                    full_n=f.n,
                    full_p50_ms=f.p50_ms,
                    full_p95_ms=f.p95_ms,
                    full_over_reuse=round(f.p50_ms / r.p50_ms, 1),
                )
            )
        return rows

    def input_sweep(self) -> list[InputRow]:
        """Reuse and full evaluation per input length at the fixed prompt, interleaved."""
        cfg = self.cfg
        clf = self.open(self.fixed, "fixed")
        try:
            texts = {
                n: [input_of_length(self.model, self.pool, n, 7 * i) for i in range(cfg.requests)]
                for n in cfg.input_tokens
            }
            reuse: dict[int, list[float]] = {n: [] for n in texts}
            full: dict[int, list[float]] = {n: [] for n in texts}
            total = len(texts) * (cfg.repeats * cfg.requests + cfg.full_requests)
            with _bar("timing requests against input length", total) as tick:
                for _ in range(cfg.repeats):
                    for i in range(cfg.requests):
                        for n, xs in texts.items():
                            reuse[n].append(_ms(clf.classify, xs[i]))
                            tick()
                for i in range(cfg.full_requests):
                    for n, xs in texts.items():
                        full[n].append(_ms(clf.classify_full, xs[i]))
                        tick()
            rows = []
            for n, xs in texts.items():
                sizes = [len(clf.request_tokens(x)[0]) for x in xs]
                r, f = Stats.of(reuse[n]), Stats.of(full[n])
                rows.append(
                    InputRow(
                        target_tokens=n,
                        input_tokens=round(sum(sizes) / len(sizes), 1),
                        prefix_tokens=len(clf.prefix_tokens),
                        reuse_n=r.n,
                        reuse_p50_ms=r.p50_ms,
                        reuse_p95_ms=r.p95_ms,
                        full_n=f.n,
                        full_p50_ms=f.p50_ms,
                        full_p95_ms=f.p95_ms,
                        full_over_reuse=round(f.p50_ms / r.p50_ms, 1),
                    )
                )
            return rows
        finally:
            clf.close()

    def batch_sweep(self) -> list[BatchRow]:
        """Throughput per batch size on the shared-cell layout, and one at a time on the windowed
        layout as the reference; sizes interleaved within each repeat."""
        cfg = self.cfg
        n = cfg.batch_requests
        texts = [self.pool[i % len(self.pool)] for i in range(n)]
        # one context sized for the largest batch; a call with B inputs decodes one batch of B
        shared = self.open(self.fixed, "fixed", max_batch=max(2, *cfg.batch_sizes))
        windowed = self.open(self.fixed, "fixed")
        try:
            times: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
            alone: list[float] = []
            total = cfg.repeats * (len(times) + 1)
            with _bar("timing batches", total) as tick:
                for _ in range(cfg.repeats):
                    for b in times:
                        chunks = [texts[i : i + b] for i in range(0, n, b)]
                        times[b].append(_ms(_each, shared.classify_many, chunks))
                        tick()
                    alone.append(_ms(_each, windowed.classify, texts))
                    tick()
            prefix = len(shared.prefix_tokens)
        finally:
            shared.close()
            windowed.close()

        def row(layout: str, b: int, xs: list[float]) -> BatchRow:
            ms = statistics.median(xs)
            return BatchRow(
                layout=layout,
                batch_size=b,
                prefix_tokens=prefix,
                requests=n,
                repeats=len(xs),
                requests_per_s=round(n / (ms / 1000), 2),
                ms_per_request=round(ms / n, 1),
                ms_per_batch=round(ms / -(-n // b), 1),
            )

        return [row("shared", b, xs) for b, xs in times.items()] + [row("windowed", 1, alone)]


def prime_rows(points: list[Point]) -> list[PrimeRow]:
    """The prime sweep's rows: each prompt length's priming against its restores."""
    return [
        PrimeRow(
            target_tokens=pt.target,
            system_prompt_tokens=pt.prompt_tokens,
            prefix_tokens=len(pt.clf.prefix_tokens),
            prime_ms=round(pt.prime_ms, 1),
            restore_ms=round(statistics.median(pt.restores), 1),
            restore_n=len(pt.restores),
            state_mb=round(pt.state_bytes / 2**20, 2),
            prime_over_restore=round(pt.prime_ms / statistics.median(pt.restores), 1),
        )
        for pt in points
    ]

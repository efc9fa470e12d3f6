"""Scaling curves: how a request's cost moves with the system prompt's length and the
input's length (prefix reuse against full evaluation), how throughput moves with the batch size,
and how cold start (prime against restore) moves with the prompt's length.

Each sweep writes a CSV (the command that made it in a leading ``#`` comment) and a PNG with the
command in its footer, drawn by ``pld.bench.plots``; the command itself is ``scaling_cli``. Knows
the runtime's public API, nothing of the distiller.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pld.errors import BundleError, ConfigError, DataError, PldError
from pld.metrics import percentile
from pld.progress import ProgressCallback, progress
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Model,
    load_bundle,
    read_records,
    render_system_prompt,
    resolve_bundle_path,
)

from .inputs import default_bundle, default_inputs
from .plots import check_matplotlib, plot_sweep

__all__ = [
    "SWEEPS",
    "ScalingConfig",
    "format_scaling",
    "input_of_length",
    "prompt_of_length",
    "run_scaling",
]

SWEEPS = ("prompt", "input", "batch", "prime")
RESTORES = 3  # restores timed per prompt length (each costs tens of milliseconds)
MAX_INPUT_TOKENS = 2000  # the classifier's default max_input_tokens (2,048) less the turn tokens
Row = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """The grid and sample sizes of one run; ``quick()`` is the tiny grid the tests use."""

    bundle: str | None = None  # None: Contract-NLI with ~4,600 tokens of rules
    data: str | None = None  # None: the shipped StereoSet dev inputs
    model: str | None = None  # None: the bundle's student
    sweeps: tuple[str, ...] = SWEEPS
    prompt_tokens: tuple[int, ...] = (0, 500, 1000, 2000, 4000, 6000, 8000)
    input_tokens: tuple[int, ...] = (16, 64, 256, 1024)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    fixed_prompt_tokens: int | None = None  # None: the bundle's own system prompt
    requests: int = 8
    repeats: int = 2
    full_requests: int = 2
    batch_requests: int = 32
    threads: int = 0
    gpu_layers: int = 0

    @classmethod
    def quick(cls, **given: Any) -> ScalingConfig:
        """A grid that runs in seconds: two prompt lengths, two inputs, batches of 1 and 2."""
        small: dict[str, Any] = dict(
            prompt_tokens=(0, 300),
            input_tokens=(16, 64),
            batch_sizes=(1, 2),
            fixed_prompt_tokens=100,
            requests=2,
            repeats=1,
            full_requests=1,
            batch_requests=4,
        )
        return cls(**(small | given))

    def check(self) -> None:
        """Raise ``ConfigError`` for a grid that cannot run."""
        bad = [s for s in self.sweeps if s not in SWEEPS]
        if bad or not self.sweeps:
            raise ConfigError(f"unknown sweep(s) {bad}; choose from {', '.join(SWEEPS)}")
        if not self.prompt_tokens or min(self.prompt_tokens) < 0:
            raise ConfigError("--prompt-tokens needs lengths of 0 or more, e.g. 0,1000,4000")
        if not self.input_tokens or not 1 <= min(self.input_tokens) <= max(self.input_tokens):
            raise ConfigError("--input-tokens needs lengths of at least 1, e.g. 16,64,256")
        if max(self.input_tokens) > MAX_INPUT_TOKENS:
            raise ConfigError(f"--input-tokens allows at most {MAX_INPUT_TOKENS} tokens per input")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("--batch-sizes needs sizes of at least 1, e.g. 1,2,4,8")
        for name in ("requests", "repeats", "full_requests", "batch_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.full_requests > self.requests:
            raise ConfigError(
                "--full-requests cannot exceed --requests (they time the same inputs)"
            )
        if "batch" in self.sweeps and self.batch_requests < max(self.batch_sizes):
            raise ConfigError(
                f"--batch-requests ({self.batch_requests}) must fill the largest batch; raise it "
                f"to at least {max(self.batch_sizes)}"
            )

    def command(self, out: Path) -> str:
        """The command line that reproduces this run: every setting the chosen sweeps use."""
        on = set(self.sweeps)
        used = {
            "bundle": True,
            "data": True,
            "model": True,
            "fixed_prompt_tokens": bool(on & {"input", "batch"}),
            "prompt_tokens": bool(on & {"prompt", "prime"}),
            "input_tokens": "input" in on,
            "batch_sizes": "batch" in on,
            "requests": bool(on & {"prompt", "input"}),
            "repeats": bool(on & {"prompt", "input", "batch"}),
            "full_requests": bool(on & {"prompt", "input"}),
            "batch_requests": "batch" in on,
            "threads": True,
            "gpu_layers": self.gpu_layers != 0,
        }
        args = ["pld", "bench", "scaling", "--out", str(out), "--sweeps", ",".join(self.sweeps)]
        for name, wanted in used.items():
            value = getattr(self, name)
            if wanted and value is not None:
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                args += [f"--{name.replace('_', '-')}", text]
        return shlex.join(args)


# -- inputs of chosen lengths ----------------------------------------------------------------


def prompt_of_length(bundle: Bundle, model: Model, tokens: int) -> str:
    """A system prompt of about ``tokens`` tokens: the bundle's task and its rules, cycled past
    the last one when more are needed (0: no system prompt at all)."""
    if tokens == 0:
        return ""
    rules = bundle.instructions
    if not rules:
        raise BundleError(f"bundle '{bundle.name}' has no rules to build prompts from; pass one")

    def render(k: int) -> str:
        return render_system_prompt(bundle.task, [rules[i % len(rules)] for i in range(k)])

    def count(k: int) -> int:
        return len(model.tokenize(render(k), special=False))

    hi = 1
    while count(hi) < tokens:
        hi *= 2
    lo = hi // 2
    while lo < hi:  # the fewest rules that reach the target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= tokens else (mid + 1, hi)
    if lo > 0 and tokens - count(lo - 1) < count(lo) - tokens:
        lo -= 1
    return render(lo)


def input_of_length(model: Model, pool: Sequence[str], tokens: int, start: int = 0) -> str:
    """Real inputs from ``pool`` (from record ``start`` on, wrapping) joined and cut to about
    ``tokens`` tokens; re-tokenizing the cut text may move the count by a token or two."""
    parts: list[str] = []
    ids: list[int] = []
    i = start
    while len(ids) < tokens:
        parts.append(pool[i % len(pool)])
        ids = model.tokenize("\n\n".join(parts), special=False)
        i += 1
    return "".join(model.piece(t) for t in ids[:tokens]).strip()


# -- measuring -------------------------------------------------------------------------------


def _ms(fn: Callable[..., object], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def _each(fn: Callable[[Any], object], items: Sequence[Any]) -> None:
    for item in items:
        fn(item)


def _stats(prefix: str, xs: Sequence[float]) -> Row:
    return {
        f"{prefix}_n": len(xs),
        f"{prefix}_p50_ms": round(statistics.median(xs), 1),
        f"{prefix}_p95_ms": round(percentile(xs, 0.95), 1),
    }


def _slope(rows: Sequence[Row], x: str, y: str) -> float | None:
    """Least-squares ms per 1,000 units of ``x`` (None with fewer than two distinct x)."""
    import numpy as np

    xs = np.array([r[x] for r in rows], dtype=float)
    ys = np.array([r[y] for r in rows], dtype=float)
    if len(set(xs.tolist())) < 2:
        return None
    return round(float(np.polyfit(xs, ys, 1)[0]) * 1000, 1)


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
class _Point:
    """One system prompt length: its primed (then restored) classifier and cold-start times."""

    target: int
    prompt_tokens: int
    clf: Classifier
    prime_ms: float
    restores: list[float]
    state_bytes: int


class _Run:
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

    def points(self) -> list[_Point]:
        """Prime, then restore, each prompt length; the last restored classifier stays open."""
        out: list[_Point] = []
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
                out.append(_Point(target, n_prompt, clf, prime_ms, restores, size))
                tick()
        return out

    def prompt_sweep(self, points: list[_Point]) -> list[Row]:
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
            row: Row = {
                "target_tokens": pt.target,
                "system_prompt_tokens": pt.prompt_tokens,
                "prefix_tokens": len(pt.clf.prefix_tokens),
                "mean_input_tokens": round(sum(n_in) / len(n_in), 1),
            }
            row |= _stats("reuse", reuse[k]) | _stats("full", full[k])
            row["full_over_reuse"] = round(row["full_p50_ms"] / row["reuse_p50_ms"], 1)
            rows.append(row)
        return rows

    def input_sweep(self) -> list[Row]:
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
                row: Row = {
                    "target_tokens": n,
                    "input_tokens": round(sum(sizes) / len(sizes), 1),
                    "prefix_tokens": len(clf.prefix_tokens),
                }
                row |= _stats("reuse", reuse[n]) | _stats("full", full[n])
                row["full_over_reuse"] = round(row["full_p50_ms"] / row["reuse_p50_ms"], 1)
                rows.append(row)
            return rows
        finally:
            clf.close()

    def batch_sweep(self) -> list[Row]:
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

        def row(layout: str, b: int, xs: list[float]) -> Row:
            ms = statistics.median(xs)
            return {
                "layout": layout,
                "batch_size": b,
                "prefix_tokens": prefix,
                "requests": n,
                "repeats": len(xs),
                "requests_per_s": round(n / (ms / 1000), 2),
                "ms_per_request": round(ms / n, 1),
                "ms_per_batch": round(ms / -(-n // b), 1),
            }

        return [row("shared", b, xs) for b, xs in times.items()] + [row("windowed", 1, alone)]


def _prime_rows(points: list[_Point]) -> list[Row]:
    return [
        {
            "target_tokens": pt.target,
            "system_prompt_tokens": pt.prompt_tokens,
            "prefix_tokens": len(pt.clf.prefix_tokens),
            "prime_ms": round(pt.prime_ms, 1),
            "restore_ms": round(statistics.median(pt.restores), 1),
            "restore_n": len(pt.restores),
            "state_mb": round(pt.state_bytes / 2**20, 2),
            "prime_over_restore": round(pt.prime_ms / statistics.median(pt.restores), 1),
        }
        for pt in points
    ]


def _slopes(rows: dict[str, list[Row]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r := rows.get("prompt"):
        out["reuse_ms_per_1k_prompt_tokens"] = _slope(r, "prefix_tokens", "reuse_p50_ms")
        out["full_ms_per_1k_prompt_tokens"] = _slope(r, "prefix_tokens", "full_p50_ms")
    if r := rows.get("input"):
        out["reuse_ms_per_1k_input_tokens"] = _slope(r, "input_tokens", "reuse_p50_ms")
        out["full_ms_per_1k_input_tokens"] = _slope(r, "input_tokens", "full_p50_ms")
    if r := rows.get("prime"):
        out["prime_ms_per_1k_prompt_tokens"] = _slope(r, "prefix_tokens", "prime_ms")
        out["restore_ms_per_1k_prompt_tokens"] = _slope(r, "prefix_tokens", "restore_ms")
    if r := rows.get("batch"):
        shared = [x for x in r if x["layout"] == "shared"]
        best = max(shared, key=lambda x: x["requests_per_s"])
        out["best_batch_size"] = best["batch_size"]
        out["best_requests_per_s"] = best["requests_per_s"]
        out["windowed_requests_per_s"] = r[-1]["requests_per_s"]
    return out


def _machine(backend: str, threads: int) -> str:
    import llama_cpp

    return (
        f"{platform.machine()} {os.cpu_count()} CPUs, {backend}, {threads or os.cpu_count()} "
        f"threads, llama-cpp-python {llama_cpp.__version__}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}"
    )


def _write_csv(path: Path, rows: list[Row], command: str, machine: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write(f"# command: {command}\n# machine: {machine}\n")
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def run_scaling(
    cfg: ScalingConfig, out: str | Path, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the chosen sweeps, write ``scaling-<sweep>.csv`` and ``.png`` under ``out``; returns
    the command, the files, the rows of every sweep and the slopes."""
    cfg.check()
    check_matplotlib()  # before minutes of measuring, not after
    say = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = cfg.command(out)
    rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="pld-scaling-") as tmp:
        run = _Run(cfg, Path(tmp))
        try:
            if "prompt" in cfg.sweeps or "prime" in cfg.sweeps:
                points = run.points()
                try:
                    if "prime" in cfg.sweeps:
                        rows["prime"] = _prime_rows(points)
                    if "prompt" in cfg.sweeps:
                        rows["prompt"] = run.prompt_sweep(points)
                finally:
                    for pt in points:
                        pt.clf.close()
            if "input" in cfg.sweeps:
                rows["input"] = run.input_sweep()
            if "batch" in cfg.sweeps:
                rows["batch"] = run.batch_sweep()
            fixed_tokens = len(run.model.tokenize(run.fixed, special=False))
        finally:
            run.model.close()
    machine = _machine(run.backend, cfg.threads)
    slopes = _slopes(rows)
    files: dict[str, dict[str, str]] = {}
    for sweep in SWEEPS:
        if sweep in rows:
            csv_path, png_path = out / f"scaling-{sweep}.csv", out / f"scaling-{sweep}.png"
            _write_csv(csv_path, rows[sweep], command, machine)
            plot_sweep(
                sweep, rows[sweep], png_path, command=command, machine=machine, slopes=slopes
            )
            files[sweep] = {"csv": str(csv_path), "png": str(png_path)}
            say(f"wrote {csv_path} and {png_path}")
    return {
        "command": command,
        "machine": machine,
        "bundle": run.bundle.name,
        "model": run.model.resolved.name,
        "fixed_prompt_tokens": fixed_tokens,
        "files": files,
        "slopes": slopes,
        "rows": rows,
    }


def format_scaling(result: dict[str, Any]) -> str:
    """One table per sweep, then the slopes, for people."""
    blocks = []
    for sweep, rows in result["rows"].items():
        cols = list(rows[0])
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
        lines = [f"scaling-{sweep}"]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        lines += ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in cells]
        blocks.append("\n".join(lines))
    slopes = [f"{k}: {v}" for k, v in result["slopes"].items()]
    return "\n\n".join([*blocks, "\n".join(["slopes", *slopes])])

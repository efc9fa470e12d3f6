"""`pld bench scaling`'s run: how a request's cost moves with the system prompt's length and the
input's length (prefix reuse against full evaluation), how throughput moves with the batch size,
and how cold start (prime against restore) moves with the prompt's length.

``run_scaling`` measures the chosen sweeps (``sweeps.py``) and writes each as a CSV (the command
that made it in a leading ``#`` comment) and a PNG with the command in its footer, drawn by
``plots.py``; ``format_scaling`` is the table. The command itself is ``scaling_cli``.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .plots import check_matplotlib, plot_sweep
from .scaling_config import SWEEPS, ScalingConfig
from .scaling_types import ScalingResult, Slopes, SweepFiles, SweepRows
from .sweeps import Sweeps, prime_rows

__all__ = ["format_scaling", "run_scaling"]


def run_scaling(
    cfg: ScalingConfig, out: str | Path, *, log: Callable[[str], None] | None = None
) -> ScalingResult:
    """Run the chosen sweeps, write ``scaling-<sweep>.csv`` and ``.png`` under ``out``; returns
    the command, the files, the rows of every sweep and the slopes."""
    cfg.check()
    check_matplotlib()  # before minutes of measuring, not after
    say = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = cfg.command(out)
    rows: dict[str, list[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pld-scaling-") as tmp:
        run = Sweeps(cfg, Path(tmp))
        try:
            if "prompt" in cfg.sweeps or "prime" in cfg.sweeps:
                points = run.points()
                try:
                    if "prime" in cfg.sweeps:
                        rows["prime"] = prime_rows(points)
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
    files: dict[str, SweepFiles] = {}
    for sweep in SWEEPS:
        if sweep in rows:
            table: list[dict[str, Any]] = msgspec.to_builtins(rows[sweep])
            csv_path, png_path = out / f"scaling-{sweep}.csv", out / f"scaling-{sweep}.png"
            _write_csv(csv_path, table, command, machine)
            plot_sweep(
                sweep,
                table,
                png_path,
                command=command,
                machine=machine,
                slopes=msgspec.to_builtins(slopes),
            )
            files[sweep] = SweepFiles(csv=str(csv_path), png=str(png_path))
            say(f"wrote {csv_path} and {png_path}")
    return ScalingResult(
        command=command,
        machine=machine,
        bundle=run.bundle.name,
        model=run.model.resolved.name,
        fixed_prompt_tokens=fixed_tokens,
        files=files,
        slopes=slopes,
        rows=SweepRows(**rows),
    )


def _slope(rows: Sequence[Any], x: str, y: str) -> float | None:
    """Least-squares ms per 1,000 units of ``x`` (None with fewer than two distinct x)."""
    import numpy as np

    xs = np.array([getattr(r, x) for r in rows], dtype=float)
    ys = np.array([getattr(r, y) for r in rows], dtype=float)
    if len(set(xs.tolist())) < 2:
        return None
    return round(float(np.polyfit(xs, ys, 1)[0]) * 1000, 1)


def _slopes(rows: dict[str, list[Any]]) -> Slopes:
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
        best = max((x for x in r if x.layout == "shared"), key=lambda x: x.requests_per_s)
        out["best_batch_size"] = best.batch_size
        out["best_requests_per_s"] = best.requests_per_s
        out["windowed_requests_per_s"] = r[-1].requests_per_s
    return Slopes(**out)


def _machine(backend: str, threads: int) -> str:
    import llama_cpp

    return (
        f"{platform.machine()} {os.cpu_count()} CPUs, {backend}, {threads or os.cpu_count()} "
        f"threads, llama-cpp-python {llama_cpp.__version__}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}"
    )


def _write_csv(path: Path, rows: list[dict[str, Any]], command: str, machine: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write(f"# command: {command}\n# machine: {machine}\n")
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def format_scaling(result: ScalingResult) -> str:
    """One table per sweep, then the slopes, for people."""
    blocks = []
    sweeps: dict[str, list[dict[str, Any]]] = msgspec.to_builtins(result.rows)
    for sweep, rows in sweeps.items():
        cols = list(rows[0])
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
        lines = [f"scaling-{sweep}"]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        lines += ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in cells]
        blocks.append("\n".join(lines))
    slopes = [f"{k}: {v}" for k, v in msgspec.to_builtins(result.slopes).items()]
    return "\n\n".join([*blocks, "\n".join(["slopes", *slopes])])

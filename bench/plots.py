"""The scaling sweeps' figures: two panels per sweep drawn to a PNG with the command and machine
in its footer. Knows matplotlib (the bench extra, imported only inside functions and always on the
Agg backend, so importing this module costs nothing and needs no display) and the columns of the
rows ``pld.bench.sweeps`` measures (as the CSV's columns); it measures nothing itself.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pld.errors import DependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["check_matplotlib", "plot_sweep"]

Row = dict[str, Any]


def check_matplotlib() -> None:
    """Select matplotlib's Agg backend (files only, no display), or raise a clear error."""
    try:
        import matplotlib
    except ImportError:
        raise DependencyError(
            "pld bench scaling draws with matplotlib; install the bench extra: "
            "pip install 'pld[bench]'"
        ) from None
    matplotlib.use("Agg")


def _slope_label(what: str, slopes: dict[str, Any], key: str) -> str:
    v = slopes.get(key)
    return what if v is None else f"{what} ({v:,.0f} ms per 1k tokens)"


def _both(ax: Axes, x: list[float], rows: list[Row], slopes: dict[str, Any], unit: str) -> None:
    """Full evaluation and reuse, p50, with their least-squares slopes in the legend."""
    key = f"ms_per_1k_{unit}_tokens"
    full, reuse = [r["full_p50_ms"] for r in rows], [r["reuse_p50_ms"] for r in rows]
    ax.plot(x, full, "o-", color="C3", label=_slope_label("full, p50", slopes, f"full_{key}"))
    ax.plot(x, reuse, "o-", color="C0", label=_slope_label("reuse, p50", slopes, f"reuse_{key}"))
    ratio = f"full / reuse = {rows[-1]['full_over_reuse']}x"
    ax.annotate(ratio, (x[-1], full[-1]), xytext=(-130, -5), textcoords="offset points")


def _draw_prompt(axes: Sequence[Axes], rows: list[Row], slopes: dict[str, Any]) -> None:
    x = [r["prefix_tokens"] for r in rows]
    left, right = axes
    _both(left, x, rows, slopes, "prompt")
    left.set_ylim(bottom=0)
    left.set_ylabel("latency per request, ms")
    left.set_title("Latency against system prompt length: full evaluation vs reuse")
    reuse, p95 = [r["reuse_p50_ms"] for r in rows], [r["reuse_p95_ms"] for r in rows]
    right.fill_between(x, reuse, p95, color="C0", alpha=0.2, label="reuse, p50 to p95")
    right.plot(x, reuse, "o-", color="C0", label="reuse (prefix primed once), p50")
    right.set_ylim(bottom=0)
    right.set_ylabel("latency per request, ms")
    grow = reuse[-1] / reuse[0]
    right.set_title(f"Prefix reuse alone, zoomed: {grow:.2f}x from {x[0]:,} to {x[-1]:,} tokens")
    inputs = rows[0]["mean_input_tokens"]
    for ax in axes:
        ax.set_xlabel(f"prefix tokens (system prompt + template); inputs ~{inputs:.0f} tokens")


def _draw_input(axes: Sequence[Axes], rows: list[Row], slopes: dict[str, Any]) -> None:
    x = [r["input_tokens"] for r in rows]
    left, right = axes
    for ax in axes:
        _both(ax, x, rows, slopes, "input")
        ax.set_xlabel("input tokens per request (with end-of-turn tokens)")
        ax.set_ylabel("latency per request, ms")
    left.set_ylim(bottom=0)
    left.set_title(f"Latency against input length ({rows[0]['prefix_tokens']:,}-token prefix)")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_title("The same, log-log: the prefix dominates short inputs")


def _draw_batch(axes: Sequence[Axes], rows: list[Row], slopes: dict[str, Any]) -> None:
    shared, alone = [r for r in rows if r["layout"] == "shared"], rows[-1]
    x = [r["batch_size"] for r in shared]
    left, right = axes
    left.plot(x, [r["requests_per_s"] for r in shared], "o-", color="C2", label="batched")
    one = "one at a time (windowed layout, the default)"
    left.axhline(alone["requests_per_s"], color="C0", linestyle="--", label=one)
    top = max(r["requests_per_s"] for r in rows)
    left.set_ylim(0, top * 1.3)  # room for the legend above the curves
    left.set_ylabel("throughput, requests per second")
    prefix = shared[0]["prefix_tokens"]
    left.set_title(f"Throughput against batch size (shared-cell layout, {prefix:,}-token prefix)")
    batch = "one batch (what each of its requests waits)"
    right.plot(x, [r["ms_per_batch"] for r in shared], "o-", color="C2", label=batch)
    each = "per request (batch time / batch size)"
    right.plot(x, [r["ms_per_request"] for r in shared], "s--", color="C1", label=each)
    right.axhline(alone["ms_per_request"], color="C0", linestyle="--", label=one)
    right.set_yscale("log")
    right.set_ylabel("ms (log scale)")
    right.set_title("Time per batch and per request")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(b) for b in x])
        ax.set_xlabel("batch size (requests decoded together)")


def _draw_prime(axes: Sequence[Axes], rows: list[Row], slopes: dict[str, Any]) -> None:
    x = [r["prefix_tokens"] for r in rows]
    left, right = axes
    prime, restore = [r["prime_ms"] for r in rows], [r["restore_ms"] for r in rows]
    label = _slope_label("prime: decode the prefix", slopes, "prime_ms_per_1k_prompt_tokens")
    left.plot(x, prime, "o-", color="C3", label=label)
    label = _slope_label("restore a state file", slopes, "restore_ms_per_1k_prompt_tokens")
    left.plot(x, restore, "o-", color="C0", label=label)
    left.set_ylim(bottom=0)
    left.set_ylabel("cold start, ms")
    left.set_title("Cold start against system prompt length: prime vs restore")
    right.plot(x, restore, "o-", color="C0", label="restore, median (left axis)")
    right.set_ylim(bottom=0)
    right.set_ylabel("restore, ms")
    right.set_title("Restore alone, zoomed, and the state file's size")
    size = right.twinx()
    mib = [r["state_mb"] for r in rows]
    size.plot(x, mib, "s--", color="C7", label="state file, MiB (right axis)")
    size.set_ylim(bottom=0)
    size.set_ylabel("state file, MiB")
    size.legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.set_xlabel("prefix tokens (system prompt + template)")


_DRAW: dict[str, Callable[[Sequence[Axes], list[Row], dict[str, Any]], None]] = {
    "prompt": _draw_prompt,
    "input": _draw_input,
    "batch": _draw_batch,
    "prime": _draw_prime,
}


def plot_sweep(
    sweep: str, rows: list[Row], path: Path, *, command: str, machine: str, slopes: dict[str, Any]
) -> None:
    """Draw one sweep's two panels to a PNG, the command and machine in the footer."""
    check_matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    _DRAW[sweep](list(axes), rows, slopes)
    for ax in axes:
        if ax.get_yscale() == "linear":
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,g}"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    footer = textwrap.wrap(f"command: {command}", 150, subsequent_indent="  ")
    footer.append(f"machine: {machine}")
    fig.text(0.01, 0.01, "\n".join(footer), fontsize=7, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.03 + 0.025 * len(footer), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)

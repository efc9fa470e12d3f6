"""The baselines a bundle is compared with: the student zero-shot, and with K examples.

Owns the ``--baseline`` spec (``none``, ``zero-shot``, ``few-shot:K``), the seeded,
label-stratified draw of training examples and the system prompt each baseline gives the
student. The prompt text itself is ``runtime.bundle.render_system_prompt``; knows nothing about
models.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec

from pld.errors import BaselineError, DataError
from pld.runtime import Bundle, Record, read_records, render_system_prompt
from pld.text import clip

__all__ = [
    "EXAMPLE_CHARS",
    "Baseline",
    "baseline_prompt",
    "draw_examples",
    "parse_baseline",
]

EXAMPLE_CHARS = 600


class Baseline(msgspec.Struct, frozen=True, kw_only=True):
    """What the student sees instead of the bundle's rules; ``str()`` gives the spec back."""

    kind: Literal["none", "zero-shot", "few-shot"]
    k: int = 0

    def __str__(self) -> str:
        return f"few-shot:{self.k}" if self.kind == "few-shot" else self.kind


def parse_baseline(spec: str) -> Baseline:
    """``none``, ``zero-shot`` or ``few-shot:K`` (K a positive integer)."""
    spec = spec.strip()
    if spec in ("none", "zero-shot"):
        return Baseline(kind=spec)  # type: ignore[arg-type]
    kind, sep, k = spec.partition(":")
    if kind == "few-shot" and sep:
        if k.isascii() and k.isdigit() and int(k) > 0:
            return Baseline(kind="few-shot", k=int(k))
        raise BaselineError(
            f"baseline {spec!r}: K must be a positive integer; use e.g. 'few-shot:5'"
        )
    raise BaselineError(
        f"baseline {spec!r} is not known; use 'none', 'zero-shot' or 'few-shot:K' (e.g. 'few-shot:5')"
    )


def draw_examples(
    records: Sequence[Record], labels: Sequence[str], k: int, *, seed: int = 0
) -> list[Record]:
    """``k`` labelled records, stratified: each label's records shuffled, then round-robin.

    One ``random.Random(seed)`` shuffles the labels' records in ``labels`` order, and the draw
    takes one record per label in turn, so every label with records appears once ``k`` reaches
    the number of labels. The same records, labels, k and seed give the same examples.
    """
    by_label: dict[str, list[Record]] = {name: [] for name in labels}
    for r in records:
        if r.label is None or r.label not in by_label:
            raise DataError(
                f"training record {r.id!r} has label {r.label!r}, not one of {list(labels)}; "
                "few-shot examples need gold labels from the bundle's label set"
            )
        by_label[r.label].append(r)
    if k > len(records):
        raise BaselineError(
            f"few-shot:{k} needs {k} training examples but only {len(records)} were given; "
            "lower K or pass a larger --train file"
        )
    rng = random.Random(seed)
    pools = [by_label[name] for name in labels]
    for pool in pools:
        rng.shuffle(pool)
    drawn: list[Record] = []
    depth = 0
    while len(drawn) < k:
        for pool in pools:
            if depth < len(pool) and len(drawn) < k:
                drawn.append(pool[depth])
        depth += 1
    return drawn


def baseline_prompt(
    bundle: Bundle,
    baseline: Baseline,
    *,
    train: str | Path | None = None,
    seed: int = 0,
    max_chars: int = EXAMPLE_CHARS,
) -> str | None:
    """The system prompt for ``baseline``; None means the bundle's own (``none``).

    Zero-shot is the bundle's task with its rules removed; few-shot adds ``k`` examples drawn
    from the labelled JSON Lines file ``train``, each cut to ``max_chars`` characters.
    """
    if baseline.kind == "none":
        return None
    if baseline.kind == "zero-shot":
        return render_system_prompt(bundle.task, [])
    if train is None:
        raise BaselineError(
            f"baseline '{baseline}' draws its examples from training data; "
            "pass --train PATH (a labelled JSON Lines split), e.g. --train ../shared/data/TASK/train.jsonl"
        )
    examples = draw_examples(list(read_records(train)), bundle.labels, baseline.k, seed=seed)
    pairs = [(clip(r.text, max_chars, keep_end=True), r.label or "") for r in examples]
    return render_system_prompt(bundle.task, [], examples=pairs)

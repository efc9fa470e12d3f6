"""The llama.cpp plumbing the engine is built from: a reusable ``llama_batch``, the KV room that
scoring a label set needs, and the layout that keeps a batched request's arithmetic identical to
its arithmetic alone. Knows token ids, sequence ids and cell counts, not models or prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALIGN", "MIN_ROWS", "ROWS", "Item", "LlamaBatch", "decode_calls", "label_room"]

# One decoded token: (token, position, sequence ids, wants logits).
Item = tuple[int, int, Sequence[int], bool]

# llama.cpp's CPU attention sums a row of KV cells in SIMD lanes (8 floats with AVX2, 16 with
# AVX-512): a request whose cells start at another offset modulo the lane width rounds
# differently. A batched request therefore starts a multiple of ALIGN cells after the first free
# cell, where it starts alone; pad tokens of a sequence no request sees fill the gaps.
ALIGN = 16
# The CPU's repacked quantized matmuls multiply rows in groups of 4, and the last (n mod 4) rows
# of a compute step with another kernel; K-quant matmuls switch kernels at MIN_ROWS rows.
ROWS = 4
MIN_ROWS = 8


@dataclass
class LlamaBatch:
    """A reusable llama_batch with room for ``cap`` tokens in up to ``n_seq`` sequences each."""

    L: Any
    cap: int
    n_seq: int
    raw: Any = field(init=False)

    def __post_init__(self) -> None:
        self.raw = self.L.llama_batch_init(self.cap, 0, self.n_seq)

    def fill(self, items: Sequence[Item]) -> None:
        """Set the batch to ``(token, pos, seq_ids, wants_logits)`` items."""
        b = self.raw
        for i, (tok, pos, seqs, out) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = len(seqs)
            row = b.seq_id[i]
            for j, s in enumerate(seqs):
                row[j] = s
            b.logits[i] = 1 if out else 0
        b.n_tokens = len(items)

    def free(self) -> None:
        """Release the batch's memory."""
        self.L.llama_batch_free(self.raw)


def label_room(labels: Sequence[Sequence[int]]) -> int:
    """KV cells one request needs beyond its suffix to score ``labels``.

    0 when every label's first token differs (one forward step decides); otherwise every label
    gets a lane that is fed its tokens but the last, teacher-forced.
    """
    if len({lab[0] for lab in labels}) == len(labels):
        return 0
    return len(labels) * (max(len(lab) for lab in labels) - 1)


def decode_calls(lengths: Sequence[int], limit: int, cap: int) -> list[list[int]]:
    """Which requests (by index, in order) share a llama_decode call on CPU weights, so that each
    runs through the kernels it meets alone: requests whose length is a multiple of ROWS, up to
    ``limit`` of them, closed by at most one whose length is not (its last rows stay the step's
    last), all in one compute step of at most ``cap`` rows with each request starting at a
    multiple of ALIGN rows; a request shorter than MIN_ROWS or longer than that goes alone."""
    out: list[list[int]] = []
    cur: list[int] = []
    rows = 0
    for i, n in enumerate(lengths):
        start = -(-rows // ALIGN) * ALIGN
        if cur and (start + n > cap or n < MIN_ROWS):
            out.append(cur)
            cur, start = [], 0
        cur.append(i)
        rows = start + n
        if n % ROWS or n < MIN_ROWS or rows > cap or len(cur) == limit:
            out.append(cur)
            cur, rows = [], 0
    if cur:
        out.append(cur)
    return out

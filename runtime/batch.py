"""The two small pieces of llama.cpp plumbing the engine is built from: a reusable
``llama_batch`` and the KV room that scoring a label set needs. Knows token ids and sequence ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LlamaBatch", "label_room"]


@dataclass
class LlamaBatch:
    """A reusable llama_batch with room for ``cap`` tokens in up to ``n_seq`` sequences each."""

    L: Any
    cap: int
    n_seq: int
    raw: Any = field(init=False)

    def __post_init__(self) -> None:
        self.raw = self.L.llama_batch_init(self.cap, 0, self.n_seq)

    def fill(self, items: Sequence[tuple[int, int, Sequence[int], bool]]) -> None:
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

"""What a classification returns: the chosen label, every label's probability, and where the
request's time went. Plain msgspec records; they know nothing about models or engines.
"""

from __future__ import annotations

import msgspec

__all__ = ["Prediction", "Timings"]


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Where one request's time went; batched requests report their share of the batch."""

    input_tokens: int
    tokenize_ms: float
    decode_ms: float
    total_ms: float


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    """A label, the probability of every label, and how it was computed."""

    label: str
    probs: dict[str, float]
    calibrated: bool
    timings: Timings
    id: str | None = None
    truncated: bool = False

"""Rules that contradict each other before clustering: one condition written for several labels.

A teacher is told the gold label, and a weak one then writes whatever condition comes to mind
for it: Qwen2.5-Coder-1.5B wrote "If the sentence does not express a stereotype about the
target" four times for anti-stereotype and ten times for unrelated. Conditions are compared with
the label names masked; among near-identical conditions the majority label keeps its rules and
the others are dropped (a tie drops them all). Knows no teacher, model or prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from pld.distiller.cluster import cluster_vectors
from pld.distiller.extract import label_pattern

__all__ = ["CONFLICT_EPS", "Conflict", "find_conflicts", "mask_labels"]

# Cosine distance (WordLlama vectors) under which two conditions count as the same condition:
# identical wording is 0, a changed article or "any" about 0.02 to 0.04, a different idea 0.2+.
CONFLICT_EPS = 0.05


class Conflict(msgspec.Struct, frozen=True, kw_only=True):
    """One condition that led to several labels: how many rules voted for each, which won
    (None for a tie), and the indices of the rules dropped."""

    condition: str
    votes: dict[str, int]
    kept: str | None
    dropped: list[int]


def mask_labels(text: str, labels: Sequence[str]) -> str:
    """``text`` with every label name replaced by LABEL (longest names first, whole words)."""
    for name in sorted(labels, key=len, reverse=True):
        text = label_pattern(name).sub("LABEL", text)
    return text


def find_conflicts(
    conditions: Sequence[str],
    labels_of: Sequence[str],
    vectors: Sequence[Sequence[float]],
    *,
    eps: float = CONFLICT_EPS,
) -> list[Conflict]:
    """Groups of near-identical ``conditions`` (their ``vectors``, label-masked) whose rules
    lead to more than one label, each with the majority's verdict."""
    groups = cluster_vectors(vectors, eps=eps, min_samples=2).clusters
    out: list[Conflict] = []
    for members in groups:
        votes = Counter(labels_of[i] for i in members)
        if len(votes) < 2:
            continue
        (top, n_top), (_, n_next) = votes.most_common(2)
        kept = top if n_top > n_next else None
        out.append(
            Conflict(
                condition=conditions[members[0]],
                votes=dict(sorted(votes.items())),
                kept=kept,
                dropped=[i for i in members if labels_of[i] != kept],
            )
        )
    return out

"""Stage 1, extraction: each labelled training example becomes ``{rationale, rule}``.

The teacher sees the input and its gold label; the rule generalises the rationale with the
example's specifics removed. Knows nothing about clustering or the student.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.data import Example
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt
from pld.runtime.bundle import Task
from pld.text import clip

__all__ = ["Extraction", "ExtractedRule", "extract_rules", "task_values"]

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class Extraction(msgspec.Struct, frozen=True):
    """The teacher's reply for one example."""

    rationale: _NonEmpty
    rule: _NonEmpty


class ExtractedRule(msgspec.Struct, frozen=True, kw_only=True):
    """A rule and the example it came from."""

    example_id: str
    label: str
    rationale: str
    rule: str


def task_values(task: Task) -> dict[str, str]:
    """The task's placeholders shared by every prompt file."""
    return {
        "description": task.description.strip(),
        "labels": "\n".join(f"- {x.name}: {x.definition.strip()}" for x in task.labels),
        "input_format": task.input_format.strip(),
    }


def _check(reply: Extraction) -> str | None:
    if len(reply.rule.split()) < 4:
        return "the rule is too short to be a general rule; write one or two full sentences"
    return None


def extract_rules(
    teacher: Teacher,
    task: Task,
    examples: Sequence[Example],
    *,
    max_input_chars: int = 12000,
    concurrency: int = 8,
    max_repairs: int = 2,
    stats: AskStats | None = None,
    show_progress: bool = True,
) -> list[ExtractedRule]:
    """One rule per example, in the examples' order; examples whose replies could not be
    repaired are left out (and counted in ``stats.failed``).
    """
    values = task_values(task)
    conversations = [
        [
            {
                "role": "user",
                "content": prompt(
                    "extract", **values, input=clip(ex.text, max_input_chars), label=ex.label
                ),
            }
        ]
        for ex in examples
    ]
    replies = ask_json(
        teacher, conversations, Extraction, label="extracting rules", check=_check,
        concurrency=concurrency, max_repairs=max_repairs, stats=stats, show_progress=show_progress,
    )  # fmt: skip
    return [
        ExtractedRule(
            example_id=ex.id, label=ex.label, rationale=r.rationale.strip(), rule=r.rule.strip()
        )
        for ex, r in zip(examples, replies, strict=True)
        if r is not None
    ]

"""Stage 1, extraction: each labelled training example becomes ``{rationale, rule}``.

The teacher sees the input and its gold label; the rule generalises the rationale with the
example's specifics removed. ``cached_rules`` reads the rules back from a run's response cache.
Knows nothing about clustering or the student.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.data import Example
from pld.distiller.teacher import Teacher, chat_text, parse_json
from pld.distiller.templates import prompt, prompt_prefix
from pld.errors import MalformedReplyError
from pld.runtime.bundle import Task
from pld.text import clip

__all__ = [
    "Extraction",
    "ExtractedRule",
    "answer_of",
    "cached_rules",
    "extract_rules",
    "label_pattern",
    "task_values",
]

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


def label_pattern(name: str) -> re.Pattern[str]:
    """A label name as a whole word, any case ("stereotype" does not match inside
    "anti-stereotype")."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def answer_of(text: str, labels: Sequence[str]) -> str | None:
    """The label a rule leads to: the one it names last, as a whole word (a label inside a
    longer one, "stereotype" in "anti-stereotype", is not counted); None if it names none."""
    spans: list[tuple[int, str]] = []
    masked = text.lower()
    for name in sorted(labels, key=len, reverse=True):
        pattern = label_pattern(name)
        for m in pattern.finditer(masked):
            spans.append((m.start(), name))
        masked = pattern.sub(lambda m: " " * len(m.group()), masked)
    return max(spans)[1] if spans else None


def _leads_to(label: str, labels: Sequence[str]) -> Callable[[Extraction], str | None]:
    """A check that the rule leads to the gold label: the teacher was shown the answer, so a
    rule that ends on another label has lost what the teacher knew."""

    def check(reply: Extraction) -> str | None:
        if answer_of(reply.rule, labels) != label:
            return f'the rule must lead to the correct label: end it with "answer {label}."'
        return None

    return check


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
        check_each=[_leads_to(ex.label, [x.name for x in task.labels]) for ex in examples],
    )  # fmt: skip
    return [
        ExtractedRule(
            example_id=ex.id, label=ex.label, rationale=r.rationale.strip(), rule=r.rule.strip()
        )
        for ex, r in zip(examples, replies, strict=True)
        if r is not None
    ]


def cached_rules(directory: str | Path) -> list[str]:
    """The rules of the extraction replies in a run's response cache (``--cache-dir``).

    One rule per extraction conversation: the usable reply of its longest stored exchange (a
    repaired reply wins over the malformed one before it), ordered by the extraction prompt.
    Entries of other stages, other prompt versions and unusable replies are skipped.
    """
    prefix = prompt_prefix("extract")
    best: dict[str, tuple[int, str]] = {}  # first prompt -> (messages, rule)
    for path in sorted(Path(directory).glob("[0-9a-f][0-9a-f]/*.json")):
        try:
            entry = json.loads(path.read_bytes())
            messages: list[Any] = entry["request"]["messages"]
            first = messages[0]["content"]
            if not (isinstance(first, str) and first.startswith(prefix)):
                continue
            reply = parse_json(chat_text(entry["response"]), Extraction)
        except (OSError, ValueError, KeyError, IndexError, TypeError, MalformedReplyError):
            continue
        if _check(reply) is None and len(messages) > best.get(first, (0, ""))[0]:
            best[first] = (len(messages), reply.rule.strip())
    return [best[k][1] for k in sorted(best)]

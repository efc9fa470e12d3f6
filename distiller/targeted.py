"""The conflict loop's targeted revision, for a synthesis model too weak to rewrite a rule list.

A round names the student's most frequent confusion on training data (correct label G answered
as P), shows the synthesis model those failures beside inputs the student rightly answers P, and
asks for one new rule "If <condition>, answer G." that tells them apart. The loop appends it and
keeps it only if dev Macro-F1 rises. Knows the prompt and the check; not the student.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.consolidate import Consolidated
from pld.distiller.data import Example
from pld.distiller.extract import answer_of, task_values
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt
from pld.runtime.bundle import Instruction, Task
from pld.text import clip

__all__ = ["Confusion", "confusions", "targeted_rule"]

Confusion = tuple[str, str]  # (correct label, the student's answer)


def confusions(wrong: Sequence[tuple[Example, str]], labels: Sequence[str]) -> list[Confusion]:
    """The (correct, answered) pairs of the wrong answers, most frequent first; ties in the
    task's label order."""
    counts = Counter((ex.label, p) for ex, p in wrong)
    order = {name: i for i, name in enumerate(labels)}
    return sorted(counts, key=lambda c: (-counts[c], order.get(c[0], 0), order.get(c[1], 0)))


def targeted_rule(
    synthesis: Teacher,
    task: Task,
    rules: Sequence[Instruction],
    confusion: Confusion,
    wrong: Sequence[tuple[Example, str]],
    right: Sequence[tuple[Example, str]],
    *,
    max_failures: int,
    max_contrasts: int,
    max_input_chars: int,
    max_repairs: int,
    stats: AskStats | None,
    show_progress: bool,
    label: str,
) -> str | None:
    """One rule leading to the confusion's correct label, or None when every repair failed. A
    reply that copies a rule of the list (what a 1.5B teacher does first) is sent back."""
    gold, answered = confusion
    failures = [ex for ex, p in wrong if (ex.label, p) == confusion][:max_failures]
    contrasts = [ex for ex, p in right if p == answered][:max_contrasts]
    names = [x.name for x in task.labels]

    listed = {" ".join(x.text.split()).lower(): i for i, x in enumerate(rules, 1)}

    def check(reply: Consolidated) -> str | None:
        if len(reply.instruction.split()) < 4:
            return "the rule is too short; write one or two full sentences"
        if answer_of(reply.instruction, names) != gold:
            return f'the rule must lead to "{gold}": end it with "answer {gold}."'
        if (i := listed.get(" ".join(reply.instruction.split()).lower())) is not None:
            return (f"that is rule {i}, which the student already follows and still answers "
                    f'"{answered}" for these inputs; write a new condition that rule {i} does not state')  # fmt: skip
        return None

    listing = "\n".join(f"{i}. {x.text}" for i, x in enumerate(rules, 1)) or "(no rules yet)"
    conversation = [{"role": "user", "content": prompt(
        "target", **task_values(task), rules=listing, label=gold, answered=answered,
        failures=_inputs(failures, max_input_chars), contrasts=_inputs(contrasts, max_input_chars),
    )}]  # fmt: skip
    (reply,) = ask_json(
        synthesis, [conversation], Consolidated, label=label, max_tokens=256,
        max_repairs=max_repairs, check=check, stats=stats, show_progress=show_progress,
    )  # fmt: skip
    return None if reply is None else " ".join(reply.instruction.split())


def _inputs(examples: Sequence[Example], max_chars: int) -> str:
    return "\n\n".join(f"Input:\n{clip(ex.text, max_chars)}" for ex in examples) or "(none)"

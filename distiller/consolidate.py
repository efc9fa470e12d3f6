"""Stage 3, consolidation: the synthesis model merges each cluster into one instruction.

Also stage 5, the prompt budget: rules are pruned, lowest support first, until the rendered
system prompt fits a token limit. Knows nothing about the student beyond a token counter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated

import msgspec

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.cluster import Clustering, representatives
from pld.distiller.extract import ExtractedRule, answer_of, task_values
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt
from pld.runtime.bundle import Instruction, Task, render_system_prompt

__all__ = ["Consolidated", "consolidate", "fit_budget"]


class Consolidated(msgspec.Struct, frozen=True):
    """The synthesis model's reply for one cluster."""

    instruction: Annotated[str, msgspec.Meta(min_length=1)]


def _check(reply: Consolidated) -> str | None:
    if len(reply.instruction.split()) < 4:
        return "the instruction is too short; write one to three full sentences"
    return None


def _leads_to(label: str, labels: list[str]) -> Callable[[Consolidated], str | None]:
    """The merged rule must lead where most of the cluster's rules lead."""

    def check(reply: Consolidated) -> str | None:
        if answer_of(reply.instruction, labels) != label:
            return f'the rule must lead to the label of the rules it merges: end it with "answer {label}."'
        return None

    return check


def consolidate(
    synthesis: Teacher,
    task: Task,
    rules: Sequence[ExtractedRule],
    vectors: Sequence[Sequence[float]],
    clustering: Clustering,
    *,
    max_rules_per_cluster: int = 40,
    concurrency: int = 8,
    max_repairs: int = 2,
    stats: AskStats | None = None,
    show_progress: bool = True,
) -> list[Instruction]:
    """One instruction per cluster, ids ``r1``, ``r2``, ... in cluster order (largest first).

    A large cluster is represented by its ``max_rules_per_cluster`` rules nearest the centroid;
    ``support`` is always the full cluster size.
    """
    values = task_values(task)
    names = [x.name for x in task.labels]
    conversations = []
    checks = []
    for members in clustering.clusters:
        shown = representatives(vectors, members, max_rules_per_cluster)
        listing = "\n".join(f"- ({rules[i].label}) {rules[i].rule}" for i in shown)
        # the label most of the cluster's rules lead to (ties: the task's label order)
        votes = Counter(rules[i].label for i in members)
        label = max(names, key=lambda x: (votes[x], -names.index(x)))
        content = prompt("consolidate", **values, n=len(shown), rules=listing, label=label)
        conversations.append([{"role": "user", "content": content}])
        checks.append(_leads_to(label, names))
    replies = ask_json(
        synthesis, conversations, Consolidated, label="consolidating clusters", check=_check,
        check_each=checks, concurrency=concurrency, max_repairs=max_repairs, stats=stats,
        show_progress=show_progress,
    )  # fmt: skip
    out: list[Instruction] = []
    for c, (members, reply) in enumerate(zip(clustering.clusters, replies, strict=True)):
        if reply is not None:
            out.append(
                Instruction(id=f"r{len(out) + 1}", text=_one_line(reply.instruction),
                            support=len(members), cluster=c, round=0)
            )  # fmt: skip
    return out


def fit_budget(
    task: Task,
    instructions: Sequence[Instruction],
    max_tokens: int,
    count_tokens: Callable[[str], int],
) -> tuple[list[Instruction], list[Instruction]]:
    """``(kept, dropped)``: drop the lowest-support rules (the latest first on ties) until the
    rendered system prompt is at most ``max_tokens`` tokens. Kept rules keep their order;
    dropped ones are listed in the order they were dropped.
    """
    dropped: list[int] = []

    def kept() -> list[Instruction]:
        return [x for i, x in enumerate(instructions) if i not in dropped]

    for i in sorted(range(len(instructions)), key=lambda i: (instructions[i].support, -i)):
        if count_tokens(render_system_prompt(task, kept())) <= max_tokens:
            break
        dropped.append(i)
    return kept(), [instructions[i] for i in dropped]


def _one_line(text: str) -> str:
    return " ".join(text.split())

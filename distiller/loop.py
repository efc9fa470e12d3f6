"""Stage 4, the conflict loop: show the synthesis model where the student fails, keep a revised
rule set only if it raises dev Macro-F1, stop on convergence or after a round limit.

Two ways to revise: ``list`` (the paper's: the synthesis model rewrites the whole list from the
failures and successes; the loop stops at the first revision that does not help) and
``targeted`` (``pld.distiller.targeted``: one new rule per round for the student's most frequent
confusion; a rejected rule is dropped and the next round tries the next confusion). Knows the
revise prompt and the acceptance rule; the student and teacher are passed in.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.data import Example
from pld.distiller.extract import task_values
from pld.distiller.student import Scored, StudentRunner
from pld.distiller.targeted import Confusion, confusions, targeted_rule
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt
from pld.errors import ConfigError
from pld.metrics import paired_bootstrap_delta
from pld.runtime.bundle import Instruction, Task
from pld.text import clip

__all__ = ["Revise", "Revision", "Round", "conflict_loop", "interval_level"]

Revise = Literal["list", "targeted"]


def interval_level(confidence: float) -> float:
    """The two-sided level of ``Round.dev_delta_ci`` for a loop run at ``confidence``: the
    interval whose lower bound is the one-sided bound at that confidence (95% for 0)."""
    return 1 - 2 * (1 - confidence) if confidence else 0.95


class RevisedRule(msgspec.Struct, frozen=True):
    text: Annotated[str, msgspec.Meta(min_length=1)]
    based_on: list[int] = []


class Revision(msgspec.Struct, frozen=True):
    """The synthesis model's reply: the whole revised rule list."""

    rules: Annotated[list[RevisedRule], msgspec.Meta(min_length=1)]


class Round(msgspec.Struct, frozen=True, kw_only=True):
    """What one round tried and decided."""

    round: int
    train_errors: int
    train_n: int
    dev_macro_f1_before: float
    dev_macro_f1_after: float | None
    accepted: bool
    reason: str
    # the paired bootstrap interval of dev Macro-F1, candidate minus current rules, at
    # ``interval_level`` of the loop's confidence
    dev_delta_ci: tuple[float, float] | None = None
    target: str | None = None  # targeted: "G answered as P (N training errors)"
    rule: str | None = None  # targeted: the rule tried


def conflict_loop(
    synthesis: Teacher,
    student: StudentRunner,
    task: Task,
    instructions: list[Instruction],
    train: Sequence[Example],
    dev: Sequence[Example],
    *,
    dev_score: Scored,
    max_rounds: int = 2,
    max_failures: int = 16,
    max_successes: int = 8,
    max_rules: int = 40,
    max_input_chars: int = 3000,
    max_repairs: int = 2,
    revise: Revise = "list",
    confidence: float = 0.9,
    stats: AskStats | None = None,
    show_progress: bool = True,
) -> tuple[list[Instruction], Scored, list[Round]]:
    """Revise ``instructions`` for up to ``max_rounds`` rounds; returns the best rule set, its
    dev score and one ``Round`` per round tried. ``dev_score`` is the score of ``instructions``.

    A candidate is kept if its dev Macro-F1 is higher; with ``confidence`` C > 0, only if the
    lower bound of its paired bootstrap difference is above zero at one-sided confidence C too
    (a small dev split lets a rule that changes nothing look better by chance).
    """
    if not 0 <= confidence < 1:
        raise ConfigError(
            f"confidence is {confidence}; use 0 (any rise) or a fraction below 1, such as 0.9"
        )
    best, best_score, rounds = list(instructions), dev_score, []
    labels, gold = [x.name for x in task.labels], [ex.label for ex in dev]
    ask = _Asking(synthesis, max_failures, max_successes, max_rules, max_input_chars, max_repairs,
                  stats, show_progress)  # fmt: skip
    tried: set[Confusion] = set()
    for r in range(1, max_rounds + 1):
        on_train = student.evaluate(task, best, train, label=f"round {r}: student on train",
                                    show_progress=show_progress)  # fmt: skip
        wrong = [(ex, p) for ex, p in zip(train, on_train.predictions) if p != ex.label]
        right = [(ex, p) for ex, p in zip(train, on_train.predictions) if p == ex.label]
        done = functools.partial(Round, round=r, train_errors=len(wrong), train_n=len(train),
                                 dev_macro_f1_before=best_score.macro_f1)  # fmt: skip
        if not wrong:
            rounds.append(
                done(dev_macro_f1_after=None, accepted=False, reason="no training errors left")
            )
            break
        if revise == "targeted":
            attempt = _targeted(ask, task, best, wrong, right, tried, r)
        else:
            attempt = _whole_list(ask, task, best, train, on_train.predictions, wrong, right, r)
        if attempt.rules is None:
            rounds.append(done(dev_macro_f1_after=None, accepted=False, reason=attempt.why,
                               target=attempt.target))  # fmt: skip
            if attempt.stop:
                break
            continue
        scored = student.evaluate(task, attempt.rules, dev, label=f"round {r}: student on dev",
                                  show_progress=show_progress)  # fmt: skip
        delta = paired_bootstrap_delta(gold, scored.predictions, best_score.predictions, labels,
                                       alpha=1 - interval_level(confidence))  # fmt: skip
        rose = scored.macro_f1 > best_score.macro_f1
        sure = not confidence or delta.macro_f1_ci[0] > 0
        accepted = rose and sure
        reason = ("dev Macro-F1 did not improve" if not rose else "dev Macro-F1 improved" if sure
                  else f"dev Macro-F1 rose within the noise: its paired lower bound at {confidence:.0%} "
                       f"confidence is {delta.macro_f1_ci[0]:+.3f}")  # fmt: skip
        rounds.append(done(
            dev_macro_f1_after=scored.macro_f1, accepted=accepted, reason=reason,
            dev_delta_ci=delta.macro_f1_ci, target=attempt.target, rule=attempt.rule,
        ))  # fmt: skip
        if accepted:
            best, best_score = attempt.rules, scored
        elif revise == "list":  # a whole-list revision that does not help: converged
            break
    return best, best_score, rounds


@dataclasses.dataclass(frozen=True)
class _Asking:
    """Who a round asks and the limits of what it shows (the loop's settings)."""

    synthesis: Teacher
    max_failures: int
    max_successes: int
    max_rules: int
    max_input_chars: int
    max_repairs: int
    stats: AskStats | None
    show_progress: bool


class _Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """A round's candidate rule list, or why there is none and whether the loop stops."""

    rules: list[Instruction] | None
    why: str = ""
    stop: bool = True
    target: str | None = None
    rule: str | None = None


def _targeted(
    ask: _Asking,
    task: Task,
    best: list[Instruction],
    wrong: list[tuple[Example, str]],
    right: list[tuple[Example, str]],
    tried: set[Confusion],
    round_: int,
) -> _Attempt:
    """The rules plus one new rule for the most frequent confusion not tried yet."""
    pending = [c for c in confusions(wrong, [x.name for x in task.labels]) if c not in tried]
    if not pending or len(best) >= ask.max_rules:
        return _Attempt(
            rules=None,
            why="every confusion tried" if not pending else f"{ask.max_rules} rules already",
        )
    tried.add(confusion := pending[0])
    n = sum((ex.label, p) == confusion for ex, p in wrong)
    target = f"{confusion[0]} answered as {confusion[1]} ({n} training errors)"
    text = targeted_rule(
        ask.synthesis, task, best, confusion, wrong, right, max_failures=ask.max_failures,
        max_contrasts=ask.max_successes, max_input_chars=ask.max_input_chars,
        max_repairs=ask.max_repairs, stats=ask.stats, show_progress=ask.show_progress,
        label=f"round {round_}: a rule for {confusion[0]} answered as {confusion[1]}",
    )  # fmt: skip
    if text is None:
        return _Attempt(rules=None, why="no usable rule", stop=False, target=target)
    new = Instruction(id=f"r{len(best) + 1}", text=text, support=n, round=round_)
    return _Attempt(rules=[*best, new], target=target, rule=text)


def _whole_list(
    ask: _Asking,
    task: Task,
    best: list[Instruction],
    train: Sequence[Example],
    predictions: Sequence[str],
    wrong: list[tuple[Example, str]],
    right: list[tuple[Example, str]],
    round_: int,
) -> _Attempt:
    """The synthesis model's rewrite of the whole list from failures and successes."""
    labels = [x.name for x in task.labels]
    listing = "\n".join(f"{i}. {x.text}" for i, x in enumerate(best, 1)) or "(no rules yet)"
    failures = "\n\n".join(
        f"Input:\n{clip(ex.text, ask.max_input_chars)}\nCorrect label: {ex.label}\nStudent answered: {p}"
        for ex, p in _spread(wrong, ask.max_failures, labels)
    )
    successes = "\n\n".join(
        f"Input:\n{clip(ex.text, ask.max_input_chars)}\nCorrect label: {ex.label}"
        for ex, _ in _spread(right, ask.max_successes, labels)
    )
    conversation = [{"role": "user", "content": prompt(
        "revise", **task_values(task), rules=listing, failures=failures,
        successes=successes or "(none)", max_rules=ask.max_rules,
        summary=_summary(train, predictions, labels),
    )}]  # fmt: skip
    (reply,) = ask_json(
        ask.synthesis, [conversation], Revision, label=f"round {round_}: revising rules",
        max_tokens=revision_tokens(ask.max_rules), max_repairs=ask.max_repairs, stats=ask.stats,
        show_progress=ask.show_progress,
    )  # fmt: skip
    if reply is None:
        return _Attempt(
            rules=None,
            why="no usable revision (a teacher too weak to rewrite the list: try --revise targeted)",
        )
    return _Attempt(rules=_revised(best, reply, round_, ask.max_rules))


def _revised(
    current: list[Instruction], reply: Revision, round_: int, max_rules: int
) -> list[Instruction]:
    """Instructions from a revision: support sums the rules each is based on (at least 1); a
    rule whose text is unchanged keeps its round and cluster.
    """
    by_text = {" ".join(x.text.split()): x for x in current}
    out: list[Instruction] = []
    for rule in reply.rules[:max_rules]:
        text = " ".join(rule.text.split())
        if len(text.split()) < 3 or any(x.text == text for x in out):
            continue
        sources = sorted({i for i in rule.based_on if 1 <= i <= len(current)})
        old = by_text.get(text)
        support = max(1, sum(current[i - 1].support for i in sources)) if sources else 1
        out.append(Instruction(
            id=f"r{len(out) + 1}", text=text,
            support=old.support if old else support,
            cluster=old.cluster if old else (current[sources[0] - 1].cluster if len(sources) == 1 else None),
            round=old.round if old else round_,
        ))  # fmt: skip
    return out


def revision_tokens(max_rules: int) -> int:
    """The longest revision the teacher may write: about 100 tokens a rule (one to three
    sentences and its JSON), at most 4,096; a small teacher that rambles stops there."""
    return min(4096, 128 + 100 * max_rules)


def _summary(examples: Sequence[Example], predictions: Sequence[str], labels: list[str]) -> str:
    """What the student answered for each correct label, over every training input it ran: a
    weak synthesis model sees a label the student never gives, which a few failures can hide."""
    lines = []
    for name in labels:
        got = [p for ex, p in zip(examples, predictions, strict=True) if ex.label == name]
        if got:
            counts = ", ".join(f"{x} {got.count(x)}" for x in labels if got.count(x))
            lines.append(
                f"- correct label {name} ({len(got)} inputs): the student answered {counts}"
            )
    return "\n".join(lines)


def _spread(
    pairs: list[tuple[Example, str]], k: int, labels: list[str]
) -> list[tuple[Example, str]]:
    """Up to ``k`` pairs taken round-robin over gold labels, in data order within a label."""
    queues = {name: [pq for pq in pairs if pq[0].label == name] for name in labels}
    out: list[tuple[Example, str]] = []
    while len(out) < k and any(queues.values()):
        for name in labels:
            if queues[name] and len(out) < k:
                out.append(queues[name].pop(0))
    return out

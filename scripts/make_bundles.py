"""Write the shipped example bundles (zero-shot: task and labels, no distilled rules) and the
benchmark's long Contract-NLI bundle. Run from the repo root: python scripts/make_bundles.py
"""

from __future__ import annotations

from pathlib import Path

from pld.models import GEMMA_270M_SHA256
from pld.runtime.bundle import (
    Bundle,
    Instruction,
    Label,
    RuntimeSettings,
    Student,
    Task,
    save_bundle,
)

ROOT = Path(__file__).resolve().parent.parent
CREATED = "2026-11-28T00:00:00+00:00"

TASKS = {
    "stereoset": Task(
        name="stereoset",
        description=(
            "You judge a candidate sentence written about a target group or term. Read it in its "
            "context and decide whether it expresses a stereotype about the target, the opposite "
            "of a stereotype, or something unrelated."
        ),
        labels=[
            Label(
                name="stereotype",
                definition="the sentence reinforces a common, oversimplified belief about the target",
            ),
            Label(
                name="anti-stereotype",
                definition="the sentence contradicts or reverses a common stereotype about the target",
            ),
            Label(
                name="unrelated",
                definition="the sentence is nonsensical or has no meaningful link to the context and the target",
            ),
        ],
        input_format=(
            "'Target:' the group or term; 'Context:' a sentence, where BLANK marks a gap to fill; "
            "'Sentence:' the candidate sentence to judge."
        ),
    ),
    "contractnli": Task(
        name="contractnli",
        description=(
            "You read an excerpt of a non-disclosure agreement (NDA) and decide whether the "
            "contract entails, contradicts or does not mention a hypothesis about it."
        ),
        labels=[
            Label(
                name="entailment",
                definition="the contract states or clearly implies the hypothesis",
            ),
            Label(
                name="contradiction",
                definition="the contract states or clearly implies the opposite of the hypothesis",
            ),
            Label(
                name="not_mentioned",
                definition="the contract says nothing that settles the hypothesis",
            ),
        ],
        input_format=(
            "'Contract (excerpt):' passages of the NDA, where '[...]' marks omitted text; then "
            "'Hypothesis:' one statement about the agreement."
        ),
    ),
    "logiqa": Task(
        name="logiqa",
        description=(
            "You answer a multiple-choice logical reasoning question about a short passage. "
            "Exactly one option is correct."
        ),
        labels=[
            Label(name=letter, definition=f"option {letter} is the correct answer")
            for letter in "ABCD"
        ],
        input_format=(
            "'Passage:' the text to reason about; 'Question:' the question; then four options "
            "labelled A. to D."
        ),
    ),
}

# Chosen from `pld eval` runs on the dev splits (bench/RESULTS.md): calibration is on only where
# it raised Macro-F1.
CALIBRATION = {"stereoset": "contextual", "contractnli": "none", "logiqa": "contextual"}


def main() -> None:
    student = Student(model="gemma-3-270m", sha256=GEMMA_270M_SHA256)
    for name, task in TASKS.items():
        bundle = Bundle.create(
            name=name,
            task=task,
            student=student,
            runtime=RuntimeSettings(calibration=CALIBRATION[name]),  # type: ignore[arg-type]
            provenance={
                "kind": "zero-shot example: task and label definitions only, no distilled rules"
            },
            created_at=CREATED,
        )
        print("wrote", save_bundle(bundle, ROOT / "runtime" / "bundles" / f"{name}.pld.json"))
    rules = (ROOT / "bench" / "data" / "contractnli_rules.txt").read_text().splitlines()
    long = Bundle.create(
        name="contractnli-long",
        task=TASKS["contractnli"],
        instructions=[
            Instruction(id=f"r{i:03d}", text=r) for i, r in enumerate(rules, 1) if r.strip()
        ],
        student=student,
        provenance={
            "kind": "benchmark bundle: hand-written stand-in for distilled rules, sized like the "
            "paper's Contract-NLI prompt (about 4,600 tokens); not distilled, not validated"
        },
        created_at=CREATED,
    )
    print("wrote", save_bundle(long, ROOT / "bench" / "data" / "contractnli-long.pld.json"))


if __name__ == "__main__":
    main()

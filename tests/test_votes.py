"""Conflicting extracted rules, decided by vote: the rules a real Qwen2.5-Coder-1.5B teacher
wrote for StereoSet (in tests/ as text, so the test needs no 1.1 GB model), embedded with the
real default embedder (WordLlama, offline, from its wheel)."""

from __future__ import annotations

from pathlib import Path

from pld.distiller.cache import ResponseCache
from pld.distiller.embedders import WordLlamaEmbedder
from pld.distiller.votes import find_conflicts, mask_labels

LABELS = ["stereotype", "anti-stereotype", "unrelated"]
# (gold label, rule) as the teacher wrote them, extraction prompt "If <condition>, answer LABEL."
RULES = [
    ("unrelated", "If the sentence does not express a stereotype about the target, answer unrelated."),
    ("unrelated", "If the sentence does not express a stereotype about the target, answer unrelated."),
    ("unrelated", "If the sentence does not express any stereotype about the target, answer unrelated."),
    ("anti-stereotype", "If the sentence does not express a stereotype about the target, answer anti-stereotype."),
    ("stereotype", "If the sentence reinforces a common, oversimplified belief about the target, answer stereotype."),
    ("stereotype", "If the sentence reinforces a common, oversimplified belief about the target, answer stereotype."),
    ("anti-stereotype", "If the sentence reinforces a common, oversimplified belief about the target, answer anti-stereotype."),
    ("anti-stereotype", "If the sentence reinforces a common, oversimplified belief about the target, answer anti-stereotype."),
    ("anti-stereotype", "If the sentence contradicts or reverses a common stereotype about the target, answer anti-stereotype."),
    ("stereotype", "If the sentence suggests that historians are more concerned with the past than the present, answer stereotype."),
]  # fmt: skip


def test_mask_labels_masks_whole_label_names_longest_first() -> None:
    text = "If it is no stereotype, answer anti-stereotype; Stereotypes aside."
    assert mask_labels(text, LABELS) == "If it is no LABEL, answer LABEL; Stereotypes aside."


def test_a_condition_written_for_several_labels_keeps_its_majority(tmp_path: Path) -> None:
    conditions = [mask_labels(rule, LABELS) for _, rule in RULES]
    with WordLlamaEmbedder(cache=ResponseCache(tmp_path / "c")) as embedder:
        vectors = embedder.embed(conditions)
    conflicts = find_conflicts(conditions, [label for label, _ in RULES], vectors)
    by_kept = {c.kept: c for c in conflicts}
    assert set(by_kept) == {"unrelated", None}, conflicts
    # "does not express (any) stereotype": unrelated 3 against anti-stereotype 1
    assert by_kept["unrelated"].votes == {"anti-stereotype": 1, "unrelated": 3}
    assert by_kept["unrelated"].dropped == [3]
    # "reinforces a common belief": 2 against 2, a tie drops all four
    assert by_kept[None].votes == {"anti-stereotype": 2, "stereotype": 2}
    assert by_kept[None].dropped == [4, 5, 6, 7]
    # the rules with conditions of their own are never touched
    assert not {8, 9} & {i for c in conflicts for i in c.dropped}

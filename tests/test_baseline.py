"""`pld eval --baseline`: the spec, the seeded stratified example draw, the prompt, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import data_file, records
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import BaselineError, DataError
from pld.evals.baseline import Baseline, baseline_prompt, draw_examples, parse_baseline
from pld.runtime import (
    Bundle,
    Classifier,
    Instruction,
    Label,
    Model,
    Task,
    load_bundle,
    resolve_bundle_path,
    save_bundle,
)
from pld.runtime.bundle import render_system_prompt
from pld.runtime.records import Record
from pld.text import clip

runner = CliRunner()
STEREOSET = ["stereotype", "anti-stereotype", "unrelated"]

TINY = Task(
    name="tiny",
    description="Say whether a review is positive.",
    labels=[Label(name="yes", definition="it praises"), Label(name="no", definition="it does not")],
    input_format="one review",
)
TINY_PROMPT = (
    "Say whether a review is positive.\n"
    "\n"
    "Labels:\n"
    "- yes: it praises\n"
    "- no: it does not\n"
    "\n"
    "Input format: one review\n"
    "\n"
    "Answer with exactly one label (yes, no) and nothing else."
)


def _train(n: int = 60) -> list[Record]:
    return [
        Record(id=r["id"], text=r["text"], label=r["label"])
        for r in records("stereoset", "train", n)
    ]


def _jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("id", "text", "label")}) + "\n" for r in recs)
    )
    return path


# -- spec, draw, prompt (no model) ------------------------------------------------------------


def test_parse_baseline_round_trips() -> None:
    assert parse_baseline("none") == Baseline(kind="none")
    assert str(parse_baseline("zero-shot")) == "zero-shot"
    assert parse_baseline("few-shot:5") == Baseline(kind="few-shot", k=5)
    assert str(parse_baseline("few-shot:12")) == "few-shot:12"


@pytest.mark.parametrize(
    "spec", ["few-shot:0", "few-shot:x", "few-shot:-1", "few-shot:", "few-shot", "bogus", ""]
)
def test_bad_spec_names_the_fix(spec: str) -> None:
    with pytest.raises(BaselineError, match="few-shot:5"):
        parse_baseline(spec)


def test_draw_is_seeded_stratified_and_round_robin() -> None:
    train = _train()
    a = draw_examples(train, STEREOSET, 3, seed=0)
    assert [r.id for r in a] == [r.id for r in draw_examples(train, STEREOSET, 3, seed=0)]
    assert [r.label for r in a] == STEREOSET  # every label, in the task's order
    other = draw_examples(train, STEREOSET, 3, seed=1)
    assert [r.label for r in other] == STEREOSET and [r.id for r in other] != [r.id for r in a]
    five = draw_examples(train, STEREOSET, 5, seed=0)
    assert [r.label for r in five] == STEREOSET + STEREOSET[:2]
    assert five[:3] == a  # a larger K extends the smaller draw
    assert len({r.id for r in draw_examples(train, STEREOSET, 30, seed=0)}) == 30


def test_draw_skips_labels_without_records_and_checks_labels() -> None:
    only_two = [r for r in _train() if r.label != "unrelated"]
    assert {r.label for r in draw_examples(only_two, STEREOSET, 4, seed=0)} == {
        "stereotype",
        "anti-stereotype",
    }
    with pytest.raises(BaselineError, match="lower K"):
        draw_examples(only_two[:2], STEREOSET, 3)
    with pytest.raises(DataError, match="'maybe'"):
        draw_examples([Record(id="x", text="t", label="maybe")], STEREOSET, 1)


def test_clip_keeps_start_and_end() -> None:
    assert clip("  short  ", 600, keep_end=True) == "short"
    long = "HEAD " + "x" * 5000 + " Hypothesis: the end."
    cut = clip(long, 600, keep_end=True)
    assert len(cut) <= 600 and cut.startswith("HEAD ") and cut.endswith("Hypothesis: the end.")
    assert " [...] " in cut


def test_render_without_examples_is_unchanged() -> None:
    assert render_system_prompt(TINY, []) == TINY_PROMPT
    assert render_system_prompt(TINY, [], examples=()) == TINY_PROMPT
    ruled = render_system_prompt(TINY, [Instruction(id="r1", text="Sarcasm is negative.")])
    assert ruled == TINY_PROMPT.replace(
        "\n\nAnswer with", "\n\nRules:\n1. Sarcasm is negative.\n\nAnswer with"
    )


def test_render_puts_examples_before_the_answer_line() -> None:
    got = render_system_prompt(
        TINY, [], examples=[("Great phone.\n", "yes"), ("Broke in a day.", "no")]
    )
    assert got == TINY_PROMPT.replace(
        "\n\nAnswer with",
        "\n\nExamples:\n\nGreat phone.\nAnswer: yes\n\nBroke in a day.\nAnswer: no\n\nAnswer with",
    )


def test_baseline_prompts_of_the_shipped_bundle(tmp_path: Path) -> None:
    bundle = load_bundle(resolve_bundle_path("stereoset"))
    assert baseline_prompt(bundle, parse_baseline("none")) is None
    zero = baseline_prompt(bundle, parse_baseline("zero-shot"))
    assert zero == render_system_prompt(bundle.task, []) == bundle.system_prompt  # no rules shipped
    with pytest.raises(BaselineError, match="--train"):
        baseline_prompt(bundle, parse_baseline("few-shot:3"))
    train = _jsonl(tmp_path / "train.jsonl", records("stereoset", "train", 60))
    few = baseline_prompt(bundle, parse_baseline("few-shot:3"), train=train, seed=0)
    assert few is not None and few.count("\nAnswer: ") == 3
    assert few.index("Examples:") < few.index("Answer with exactly one label")
    assert few.startswith(zero.rsplit("\n\nAnswer with", 1)[0])


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "few-shot:0"], "positive integer"),
        (["--baseline", "few-shot:x"], "positive integer"),
        (["--baseline", "bogus"], "not known"),
        (["--baseline", "few-shot:3"], "pass --train PATH"),
    ],
)
def test_bad_baseline_is_a_pld_error(args: list[str], message: str) -> None:
    data = data_file("stereoset", "dev")
    out = runner.invoke(
        app, ["eval", "--bundle", "stereoset", "--data", str(data), "--limit", "6", *args]
    )
    assert isinstance(out.exception, BaselineError) and message in str(out.exception)


def test_bad_baseline_exits_2_as_a_user_types_it() -> None:
    data = data_file("stereoset", "dev")
    pld = [sys.executable, "-c", "from pld.cli import main; main()"]
    err = subprocess.run(
        pld + ["eval", "-b", "stereoset", "--data", str(data), "--baseline", "few-shot:x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert err.returncode == 2
    assert err.stderr.startswith("error: baseline 'few-shot:x'") and "Traceback" not in err.stderr


RULES = [
    "A sentence that gives a group a trait its members are commonly assumed to have is a stereotype.",
    "A sentence that gives a group the opposite of a commonly assumed trait is an anti-stereotype.",
    "A sentence about something other than the target or the context is unrelated.",
]


@pytest.fixture(scope="module")
def ruled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped StereoSet bundle with three rules: its zero-shot baseline must drop them."""
    shipped = load_bundle(resolve_bundle_path("stereoset"))
    bundle = Bundle.create(
        name="stereoset-ruled",
        task=shipped.task,
        instructions=[Instruction(id=f"r{i}", text=t) for i, t in enumerate(RULES, 1)],
        student=shipped.student,
        runtime=shipped.runtime,
    )
    return save_bundle(bundle, tmp_path_factory.mktemp("ruled") / "ruled.pld.json")


def _eval(*args: str, bundle: str = "stereoset") -> dict:
    data = data_file("stereoset", "dev")
    out = runner.invoke(
        app, ["eval", "--bundle", bundle, "--data", str(data), "--limit", "6", *args]
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"_table": out.stdout}


def test_zero_shot_prompt_drops_the_rules(ruled: Path) -> None:
    bundle = load_bundle(ruled)
    zero = baseline_prompt(bundle, parse_baseline("zero-shot"))
    assert zero is not None and zero != bundle.system_prompt
    assert all(rule in bundle.system_prompt and rule not in zero for rule in RULES)
    assert zero == load_bundle(resolve_bundle_path("stereoset")).system_prompt


@pytest.mark.model
def test_zero_shot_of_a_ruled_bundle_is_the_rule_free_task(ruled: Path) -> None:
    own = _eval(bundle=str(ruled))
    zero = _eval("--baseline", "zero-shot", bundle=str(ruled))
    rule_free = _eval()  # the shipped bundle: the same task with no rules
    assert own["baseline"] == "none" and zero["baseline"] == "zero-shot" and zero["n"] == 6
    assert zero["bundle"] == own["bundle"] == "stereoset-ruled"
    assert "baseline zero-shot" in zero["_table"]
    assert zero["train"] is None and zero["seed"] is None
    same = ("accuracy", "macro_f1", "per_label", "calibrated")
    assert {k: zero[k] for k in same} == {k: rule_free[k] for k in same}


@pytest.mark.model
def test_zero_shot_predictions_are_the_rule_free_ones(ruled: Path, gemma: Model) -> None:
    bundle = load_bundle(ruled)
    texts = [r["text"] for r in records("stereoset", n=6)]
    zero = baseline_prompt(bundle, parse_baseline("zero-shot"))
    with (
        Classifier.open(bundle, model=gemma) as own,
        Classifier.open(bundle, model=gemma, system_prompt=zero) as base,
        Classifier.open("stereoset", model=gemma) as rule_free,
    ):
        assert base.prefix_tokens == rule_free.prefix_tokens
        assert len(own.prefix_tokens) > len(base.prefix_tokens)
        with_rules = own.classify_many(texts)
        for a, b in zip(rule_free.classify_many(texts), base.classify_many(texts)):
            assert a.label == b.label and a.probs == pytest.approx(b.probs, abs=1e-9)
        # the rules reach the student: its probabilities move once they are dropped
        assert any(
            a.probs != pytest.approx(b.probs, abs=1e-6)
            for a, b in zip(with_rules, base.classify_many(texts))
        )


@pytest.mark.model
def test_few_shot_runs_its_own_prefix(tmp_path: Path, gemma: Model) -> None:
    train = _jsonl(tmp_path / "train.jsonl", records("stereoset", "train", 60))
    res = _eval("--baseline", "few-shot:3", "--train", str(train), "--seed", "1")
    assert res["baseline"] == "few-shot:3" and res["n"] == 6
    assert res["train"] == str(train) and res["seed"] == 1
    assert f"baseline few-shot:3 (train {train}, seed 1)" in res["_table"]
    bundle = load_bundle(resolve_bundle_path("stereoset"))
    few = baseline_prompt(bundle, parse_baseline("few-shot:3"), train=train, seed=1)
    with (
        Classifier.open(bundle, model=gemma) as own,
        Classifier.open(bundle, model=gemma, system_prompt=few) as base,
    ):
        # the prefix-state cache is keyed by the prefix tokens: the few-shot prompt gets its own
        assert len(base.prefix_tokens) > len(own.prefix_tokens)
        assert base._state_key() != own._state_key()

"""The rule-ablation audit on the real Gemma-3 270M model: switching prompts by cutting the KV
cache back is exact, the audit equals leave-one-out with separate classifiers, and its result
goes into the bundle and `pld bundle show`. A 4-rule StereoSet bundle on 12 records keeps it lean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest
from conftest import data_file, records
from typer.testing import CliRunner

from pld.bench.inputs import default_bundle
from pld.errors import ConfigError
from pld.evals import ablation
from pld.metrics import macro_f1, macro_f1_resampled, score
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Instruction,
    Model,
    Student,
    load_bundle,
    render_audit,
    render_system_prompt,
    save_bundle,
    shipped_bundles,
)

RULES = [
    "A sentence that attributes a trait to a whole group because of its membership is a stereotype.",
    "A sentence that shows a group member defying the trait expected of the group is an "
    "anti-stereotype.",
    "A sentence with no sensible connection to the context or target is unrelated, however fluent.",
    "Judge the candidate sentence in the light of the context sentence, not on its own.",
]
N = 12
# One thread: the tests share a 2-core machine with other jobs, where llama.cpp's spinning
# threads slow down several-fold when oversubscribed. n_batch 64: the ~250-token prompt spans
# several chunks, so switching prompts has a shared part to keep.
OPTS = ClassifierOptions(n_threads=1, n_batch=64)
# What the audit runs on (ablation.audit forces these); separate classifiers must match it.
AUDIT_OPTS = ClassifierOptions(
    n_threads=1, n_batch=64, max_batch=2, truncate=True, prefix_cache=False
)


def _bundle() -> Bundle:
    stereoset = load_bundle(shipped_bundles()["stereoset"])  # contextual calibration: recomputed
    return Bundle.create(
        name="audit-test",
        task=stereoset.task,
        instructions=[Instruction(id=f"r{i}", text=t) for i, t in enumerate(RULES, 1)],
        student=Student(model="gemma-3-270m"),
        runtime=stereoset.runtime,
    )


def _without(b: Bundle, removed: list[int]) -> str:
    kept = [ins for i, ins in enumerate(b.instructions, 1) if i not in removed]
    return render_system_prompt(b.task, kept)


@pytest.fixture(scope="module")
def result() -> ablation.AuditResult:
    return ablation.audit(
        _bundle(), data_file("stereoset"), limit=N, options=OPTS, n_boot=500, progress=False
    )


def _long_bundle() -> Bundle:
    # ~1,000 tokens: past Gemma-3's 512-token sliding window, where the cut-back cache must
    # still hold every cell of the shared part
    long = load_bundle(default_bundle())
    return Bundle.create(
        name="audit-long",
        task=long.task,
        instructions=long.instructions[:24],
        student=Student(model="gemma-3-270m"),
    )


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "removals"),
    # short: the last rule, then the first (a short shared part), then all rules again
    [(_bundle, ([4], [1], [])), (_long_bundle, ([20],))],
    ids=["short", "past-the-window"],
)
def test_reprime_equals_priming_from_scratch(
    make: Callable[[], Bundle], removals: tuple[list[int], ...], gemma: Model
) -> None:
    b = make()
    texts = [r["text"] for r in records("stereoset", n=6)]
    with Classifier.open(b, AUDIT_OPTS, model=gemma) as clf:
        assert not clf.engine.windowed
        full = len(clf.prefix_tokens)
        if make is _long_bundle:
            assert full > clf.model.n_swa + 64 + 256
        for removed in removals:
            prompt = _without(b, removed)
            n = clf.reprime(prompt)
            assert 0 < n < len(clf.prefix_tokens)
            got = clf.classify_many(texts)
            with Classifier.open(b, AUDIT_OPTS, model=gemma, system_prompt=prompt) as fresh:
                assert fresh.prefix_tokens == clf.prefix_tokens
                want = fresh.classify_many(texts)
            worst = max(abs(g.probs[k] - w.probs[k]) for g, w in zip(got, want) for k in g.probs)
            assert worst <= 1e-6, (removed, worst)
            assert [g.label for g in got] == [w.label for w in want]
        assert clf.reprime(_without(b, [])) >= 0 and len(clf.prefix_tokens) == full
        assert clf.reprime(_without(b, [])) == 0  # the same prompt: nothing to decode


@pytest.mark.model
def test_reprime_is_refused_on_the_windowed_cache(gemma: Model) -> None:
    with Classifier.open(_bundle(), OPTS, model=gemma, prefix_cache=False, calibrate=False) as clf:
        assert clf.engine.windowed
        with pytest.raises(ConfigError, match="full-size sliding-window cache"):
            clf.reprime(_without(clf.bundle, [4]))


@pytest.mark.model
@pytest.mark.slow
def test_audit_equals_leave_one_out_with_separate_classifiers(
    result: ablation.AuditResult, gemma: Model
) -> None:
    b = _bundle()
    texts = [r["text"] for r in records("stereoset", n=N)]
    gold = [r["label"] for r in records("stereoset", n=N)]

    def run(prompt: str) -> list[str]:
        with Classifier.open(b, AUDIT_OPTS, model=gemma, system_prompt=prompt) as clf:
            return [p.label for p in clf.classify_many(texts)]

    base = run(b.system_prompt)
    assert result.baseline_predictions == base
    rep0 = score(gold, base, b.labels)
    assert result.baseline_macro_f1 == rep0.macro_f1 and result.n == N
    assert [e.indices for e in result.rules] == [[1], [2], [3], [4]]
    for e in result.rules:
        preds = run(_without(b, e.indices))
        assert e.predictions == preds, e.index
        rep = score(gold, preds, b.labels)
        assert e.delta_macro_f1 == pytest.approx(rep.macro_f1 - rep0.macro_f1, abs=1e-12)
        assert e.delta_accuracy == pytest.approx(rep.accuracy - rep0.accuracy, abs=1e-12)
        assert e.changed == sum(x != y for x, y in zip(preds, base))


@pytest.mark.model
def test_reuse_decodes_fewer_prompt_tokens(result: ablation.AuditResult) -> None:
    assert result.tokens_from_scratch == result.prompt_tokens + sum(
        e.prompt_tokens for e in result.rules
    )
    assert result.tokens_decoded == result.prompt_tokens + sum(
        e.tokens_decoded for e in result.rules
    )
    assert result.tokens_decoded < result.tokens_from_scratch
    assert result.token_ratio == result.tokens_from_scratch / result.tokens_decoded > 1.2


@pytest.mark.model
def test_paired_bootstrap_brackets_the_delta(result: ablation.AuditResult) -> None:
    assert any(e.changed for e in result.rules)  # otherwise every interval is [0, 0]
    for e in result.rules:
        assert e.ci_low <= e.delta_macro_f1 <= e.ci_high
        assert e.accuracy_ci[0] <= e.delta_accuracy <= e.accuracy_ci[1]
        if e.changed == 0:
            assert e.ci_low == e.ci_high == 0.0


def test_resampled_macro_f1_matches_metrics() -> None:
    rng = np.random.default_rng(1)
    gold, pred = rng.integers(0, 3, 20), rng.integers(0, 3, 20)
    idx = rng.integers(0, 20, (30, 20))
    fast = macro_f1_resampled(gold, pred, idx, 3)
    names = np.array(["a", "b", "c"])
    slow = [macro_f1(names[gold[i]].tolist(), names[pred[i]].tolist(), names) for i in idx]
    assert np.allclose(fast, slow, atol=1e-12)


def test_rule_groups() -> None:
    plain = [Instruction(id=f"r{i}", text="x") for i in range(5)]
    assert ablation.rule_groups(plain, "rule") == [[0], [1], [2], [3], [4]]
    assert ablation.rule_groups(plain, "group", group_size=2) == [[0, 1], [2, 3], [4]]
    clustered = [
        Instruction(id=f"r{i}", text="x", cluster=c) for i, c in enumerate([3, 1, 3, None])
    ]
    assert ablation.rule_groups(clustered, "group") == [[0, 2], [1], [3]]


@pytest.mark.model
def test_cli_audit_write_and_show(tmp_path: Path) -> None:
    from pld.cli import app

    path = save_bundle(_bundle(), tmp_path / "b.pld.json")
    assert json.loads(path.read_text())["schema_version"] == 1
    args = ["bundle", "audit", str(path), "--data", str(data_file("stereoset")), "--limit", "6"]
    args += ["--n-batch", "64", "--threads", "1", "--n-boot", "200", "--write"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["n"] == 6 and {"baseline_macro_f1", "baseline_accuracy"} <= set(last)
    assert last["tokens_decoded"] < last["tokens_from_scratch"]
    assert [r["index"] for r in last["rules"]] == [1, 2, 3, 4]
    for r in last["rules"]:
        assert {"delta_macro_f1", "ci_low", "ci_high", "delta_accuracy"} <= set(r)
    assert "d macro-F1" in out.stdout and "from scratch" in out.stdout

    written = load_bundle(path)  # digest checked
    assert written.schema_version == 2 and written.metrics is not None
    assert (written.metrics.n, written.metrics.split) == (6, "dev")  # the audit's baseline
    effects = written.metrics.rule_effects or []
    assert [(e.index, e.id, e.n) for e in effects] == [(i, f"r{i}", 6) for i in range(1, 5)]
    assert [e.delta_macro_f1 for e in effects] == [r["delta_macro_f1"] for r in last["rules"]]
    shown = CliRunner().invoke(app, ["bundle", "show", str(path)])
    assert shown.stdout == render_audit(written) + "\n"
    lines = shown.stdout.splitlines()
    for i, r in enumerate(last["rules"], 1):
        at = next(k for k, x in enumerate(lines) if x.startswith(f"  {i}. "))
        assert lines[at + 1].startswith("     effect: without it macro-F1 ")
        assert f"{r['delta_macro_f1']:+.3f}" in lines[at + 1]

    out = CliRunner().invoke(app, ["bundle", "audit", "stereoset", "--data", "x", "--write"])
    assert isinstance(out.exception, ConfigError) and "shipped" in str(out.exception)


@pytest.mark.model
def test_only_a_per_rule_audit_of_the_same_rules_is_written(result: ablation.AuditResult) -> None:
    b = _bundle()
    assert ablation.with_rule_effects(b, result).metrics is not None
    with pytest.raises(ConfigError, match="--by rule"):
        ablation.with_rule_effects(b, msgspec.structs.replace(result, by="group"))
    fewer = msgspec.structs.replace(b, instructions=b.instructions[:3])
    with pytest.raises(ConfigError, match="current rules"):
        ablation.with_rule_effects(fewer, result)

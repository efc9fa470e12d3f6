"""Calibration is chosen for a prompt and a model together: the choice by measurement, the
runtime's refusal to carry one model's choice to another, and `pld eval --calibration-data`.
The model tests run the real Gemma-3 270M and SmolLM2-135M; nothing is mocked.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_file

from pld.errors import DataError
from pld.models import resolve
from pld.runtime import (
    Classifier,
    ClassifierOptions,
    Model,
    apply_prior,
    calibration_applies,
    choose_calibration,
    fit_prior,
    load_bundle,
    shipped_bundles,
)

LABELS = ["a", "b", "c"]


def test_contextual_is_chosen_only_where_it_scores_higher() -> None:
    model = resolve("smollm2-135m-instruct", verify=False)
    # raw probabilities lean to "a" everywhere; the prior says so: dividing it out recovers
    # the right answer on every record
    prior = np.array([0.6, 0.2, 0.2])
    probs = np.array([[0.5, 0.3, 0.2], [0.5, 0.2, 0.3], [0.7, 0.15, 0.15]])
    gold = ["b", "c", "a"]
    got = choose_calibration(probs, prior, gold, LABELS, model)
    assert got.choice == "contextual"
    assert got.macro_f1["contextual"] == 1.0 and got.macro_f1["none"] < 1.0
    assert got.model == "smollm2-135m-instruct" and got.sha256 == model.sha256 and got.n == 3
    # a prior that would flip right answers into wrong ones is not chosen
    worse = choose_calibration(probs, prior, ["a", "a", "a"], LABELS, model)
    assert worse.choice == "none"
    # a tie keeps the simpler "none"
    flat = choose_calibration(probs, np.ones(3) / 3, gold, LABELS, model)
    assert flat.choice == "none" and flat.macro_f1["none"] == flat.macro_f1["contextual"]
    assert np.allclose(apply_prior(probs, prior).sum(axis=1), 1.0)


def test_a_bundles_calibration_applies_only_to_the_model_it_was_chosen_on() -> None:
    bundle = load_bundle(shipped_bundles()["stereoset"])
    assert bundle.runtime.calibration == "contextual" and bundle.student.model == "gemma-3-270m"
    assert calibration_applies(bundle, resolve("gemma-3-270m", verify=False)) == (True, None)
    applies, note = calibration_applies(bundle, resolve("smollm2-135m-instruct", verify=False))
    assert not applies and note is not None
    assert "calibration: none" in note and "gemma-3-270m" in note and "--calibration-data" in note


@pytest.mark.model
def test_another_model_runs_a_bundle_uncalibrated_unless_told() -> None:
    text = "Target: nurse\nContext: The nurse was BLANK.\nSentence: The nurse was caring."
    with Classifier.open("stereoset", model="smollm2-135m-instruct",
                         allow_model_mismatch=True, prefix_cache=False) as other:  # fmt: skip
        assert not other.calibrated and other.calibration_note is not None
        p = other.classify(text)
        assert not p.calibrated
        prior = other.content_free_prior()  # still available, for deciding
        assert prior.shape == (3,) and abs(prior.sum() - 1) < 1e-9
    with Classifier.open("stereoset", model="smollm2-135m-instruct", calibrate=True,
                         allow_model_mismatch=True, prefix_cache=False) as forced:  # fmt: skip
        assert forced.calibrated and forced.calibration_note is None
        assert forced.classify(text).calibrated
    with Classifier.open("stereoset", prefix_cache=False) as own:  # the bundle's own student
        assert own.calibrated and own.calibration_note is None


@pytest.mark.model
def test_eval_decides_calibration_on_a_separate_split(tmp_path) -> None:
    from pld.evals.evaluate import evaluate

    lines = data_file("stereoset").read_text(encoding="utf-8").splitlines()
    decide, data = tmp_path / "decide.jsonl", tmp_path / "data.jsonl"
    decide.write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    data.write_text("\n".join(lines[12:20]) + "\n", encoding="utf-8")
    opts = ClassifierOptions(allow_model_mismatch=True, prefix_cache=False)
    res = evaluate("stereoset", data, opts, model="smollm2-135m-instruct", progress=False,
                   calibration_data=decide)  # fmt: skip
    c = res.calibration_choice
    assert c is not None and c.n == 12 and c.model == "smollm2-135m-instruct"
    assert set(c.macro_f1) == {"none", "contextual", "fitted"} and c.prior is not None
    assert res.calibrated == (c.choice != "none") and res.calibration_note is None
    plain = evaluate("stereoset", data, opts, model="smollm2-135m-instruct", progress=False)
    assert plain.calibration_note is not None and not plain.calibrated
    with pytest.raises(DataError, match="must not be the data being evaluated"):
        evaluate("stereoset", data, opts, model="smollm2-135m-instruct", progress=False,
                 calibration_data=data)  # fmt: skip


def _biased(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Probabilities that know the answer but under-score label "b" by a factor of e^2."""
    rng = np.random.default_rng(seed)
    gold = [LABELS[i % 3] for i in range(n)]
    logits = rng.normal(0, 0.3, (n, 3)) + np.array(
        [[2.0 if g == x else 0.0 for x in LABELS] for g in gold]
    )
    logits[:, 1] -= 2.0
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), gold


def test_a_fitted_prior_undoes_a_label_bias_and_is_chosen() -> None:
    model = resolve("smollm2-135m-instruct", verify=False)
    probs, gold = _biased(48, seed=1)
    assert sum(LABELS[i] == "b" for i in probs.argmax(axis=1)) < 8  # of 16 "b" records
    prior = fit_prior(probs, gold, LABELS)
    assert prior.shape == (3,) and abs(prior.sum() - 1) < 1e-9 and prior[1] < prior[0] / 2
    fixed = [LABELS[i] for i in apply_prior(probs, prior).argmax(axis=1)]
    assert sum(f == g for f, g in zip(fixed, gold)) >= 46
    got = choose_calibration(probs, np.ones(3) / 3, gold, LABELS, model)
    assert got.choice == "fitted" and got.macro_f1["fitted"] > got.macro_f1["none"] + 0.2
    assert got.prior is not None and np.allclose(got.prior, prior)


def test_the_fitted_calibration_competes_with_its_cross_validated_score() -> None:
    model = resolve("smollm2-135m-instruct", verify=False)
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=60)  # no signal at all
    gold = [LABELS[i % 3] for i in range(60)]
    prior = fit_prior(probs, gold, LABELS)
    in_sample = [LABELS[i] for i in apply_prior(probs, prior).argmax(axis=1)]
    from pld.metrics import macro_f1

    got = choose_calibration(probs, np.ones(3) / 3, gold, LABELS, model)
    # fitted on the records it is scored on, a prior finds noise to exploit; scored on folds it
    # was not fitted on, it does not
    assert got.macro_f1["fitted"] < macro_f1(gold, in_sample, LABELS) - 0.05
    few = choose_calibration(probs[:7], np.ones(3) / 3, gold[:7], LABELS, model)
    assert "fitted" not in few.macro_f1 and few.prior is None and few.choice != "fitted"


@pytest.mark.model
def test_a_bundle_with_a_fitted_prior_divides_it_out_fresh_and_restored(
    tmp_path, gemma: Model
) -> None:
    import msgspec

    from pld.runtime import RuntimeSettings, save_bundle

    base = load_bundle(shipped_bundles()["stereoset"])  # Gemma-3 270M, its own student
    prior = [0.2, 0.7, 0.1]
    fitted = msgspec.structs.replace(
        base, runtime=RuntimeSettings(calibration="fitted", prior=prior)
    )
    path = save_bundle(fitted, tmp_path / "fitted.pld.json")
    texts = [
        "Target: nurse\nContext: The nurse was BLANK.\nSentence: The nurse was caring.",
        "Target: chess player\nContext: The chess player was BLANK.\nSentence: The chess player was hispanic.",
    ]
    with Classifier.open(path, model=gemma, prefix_cache=False, calibrate=False) as raw:
        want = apply_prior(
            np.array([[p.probs[x] for x in raw.labels] for p in map(raw.classify, texts)]),
            np.array(prior),
        )
    for _ in range(2):  # primed and saved, then restored from the saved state
        with Classifier.open(path, model=gemma, state_dir=tmp_path / "states") as clf:
            assert clf.calibrated
            got = np.array([[p.probs[x] for x in clf.labels] for p in clf.classify_many(texts)])
            assert np.allclose(got, want, atol=1e-9)
            cf = clf.content_free_prior()  # still the content-free prior, for deciding
            assert not np.allclose(cf, prior)
    # the prior was fitted for the bundle's prompt: another prompt runs uncalibrated
    with Classifier.open(path, model=gemma, prefix_cache=False, system_prompt="Answer.") as other:
        assert not other.calibrated and "fitted for its own prompt" in (
            other.calibration_note or ""
        )


@pytest.mark.model
def test_bundle_calibrate_writes_the_choice_for_the_student_it_was_measured_on(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from pld.cli import app

    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(data_file("stereoset").read_text().splitlines()[:12]) + "\n")
    out = tmp_path / "stereoset-smollm2.pld.json"
    res = CliRunner().invoke(
        app, ["bundle", "calibrate", "stereoset", "--data", str(dev), "--out", str(out),
              "--model", "smollm2-135m-instruct", "--name", "stereoset-smollm2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    made = load_bundle(out)
    decided = json.loads(res.output.strip().splitlines()[-1])
    model = resolve("smollm2-135m-instruct", verify=False)
    assert made.name == "stereoset-smollm2" and made.student.model == "smollm2-135m-instruct"
    assert made.student.sha256 == model.sha256 == decided["sha256"]
    assert made.runtime.calibration == decided["choice"] and decided["n"] == 12
    assert set(decided["macro_f1"]) == {"none", "contextual", "fitted"}
    assert (made.runtime.prior is not None) == (decided["choice"] == "fitted")
    assert made.provenance["calibration"]["choice"] == decided["choice"] and made.metrics is None
    source = load_bundle(shipped_bundles()["stereoset"])
    assert made.system_prompt == source.system_prompt
    assert made.provenance["calibrated_from"] == {"name": "stereoset", "digest": source.digest}
    # the new bundle runs on its student with its own calibration, no mismatch to allow
    with Classifier.open(out, model="smollm2-135m-instruct", prefix_cache=False) as clf:
        assert clf.calibrated == (decided["choice"] != "none") and clf.calibration_note is None

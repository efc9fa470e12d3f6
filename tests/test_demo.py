"""`pld demo`: the default bundle on the default model, and the refusal of a student no shipped
bundle was distilled for. The Qwen student's demo is in test_qwen.py (it needs pld[qwen])."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pld.cli import app

pytestmark = pytest.mark.model


def test_the_default_demo_says_its_bundle_has_no_rules() -> None:
    res = CliRunner().invoke(app, ["demo", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "model gemma-3-270m" in res.output and "0 rules" in res.output
    assert "this bundle has no rules: its prompt is the zero-shot one" in res.output
    assert res.output.count("-> ") == 4  # one answer per example, no zero-shot column


def test_a_student_without_a_shipped_bundle_is_refused_with_the_choices() -> None:
    res = CliRunner().invoke(app, ["demo", "--student", "smollm2-135m-instruct"])
    assert res.exit_code != 0
    assert "no shipped StereoSet bundle was distilled for student 'smollm2-135m-instruct'" in str(
        res.output
    ) + str(res.exception)

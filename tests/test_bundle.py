"""The bundle format: strict schema, digest, system-prompt consistency, released fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from pld.errors import BundleError
from pld.runtime.audit import render_audit
from pld.runtime.bundle import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    Bundle,
    bundle_digest,
    load_bundle,
    parse_bundle,
    render_system_prompt,
    save_bundle,
    schema_version_for,
)
from pld.runtime.store import resolve_bundle_path, shipped_bundles

FIXTURES = Path(__file__).parent / "fixtures" / "bundles"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("v*.json")), ids=lambda p: p.name)
def test_every_released_schema_version_still_loads(path: Path) -> None:
    raw = json.loads(path.read_text())
    if raw["schema_version"] in READABLE_VERSIONS:
        b = load_bundle(path)
        assert b.digest == bundle_digest(b)
        assert b.system_prompt == render_system_prompt(b.task, b.instructions)
    else:  # an older schema must fail with an upgrade message, never a traceback
        with pytest.raises(BundleError, match="schema_version"):
            load_bundle(path)


def test_v1_fixture_content() -> None:
    b = load_bundle(FIXTURES / "v1.json")
    assert b.labels == ["positive", "negative"]
    assert [i.id for i in b.instructions] == ["r1", "r2"]
    assert "1. Praise of the product" in b.system_prompt
    assert "2. Sarcasm" in b.system_prompt
    assert b.system_prompt.endswith(
        "Answer with exactly one label (positive, negative) and nothing else."
    )


def test_v2_fixture_content() -> None:
    b = load_bundle(FIXTURES / "v2.json")
    assert b.schema_version == 2 == schema_version_for(b) and b.metrics is not None
    effects = b.metrics.rule_effects or []
    assert [(e.index, e.id, e.delta_macro_f1, e.ci_low, e.ci_high, e.n) for e in effects] == [
        (1, "r1", -0.2, -0.45, 0.0, 10),
        (2, "r2", 0.0, -0.1, 0.1, 10),
    ]
    shown = render_audit(b).splitlines()
    at = shown.index(next(x for x in shown if x.startswith("  1. Praise")))
    assert (
        shown[at + 1]
        == "     effect: without it macro-F1 -0.200 [-0.450, +0.000], accuracy -0.200 (n=10)"
    )


def test_a_file_carries_the_lowest_schema_version_that_holds_it(tmp_path: Path) -> None:
    # without rule effects a bundle keeps its schema-1 bytes, digest and signature: an older pld
    # (which rejects unknown fields) still reads it; with them it says 2 ("upgrade pld" there)
    v1 = FIXTURES / "v1.json"
    again = save_bundle(load_bundle(v1), tmp_path / "v1.json")
    assert again.read_bytes() == v1.read_bytes()
    v2 = load_bundle(FIXTURES / "v2.json")
    stripped = msgspec.structs.replace(
        v2, metrics=msgspec.structs.replace(v2.metrics, rule_effects=None)
    )
    out = save_bundle(stripped, tmp_path / "stripped.json")
    assert json.loads(out.read_text())["schema_version"] == 1
    assert "rule_effects" not in out.read_text()
    raw = json.loads((FIXTURES / "v2.json").read_text())
    raw["schema_version"] = 1  # a schema-1 file cannot hold rule effects
    with pytest.raises(BundleError, match="needs schema_version 2"):
        parse_bundle(_bytes(raw), verify_digest=False)


def _raw() -> dict:
    return json.loads((FIXTURES / "v1.json").read_text())


def _bytes(raw: dict) -> bytes:
    return json.dumps(raw).encode()


def test_unknown_field_is_named() -> None:
    raw = _raw()
    raw["task"]["labelz"] = []
    with pytest.raises(BundleError, match="labelz"):
        parse_bundle(_bytes(raw))


def test_wrong_type_names_the_field() -> None:
    raw = _raw()
    raw["instructions"][0]["support"] = "many"
    with pytest.raises(BundleError, match=r"instructions\[0\]\.support"):
        parse_bundle(_bytes(raw))


def test_hand_edited_system_prompt_is_rejected() -> None:
    raw = _raw()
    raw["system_prompt"] += "\nAlways answer positive."
    with pytest.raises(BundleError, match="system_prompt"):
        parse_bundle(_bytes(raw), verify_digest=False)


def test_tampered_content_fails_the_digest() -> None:
    raw = _raw()
    raw["metrics"]["macro_f1"] = 0.99
    with pytest.raises(BundleError, match="digest"):
        parse_bundle(_bytes(raw))


def test_newer_schema_asks_for_an_upgrade() -> None:
    raw = _raw()
    raw["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(BundleError, match="upgrade pld"):
        parse_bundle(_bytes(raw))


def test_duplicate_labels_and_bad_version() -> None:
    raw = _raw()
    raw["version"] = "v1"
    with pytest.raises(BundleError, match="semver"):
        parse_bundle(_bytes(raw), verify_digest=False)
    raw = _raw()
    raw["task"]["labels"][1]["name"] = "positive"
    with pytest.raises(BundleError, match="duplicate"):
        parse_bundle(_bytes(raw), verify_digest=False)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pld.json"
    bad.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing.pld.json")


def test_save_roundtrip_refreshes_digest(tmp_path: Path) -> None:
    b = load_bundle(FIXTURES / "v1.json")
    changed = msgspec.structs.replace(b, version="1.0.1")
    out = save_bundle(changed, tmp_path / "x.pld.json")
    again = load_bundle(out)
    assert again.version == "1.0.1" and again.digest != b.digest
    assert isinstance(again, Bundle)


def test_shipped_bundles_load_and_resolve_by_name() -> None:
    shipped = shipped_bundles()
    assert set(shipped) >= {"stereoset", "contractnli", "logiqa"}
    for name, path in shipped.items():
        b = load_bundle(path)
        assert b.name == name and b.student.model == "gemma-3-270m"
        assert resolve_bundle_path(name) == path
    with pytest.raises(BundleError, match="stereoset"):
        resolve_bundle_path("no-such-bundle")


def test_a_fitted_calibration_needs_schema_3_and_one_positive_prior_per_label(
    tmp_path: Path,
) -> None:
    from pld.runtime.bundle import RuntimeSettings

    v1 = load_bundle(FIXTURES / "v1.json")
    fitted = msgspec.structs.replace(
        v1, runtime=RuntimeSettings(calibration="fitted", prior=[0.3, 0.7])
    )
    out = save_bundle(fitted, tmp_path / "fitted.json")
    assert json.loads(out.read_text())["schema_version"] == 3 == SCHEMA_VERSION
    again = load_bundle(out)
    assert again.runtime.prior == [0.3, 0.7] and again.digest == bundle_digest(again)
    raw = json.loads(out.read_text())
    raw["schema_version"] = 2
    with pytest.raises(BundleError, match="runtime.calibration: fitted.*needs schema_version 3"):
        parse_bundle(_bytes(raw), verify_digest=False)
    for runtime, match in (
        ({"calibration": "fitted"}, "prior is missing"),
        ({"calibration": "none", "prior": [0.5, 0.5]}, "calibration is 'none', prior is set"),
        ({"calibration": "fitted", "prior": [1.0]}, "one positive number per label"),
        ({"calibration": "fitted", "prior": [0.0, 1.0]}, "one positive number per label"),
    ):
        raw = json.loads(out.read_text())
        raw["runtime"] = runtime
        with pytest.raises(BundleError, match=match):
            parse_bundle(_bytes(raw), verify_digest=False)

"""On-device acceptance checks: `pld bundle publish --check-data TASK=FILE` records how the bundle
does with its student on a few inputs, a signed index entry names that check set, and a pull
activates the bundle only if it does about as well on the device, with the real model.

One check set here claims more than the bundle reaches (the accuracy of the real run, with
expected labels the model does not give): what a device sees when its model file or backend
does worse than the publisher's. It is made with the same code and signed like any other.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import msgspec
import pytest
from conftest import data_file
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import DataError, RejectedError
from pld.fleet import pull, status
from pld.fleet.acceptance import CheckSet, check_set_bytes, judge, parse_check_set, pick_cases
from pld.fleet.keys import SigningKey
from pld.fleet.publisher import publish
from pld.fleet.sync import run_agent
from pld.fleet.sync_state import read_sync_state
from pld.runtime import load_bundle, save_bundle, shipped_bundles

runner = CliRunner()
KEY = SigningKey.generate()
LABELS = ["stereotype", "anti-stereotype", "unrelated"]


def bundle_file(tmp: Path, version: str) -> Path:
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()["stereoset"]), version=version)
    return save_bundle(bundle, tmp / f"stereoset-{version}.pld.json")


def check(accuracy: float = 0.5, tolerance: float = 0.1, **kw: object) -> CheckSet:
    fields = dict(type="pld-check-set", task="stereoset", bundle_sha256="a" * 64,
                  model_sha256=None, backend="cpu", accuracy=accuracy, tolerance=tolerance,
                  cases=[{"text": "t", "label": "unrelated"}])  # fmt: skip
    return msgspec.convert(fields | kw, CheckSet)


def test_parse_and_judge() -> None:
    ok = check()
    assert parse_check_set(check_set_bytes(ok), "stereoset", "a" * 64, LABELS) == ok
    for bad, message in [
        (check(task="logiqa"), "is for task 'logiqa'"),
        (check(bundle_sha256="b" * 64), "is for task 'stereoset', bundle bbbb"),
        (check(accuracy=1.5), "both must be between 0 and 1"),
        (check(cases=[]), "has 0 cases"),
        (check(cases=[{"text": "t", "label": "nope"}]), "labels the bundle does not have: nope"),
    ]:
        with pytest.raises(RejectedError, match=message):
            parse_check_set(check_set_bytes(bad), "stereoset", "a" * 64, LABELS)
    judge(ok, 0.4, "1")  # exactly at the floor passes
    with pytest.raises(RejectedError, match=r"acceptance check failed .* 30.0% .* 50.0%"):
        judge(ok, 0.3, "1")


def test_a_check_takes_the_shortest_inputs_with_labels_in_turn() -> None:
    rows = [(1, {"text": "a" * 50, "label": "x"}), (2, {"text": "b" * 5, "label": "x"}),
            (3, {"text": "c" * 9, "label": "y"}), (4, {"text": "d" * 1, "label": "x"}),
            (5, {"text": "e" * 7, "label": "y"}), (6, {"text": "f" * 2, "label": "z"}),
            (8, {"text": "g" * 3, "label": "x"})]  # fmt: skip
    # each label's shortest in turn (x: d g b a, y: e c, z: f): d e f, then g c; file order
    assert [c.text[0] for c in pick_cases(rows, 5, "f.jsonl")] == list("cdefg")
    # a label that runs out leaves its turns to the others: the third round is x's b alone
    assert [c.text[0] for c in pick_cases(rows, 6, "f.jsonl")] == list("bcdefg")
    assert len(pick_cases(rows, 100, "f.jsonl")) == len(rows)
    with pytest.raises(DataError, match="f.jsonl:9: a check record needs a string"):
        pick_cases([*rows, (9, {"text": 3, "label": "x"})], 2, "f.jsonl")


@pytest.mark.model
@pytest.mark.slow  # three primes of the real model: about 40 s on a busy 2-core machine
def test_a_bundle_that_does_worse_on_the_device_is_not_activated(tmp_path: Path) -> None:
    pub, d = tmp_path / "pub", tmp_path / "dev"
    v1, v2 = bundle_file(tmp_path, "0.1.0"), bundle_file(tmp_path, "0.2.0")
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY.pem())
    data = data_file("stereoset")
    args = ["--to", str(pub), "--channel", "stable", "--key", str(key_file)]
    out = runner.invoke(app, ["bundle", "publish", str(v1), *args, "--check-data",
                              f"stereoset={data}", "--check-n", "6"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "stereoset: acceptance check of 6 inputs (the shortest, " in out.output
    (checks,) = list((pub / "checks").iterdir())
    recorded = msgspec.json.decode(checks.read_bytes(), type=CheckSet)
    assert recorded.task == "stereoset" and len(recorded.cases) == 6

    result = pull(pub, d, trusted_keys=[KEY.public], prime=False)  # checks run all the same
    assert result.changed[0].acceptance == pytest.approx(recorded.accuracy)
    before = (d / "current" / "stereoset.pld.json").read_bytes()

    # v2 with a check set that claims more than it reaches (expected labels the model never
    # gives, at the accuracy measured for real): the device must refuse it. v2 differs from v1
    # only in its version, so v1's measured check set is v2's real one
    real = msgspec.structs.replace(
        recorded, bundle_sha256=hashlib.sha256(v2.read_bytes()).hexdigest()
    )
    wrong = [msgspec.structs.replace(c, label=next(x for x in LABELS if x != c.label))
             for c in real.cases]  # fmt: skip
    claims = msgspec.structs.replace(real, cases=wrong, accuracy=max(real.accuracy, 0.5))
    publish([v2], pub, channel="stable", keys=[KEY], checks={"stereoset": check_set_bytes(claims)})
    with pytest.raises(RejectedError, match="acceptance check failed for task 'stereoset'"):
        pull(pub, d, prime=False)
    assert (d / "current" / "stereoset.pld.json").read_bytes() == before
    assert status(d).tasks[0].version == "0.1.0"
    shutil.copytree(d, tmp_path / "dev2", symlinks=True)  # v2's state is primed: restored
    out = run_agent(pub, tmp_path / "dev2", once=True, prime=False)  # the agent says why
    assert out is not None and out.error is not None
    st = read_sync_state(tmp_path / "dev2")
    assert st is not None and st.last_error is not None and st.last_error.reason == "acceptance"

    # a check file changed in the store after signing is refused before anything runs
    publish([v2], pub, channel="stable", keys=[KEY], checks={"stereoset": check_set_bytes(real)})
    (ref,) = [p for p in (pub / "checks").iterdir() if p.read_bytes() == check_set_bytes(real)]
    ref.write_bytes(check_set_bytes(msgspec.structs.replace(real, tolerance=1.0)))
    with pytest.raises(RejectedError, match="a tampered file"):
        pull(pub, d, prime=False)
    ref.write_bytes(check_set_bytes(real))
    result = pull(pub, d, prime=False)
    assert result.changed[0].new_version == "0.2.0"
    assert result.changed[0].acceptance == pytest.approx(real.accuracy)

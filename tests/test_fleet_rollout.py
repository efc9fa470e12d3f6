"""Staged rollouts: `pld bundle publish --rollout`, `pld channel promote|halt`, and 200 device
directories pulling from the same local store with real keys and real bundles.

Pulls skip priming (``prime=False``, the pull API's option for simulations): priming is the
same code path as every other pull's and is tested in test_fleet_device.py; the model file is
still resolved and checked against each bundle, so these tests need it (``model``).
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import FleetError, RejectedError
from pld.fleet import DeviceDir, pull, status
from pld.fleet.channel import set_rollout
from pld.fleet.index import ChannelIndex, IndexEntry, check_entry
from pld.fleet.keys import SigningKey
from pld.fleet.publisher import publish
from pld.fleet.rollout import bucket, choose
from pld.fleet.signed import verify_document
from pld.runtime import load_bundle, save_bundle, shipped_bundles

runner = CliRunner()
KEY = SigningKey.generate()
N_DEVICES = 200


def bundle_file(tmp: Path, version: str, name: str = "stereoset") -> Path:
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()[name]), version=version)
    return save_bundle(bundle, tmp / f"{name}-{version}.pld.json")


def index_of(pub: Path, channel: str = "stable") -> ChannelIndex:
    data = (pub / "channels" / channel / "index.json").read_bytes()
    payload = verify_document(data, {KEY.keyid: KEY.public})
    return msgspec.json.decode(payload, type=ChannelIndex)


def entry(sha: str, version: str = "1", **kw: object) -> IndexEntry:
    return IndexEntry(file=f"bundles/{sha}.pld.json", name="b", version=version, length=1,
                      sha256=sha, student_model="m", student_sha256="0" * 64, **kw)  # type: ignore[arg-type]  # fmt: skip


# ---- the pure parts ----------------------------------------------------------------------------


def test_buckets_are_stable_uniform_and_per_task() -> None:
    rng = random.Random(1)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(4000)]
    buckets = [bucket(i, "stable", "stereoset") for i in ids]
    assert all(0 <= b < 100 for b in buckets)
    assert buckets == [bucket(i, "stable", "stereoset") for i in ids]  # stable
    for share in (1, 10, 50, 90):  # within 4 sigma of a binomial
        inside = sum(b < share for b in buckets)
        sigma = math.sqrt(len(ids) * share / 100 * (1 - share / 100))
        assert abs(inside - len(ids) * share / 100) < 4 * sigma, share
    other = [bucket(i, "stable", "logiqa") for i in ids]  # not always the same first devices
    first = {i for i, b in zip(ids, buckets) if b < 10}
    assert len(first & {i for i, b in zip(ids, other) if b < 10}) < len(first) / 2


def test_choose_never_leaves_a_device_without_a_bundle() -> None:
    old, new, older = "a" * 64, "b" * 64, "c" * 64
    staged = entry(new, "2", rollout=10, previous=entry(old))
    inside, outside = 5.0, 50.0
    assert choose(staged, old, None, inside)[:1] == ("take",)
    assert choose(staged, old, None, inside).entry.sha256 == new
    assert choose(staged, old, None, outside)[::2] == ("unchanged", True)
    assert choose(staged, new, None, outside)[::2] == ("unchanged", False)  # moved: stays moved
    for active in (None, older):  # a new device, or one on an older bundle: the previous one
        c = choose(staged, active, None, outside)
        assert (c.action, c.entry.sha256, c.deferred) == ("take", old, True)
    assert choose(staged, old, new, inside).action == "held"  # rolled back here: left so
    halted = msgspec.structs.replace(staged, rollout=0)
    assert choose(halted, new, None, 0.0).action == "unchanged"
    assert choose(halted, old, None, 0.0).action == "unchanged"
    # an index without a previous bundle (pld never writes one): keep what you have, or take it
    bare = entry(new, "2", rollout=10)
    assert choose(bare, old, None, outside)[::2] == ("unchanged", True)
    assert choose(bare, None, None, outside).action == "take"


def test_index_entries_with_a_bad_rollout_are_refused() -> None:
    old, new = "a" * 64, "b" * 64
    check_entry(entry(new, rollout=0, previous=entry(old)), "t")
    for bad, message in [
        (entry(new, rollout=101), "rollout of 101%"),
        (entry(new, rollout=-1), "rollout of -1%"),
        (entry(new, rollout=5, previous=entry(old, rollout=5)), "itself in a staged rollout"),
        (entry(new, rollout=5, previous=entry(new)), "the same file"),
        (entry(new, rollout=5, previous=entry("x")), "not 64 hex digits"),
    ]:
        with pytest.raises(RejectedError, match=message):
            check_entry(bad, "t")


def test_a_full_rollout_signs_the_same_bytes_as_before(tmp_path: Path) -> None:
    """Defaults are omitted: a device from before rollouts still reads a plain index."""
    publish([bundle_file(tmp_path, "0.1.0")], tmp_path / "pub", channel="stable", keys=[KEY])
    payload = verify_document(
        (tmp_path / "pub/channels/stable/index.json").read_bytes(), {KEY.keyid: KEY.public}
    )
    assert b"rollout" not in payload and b"previous" not in payload


def test_publisher_refusals(tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    v1, v2, v3 = (bundle_file(tmp_path, v) for v in ("0.1.0", "0.2.0", "0.3.0"))
    with pytest.raises(FleetError, match="no earlier bundle in channel 'stable'"):
        publish([v1], pub, channel="stable", keys=[KEY], rollout=10)
    assert not pub.exists()  # nothing written
    publish([v1], pub, channel="stable", keys=[KEY])
    with pytest.raises(FleetError, match="is not in a staged rollout"):
        set_rollout(pub, channel="stable", rollout=50, keys=[KEY], tasks=["stereoset"])
    with pytest.raises(FleetError, match="no task of channel 'stable' is in a staged rollout"):
        set_rollout(pub, channel="stable", rollout=0, keys=[KEY])
    with pytest.raises(FleetError, match="already serves"):
        publish([v1], pub, channel="stable", keys=[KEY], rollout=10)
    publish([v2], pub, channel="stable", keys=[KEY], rollout=20)
    with pytest.raises(FleetError, match="would change nothing"):
        set_rollout(pub, channel="stable", rollout=10, keys=[KEY])
    with pytest.raises(FleetError, match="serves no task 'nope'"):
        set_rollout(pub, channel="stable", rollout=50, keys=[KEY], tasks=["nope"])
    # a new rollout over an unfinished one: the others go back to what every device ran
    publish([v3], pub, channel="stable", keys=[KEY], rollout=5)
    e = index_of(pub).tasks["stereoset"]
    assert (e.version, e.rollout, e.previous and e.previous.version) == ("0.3.0", 5, "0.1.0")
    assert index_of(pub).version == 3


@pytest.mark.model
def test_a_pull_makes_a_device_id_once_and_keeps_it(tmp_path: Path) -> None:
    publish([bundle_file(tmp_path, "0.1.0")], tmp_path / "pub", channel="stable", keys=[KEY])
    d = DeviceDir(tmp_path / "dev")
    assert d.read_device_id() is None
    first = pull(tmp_path / "pub", d.root, trusted_keys=[KEY.public], prime=False)
    assert len(first.device_id) == 32 and d.read_device_id() == first.device_id
    assert pull(tmp_path / "pub", d.root, prime=False).device_id == first.device_id
    d.device_id_path.write_text("not an id\n")
    with pytest.raises(FleetError, match="not a device id"):
        pull(tmp_path / "pub", d.root, prime=False)


# ---- 200 devices -------------------------------------------------------------------------------


def _versions(devices: list[Path]) -> list[str]:
    """Every device's active stereoset version; fails if any device has none."""
    out = []
    for d in devices:
        tasks = {t.task: t.version for t in status(d).tasks}
        assert "stereoset" in tasks, f"{d} has no active bundle"
        out.append(tasks["stereoset"])
    return out


def _pull_all(pub: Path, devices: list[Path]) -> None:
    for d in devices:
        pull(pub, d, trusted_keys=[KEY.public], prime=False)


@pytest.mark.model
def test_staged_rollout_over_200_devices(tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    key_file = tmp_path / "index.key"
    key_file.write_bytes(KEY.pem())
    v1, v2 = bundle_file(tmp_path, "0.1.0"), bundle_file(tmp_path, "0.2.0")
    publish([v1], pub, channel="stable", keys=[KEY])
    # a template device, copied: each copy gets its own id, as a device's first pull makes it
    # (seeded here, so the binomial bounds below hold on every run)
    rng = random.Random(16)
    pull(pub, tmp_path / "template", trusted_keys=[KEY.public], prime=False)
    devices = []
    for i in range(N_DEVICES):
        d = tmp_path / "devices" / f"{i:03d}"
        shutil.copytree(tmp_path / "template", d, symlinks=True)
        (d / "device-id").write_text(f"{rng.getrandbits(128):032x}\n")
        devices.append(d)
    ids = [DeviceDir(d).read_device_id() or "" for d in devices]
    buckets = [bucket(i, "stable", "stereoset") for i in ids]

    def check_share(share: int, moved: list[bool]) -> None:
        p, n = share / 100, len(devices)
        assert abs(sum(moved) - n * p) <= 3 * math.sqrt(n * p * (1 - p)), (share, sum(moved))

    args = ["--to", str(pub), "--channel", "stable", "--key", str(key_file)]
    out = runner.invoke(app, ["bundle", "publish", str(v2), *args, "--rollout", "10"])
    assert out.exit_code == 0, out.output
    assert "to 10% of devices (the others: 0.1.0)" in out.output
    _pull_all(pub, devices)
    moved = [v == "0.2.0" for v in _versions(devices)]
    assert moved == [b < 10 for b in buckets]  # exactly the devices whose bucket is inside
    check_share(10, moved)
    # a new device outside the share takes the previous bundle, never nothing
    new_devices = [tmp_path / "new" / str(i) for i in range(10)]
    _pull_all(pub, new_devices)
    for d in new_devices:
        inside = bucket(DeviceDir(d).read_device_id() or "", "stable", "stereoset") < 10
        assert _versions([d]) == ["0.2.0" if inside else "0.1.0"]

    out = runner.invoke(app, ["channel", "halt", *args])
    assert out.exit_code == 0, out.output
    _pull_all(pub, devices)
    assert [v == "0.2.0" for v in _versions(devices)] == moved  # none further, none back

    out = runner.invoke(app, ["channel", "promote", *args, "--rollout", "50"])
    assert out.exit_code == 0 and "to 50% of devices" in out.output, out.output
    _pull_all(pub, devices)
    moved50 = [v == "0.2.0" for v in _versions(devices)]
    assert all(b for a, b in zip(moved, moved50) if a)  # the first 10 % stayed moved
    assert moved50 == [b < 50 for b in buckets]
    check_share(50, moved50)
    result = pull(pub, devices[moved50.index(False)], prime=False)
    assert result.deferred == {"stereoset": "0.2.0"} and result.unchanged == ["stereoset"]

    out = runner.invoke(app, ["channel", "promote", *args])
    assert out.exit_code == 0, out.output
    assert index_of(pub).tasks["stereoset"].previous is None
    _pull_all(pub, devices)
    assert _versions(devices) == ["0.2.0"] * N_DEVICES
    assert index_of(pub).version == 5

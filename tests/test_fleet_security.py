"""Holes in pld.fleet, each closed with a test that failed before the fix: the
publisher verifies the store before it signs anything again; root and index keys have separate
roles and root can reset version floors; pulls have deadlines; smaller file and parsing checks.

No model is needed: indexes here name no task, or the device directory is laid out by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from pld.errors import DeadlineError, FleetError, PldError, RejectedError
from pld.fleet import DeviceDir, publish, pull, rotate_keys, status
from pld.fleet.device_schema import (
    ActiveEntry,
    ChannelState,
    Manifest,
    TrustedKeySet,
    TrustedState,
)
from pld.fleet.index import ChannelIndex, IndexEntry, KeyRole, KeySet, check_index
from pld.fleet.keys import SigningKey
from pld.fleet.signed import sign_document
from pld.fleet.store import Store
from pld.runtime import load_bundle, save_bundle, shipped_bundles

NOW = dt.datetime.now(dt.UTC)
A, C = SigningKey.generate(), SigningKey.generate()  # a single key; an attacker's
R1, R2 = SigningKey.generate(), SigningKey.generate()  # root keys (offline, 2 of 2)
I1, I2 = SigningKey.generate(), SigningKey.generate()  # index keys (the CI job's)


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: what a refusal must leave as it was."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def envelope_payload(data: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(data)["payload"]))


def with_payload(data: bytes, payload: dict) -> bytes:
    """The envelope ``data`` with another payload and its old signatures (a hand edit)."""
    env = json.loads(data)
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(env).encode()


def index(version: int, *keys: SigningKey, tasks: dict | None = None, channel="stable") -> bytes:
    """A signed channel index (no task unless given), as a publisher writes it."""
    doc = ChannelIndex(type="pld-channel-index", channel=channel, version=version,
                       published=NOW.isoformat(), expires=(NOW + dt.timedelta(days=3)).isoformat(),
                       tasks=tasks or {})  # fmt: skip
    return sign_document(msgspec.json.encode(doc), list(keys))


# ---- 1. the publisher signs only what it verified ---------------------------------------------


def _add_task(data: bytes) -> bytes:
    payload = envelope_payload(data)
    evil = dict(payload["tasks"]["stereoset"], name="evil", sha256="e" * 64)
    payload["tasks"]["evil"] = evil
    return with_payload(data, payload)


def _change_sha(data: bytes) -> bytes:
    payload = envelope_payload(data)
    payload["tasks"]["stereoset"]["sha256"] = "0" * 64
    return with_payload(data, payload)


def _resign(data: bytes) -> bytes:  # a well-formed index signed by a key nobody trusts
    payload = envelope_payload(data)
    payload["tasks"]["evil"] = dict(payload["tasks"]["stereoset"], name="evil")
    return sign_document(json.dumps(payload).encode(), [C])


@pytest.mark.parametrize("tamper", [_add_task, _change_sha, _resign])
def test_publish_refuses_a_tampered_index_and_writes_nothing(tmp_path: Path, tamper) -> None:
    dest = tmp_path / "pub"
    publish(["stereoset"], dest, channel="stable", keys=[A])
    path = dest / "channels/stable/index.json"
    path.write_bytes(tamper(path.read_bytes()))
    before = files(dest)
    with pytest.raises(FleetError, match=r"refusing to publish: .*channels/stable/index\.json"):
        publish(["logiqa"], dest, channel="stable", keys=[A])
    assert files(dest) == before
    # the publisher that restores its own copy publishes again, carrying only what it signed
    path.write_bytes((dest / "channels/stable/index-1.json").read_bytes())
    publish(["logiqa"], dest, channel="stable", keys=[A])
    tasks = envelope_payload(path.read_bytes())["tasks"]
    assert sorted(tasks) == ["logiqa", "stereoset"]


def test_publish_refuses_a_tampered_key_set(tmp_path: Path) -> None:
    dest = tmp_path / "pub"
    rotate_keys(dest, current_keys=[R1, R2], index_keys=[I1.public], threshold=2)
    publish(["stereoset"], dest, channel="stable", keys=[I1], root_keys=[R1.public, R2.public])
    # someone with write access to the bucket adds their key to the index role
    forged = KeySet(type="pld-keyset", version=2, threshold=1, keys={C.keyid: C.public.text()},
                    index=KeyRole(threshold=1, keys={I1.keyid: I1.public.text(),
                                                     C.keyid: C.public.text()}))  # fmt: skip
    (dest / "keys.json").write_bytes(sign_document(msgspec.json.encode(forged), [C]))
    (dest / "channels/stable/index.json").write_bytes(
        _resign((dest / "channels/stable/index.json").read_bytes())
    )
    before = files(dest)
    with pytest.raises(FleetError, match=r"keys\.json does not verify against the root keys"):
        publish(["logiqa"], dest, channel="stable", keys=[I1], root_keys=[R1.public, R2.public])
    assert files(dest) == before


def test_a_role_separated_publisher_needs_the_root_public_keys(tmp_path: Path) -> None:
    dest = tmp_path / "pub"
    rotate_keys(dest, current_keys=[R1, R2], index_keys=[I1.public], threshold=2)
    with pytest.raises(FleetError, match="--root-pub"):
        publish(["stereoset"], dest, channel="stable", keys=[I1])  # an index key signs no keys
    with pytest.raises(FleetError, match="index keys .* 0 of the keys given"):
        publish(["stereoset"], dest, channel="stable", keys=[R1], root_keys=[R1.public])


def test_an_index_rotation_carries_forward_unless_root_reset_the_floors(tmp_path: Path) -> None:
    dest, roots = tmp_path / "pub", [R1.public, R2.public]
    rotate_keys(dest, current_keys=[R1, R2], index_keys=[I1.public], threshold=2)
    publish(["stereoset"], dest, channel="stable", keys=[I1], root_keys=roots)
    ks = rotate_keys(dest, current_keys=[R1, R2], index_keys=[I2.public])
    assert ks.previous_index is not None and list(ks.previous_index.keys) == [I1.keyid]
    publish(["logiqa"], dest, channel="stable", keys=[I2], root_keys=roots)  # I1's index verified
    assert sorted(envelope_payload(Store(dest).read("channels/stable/index.json"))["tasks"]) == [
        "logiqa",
        "stereoset",
    ]
    ks = rotate_keys(dest, current_keys=[R1, R2], index_keys=[I1.public], reset_versions=True)
    assert ks.floors_reset == ks.version == 3 and ks.previous_index is None
    with pytest.raises(FleetError, match="--no-carry"):
        publish(["logiqa"], dest, channel="stable", keys=[I1], root_keys=roots)
    done = publish(["logiqa"], dest, channel="stable", keys=[I1], root_keys=roots, carry=False)
    assert done.version == 3
    assert list(envelope_payload(Store(dest).read("channels/stable/index.json"))["tasks"]) == [
        "logiqa"
    ]


# ---- 2. root keys sign key sets, index keys sign indexes; root can reset floors ---------------


def role_device(tmp_path: Path) -> tuple[Path, Path]:
    """A store whose keys.json (root R1+R2, 2 of 2; index I1) a device took with its index v1."""
    pub, dev = tmp_path / "pub", tmp_path / "dev"
    rotate_keys(pub, current_keys=[R1, R2], index_keys=[I1.public], threshold=2)
    Store(pub).write("channels/stable/index.json", index(1, I1))
    result = pull(pub, dev, trusted_keys=[R1.public, R2.public], threshold=2)
    assert result.keys_rotated and result.index_version == 1
    st = status(dev)
    assert st.keyids == sorted([R1.keyid, R2.keyid]) and st.index_keyids == [I1.keyid]
    return pub, dev


def test_a_key_set_signed_by_index_keys_alone_is_refused(tmp_path: Path) -> None:
    pub, dev = role_device(tmp_path)
    trusted = (dev / "trusted.json").read_bytes()
    # a thief with the index key makes themselves root
    stolen = KeySet(type="pld-keyset", version=2, threshold=1, keys={I1.keyid: I1.public.text()},
                    index=KeyRole(threshold=1, keys={C.keyid: C.public.text()}))  # fmt: skip
    Store(pub).write("keys.json", sign_document(msgspec.json.encode(stolen), [I1]))
    Store(pub).write("channels/stable/index.json", index(2, C))
    with pytest.raises(
        FleetError, match=f"refusing the published key set.*untrusted key {I1.keyid}"
    ):
        pull(pub, dev)
    assert (dev / "trusted.json").read_bytes() == trusted
    # and root keys do not sign indexes once root names index keys
    Store(pub).write("keys.json", Store(pub).read("keys-1.json"))
    Store(pub).write("channels/stable/index.json", index(2, R1, R2))
    with pytest.raises(FleetError, match=f"signed by untrusted key {R1.keyid}"):
        pull(pub, dev)
    assert (dev / "trusted.json").read_bytes() == trusted


def test_a_root_signed_floor_reset_moves_a_device_past_a_stolen_high_version(
    tmp_path: Path,
) -> None:
    pub, dev = role_device(tmp_path)
    store = Store(pub)
    store.write("channels/stable/index.json", index(10**12, I1))  # the thief's, with I1
    assert pull(pub, dev).index_version == 10**12  # I1 is trusted: the device takes it
    store.write("channels/stable/index.json", index(2, I2))
    # a rotation without a reset revokes I1, but the floor stays: the device is frozen
    rotate_keys(pub, current_keys=[R1, R2], index_keys=[I2.public])
    with pytest.raises(RejectedError, match=f"older than version {10**12}"):
        pull(pub, dev)
    # root resets the floors: the next honest index goes through, the thief's is refused
    rotate_keys(pub, current_keys=[R1, R2], reset_versions=True)
    store.write("channels/stable/index.json", index(10**12 + 1, I1))
    with pytest.raises(FleetError, match=f"signed by untrusted key {I1.keyid}"):
        pull(pub, dev)
    store.write("channels/stable/index.json", index(2, I2))
    result = pull(pub, dev)
    assert result.index_version == 2 and result.key_version == 3
    assert status(dev).channels == {"stable": 2}
    # a floor again from now on: an older index is refused, once reset is not reset again
    store.write("channels/stable/index.json", index(1, I2))
    with pytest.raises(RejectedError, match="older than version 2"):
        pull(pub, dev)


def test_the_single_key_flow_still_works(tmp_path: Path) -> None:
    """One key given with --trusted-key holds both roles until root names index keys."""
    pub, dev = tmp_path / "pub", tmp_path / "dev"
    Store(pub).write("channels/stable/index.json", index(1, A))
    pull(pub, dev, trusted_keys=[A.public])
    rotate_keys(pub, current_keys=[A], index_keys=[I1.public])  # A stays root
    Store(pub).write("channels/stable/index.json", index(2, A))
    with pytest.raises(FleetError, match=f"signed by untrusted key {A.keyid}"):
        pull(pub, dev)
    Store(pub).write("channels/stable/index.json", index(2, I1))
    assert pull(pub, dev).index_version == 2


def test_check_index_requires_a_student_sha256_and_a_plain_model_name() -> None:
    base = dict(file="bundles/" + "a" * 64 + ".pld.json", name="s", version="1", length=1,
                sha256="a" * 64, student_model="gemma-3-270m", student_sha256="b" * 64)  # fmt: skip

    def payload(**change: object) -> bytes:
        entry = IndexEntry(**{**base, **change})  # type: ignore[arg-type]
        return json.dumps(envelope_payload(index(1, A, tasks={"s": entry}))).encode()

    assert check_index(payload(), channel="stable", now=NOW).tasks["s"].student_sha256
    with pytest.raises(RejectedError, match="carries no student model sha256"):
        check_index(payload(student_sha256=None), channel="stable", now=NOW)
    for name in ("../../etc/model", "/abs/model.gguf", "models\\x.gguf", "a..b"):
        with pytest.raises(RejectedError, match="looks like a path"):
            check_index(payload(student_model=name), channel="stable", now=NOW)


def test_names_and_hashes_must_match_whole(tmp_path: Path) -> None:
    from pld.fleet.device import check_name
    from pld.fleet.publish_store import channel_dir

    for bad in ("stable\n", "stereoset\n"):
        with pytest.raises(FleetError, match="not allowed"):
            check_name(bad, "task")
        with pytest.raises(FleetError, match="not allowed"):
            channel_dir(bad)
    with pytest.raises(FleetError, match="not a hex sha256"):
        DeviceDir(tmp_path).object_path("a" * 64 + "\n")


def test_publish_refuses_a_bundle_without_a_student_sha256(tmp_path: Path) -> None:
    raw = json.loads(shipped_bundles()["stereoset"].read_text())
    raw["student"]["sha256"] = None
    raw.pop("digest", None)
    path = tmp_path / "b.pld.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PldError, match="student model sha256"):
        publish([path], tmp_path / "pub", channel="stable", keys=[A])
    assert not (tmp_path / "pub").exists()


def test_the_role_separated_flow_from_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pld.cli import app

    run = CliRunner().invoke
    k = tmp_path / "k"
    for folder, role in (("r1", "root"), ("r2", "root"), ("ix", "index")):
        out = run(app, ["keys", "generate", "--out", str(k / folder), "--role", role])
        assert out.exit_code == 0, out.output
        assert (k / folder / f"{role}.key").is_file() and f"{role}.pub" in out.stdout
    dest = str(tmp_path / "pub")
    roots = ["--key", str(k / "r1/root.key"), "--key", str(k / "r2/root.key")]
    out = run(app, ["keys", "rotate", "--to", dest, *roots, "--threshold", "2",
                    "--index-key", str(k / "ix/index.pub")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "index " + SigningKey.load(k / "ix/index.key").keyid in out.stdout
    publish_args = ["bundle", "publish", "stereoset", "--to", dest, "--channel", "stable",
                    "--key", str(k / "ix/index.key")]  # fmt: skip
    out = run(app, publish_args)
    assert isinstance(out.exception, FleetError) and "--root-pub" in str(out.exception)
    pubs = ["--root-pub", str(k / "r1/root.pub"), "--root-pub", str(k / "r2/root.pub")]
    out = run(app, [*publish_args, *pubs])
    assert out.exit_code == 0, out.output
    out = run(app, ["keys", "rotate", "--to", dest, *roots, "--reset-versions"])
    assert out.exit_code == 0 and "version floors reset" in out.stdout
    out = run(app, [*publish_args, *pubs, "--no-carry"])
    assert out.exit_code == 0, out.output
    assert run(app, ["keys", "generate", "--out", str(k / "x"), "--role", "boss"]).exit_code != 0


# ---- 3. a store that stalls fails the pull within its deadline, and frees the lock -----------


def hand_device(d: Path) -> dict[str, bytes]:
    """A device directory running stereoset 0.1.0 (index v1), laid out without priming;
    returns what a refused pull must leave byte-identical."""
    data = shipped_bundles()["stereoset"].read_bytes()
    sha, dev = hashlib.sha256(data).hexdigest(), DeviceDir(d)
    d.mkdir()
    (d / "staged").write_bytes(data)
    dev.add_object(d / "staged", sha)
    state = ChannelState(version=1, sha256="0" * 64)
    entry = ActiveEntry(name="stereoset", version="0.1.0", sha256=sha, length=len(data),
                        channel="stable", index_version=1, student_model="gemma-3-270m",
                        activated_at=NOW.isoformat())  # fmt: skip
    dev.activate(Manifest(generation=1, reason="pull", channel="stable", index_version=1,
                          activated_at=NOW.isoformat(), tasks={"stereoset": entry},
                          channels={"stable": state}))  # fmt: skip
    keys = TrustedKeySet(version=0, threshold=1, keys={A.keyid: A.public.text()})
    dev.write_trusted(TrustedState(keyset=keys, channels={"stable": state}))
    return {**{p.name: p.read_bytes() for p in (d / "current").iterdir()},
            "trusted.json": (d / "trusted.json").read_bytes()}  # fmt: skip


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 offering stereoset 0.2.0 in index v2, whose bundle
    requests ``mode[0]``: "stall" (headers, then nothing) or "drip" (a byte every 0.2 s)."""
    www, mode = tmp_path / "www", ["stall"]
    new = load_bundle(shipped_bundles()["stereoset"])
    data = save_bundle(msgspec.structs.replace(new, version="0.2.0"), tmp_path / "new.pld.json")
    raw = data.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    (www / "bundles").mkdir(parents=True)
    (www / f"bundles/{sha}.pld.json").write_bytes(raw)
    entry = IndexEntry(file=f"bundles/{sha}.pld.json", name="stereoset", version="0.2.0",
                       length=len(raw), sha256=sha, student_model=new.student.model,
                       student_sha256=new.student.sha256)  # fmt: skip
    (www / "channels/stable").mkdir(parents=True)
    (www / "channels/stable/index.json").write_bytes(index(2, A, tasks={"stereoset": entry}))
    stop = threading.Event()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.startswith("/bundles/"):
                return super().do_GET()
            self.send_response(200)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(raw)):
                if stop.wait(0.2 if mode[0] == "drip" else 30):
                    return
                try:
                    self.wfile.write(raw[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", mode
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("mode", "limits", "named"),
    [
        ("stall", {"request_timeout": 1.0, "pull_timeout": 60.0}, "--request-timeout"),
        ("drip", {"request_timeout": 60.0, "pull_timeout": 1.5}, "--pull-timeout"),
    ],
)
def test_a_stalling_store_fails_the_pull_within_its_deadline(
    tmp_path: Path, stalling, mode: str, limits: dict[str, float], named: str
) -> None:
    url, server_mode = stalling
    server_mode[0] = mode
    d = tmp_path / "dev"
    before = hand_device(d)
    t0 = time.monotonic()
    with pytest.raises(DeadlineError, match=named) as err:
        pull(url, d, **limits)  # type: ignore[arg-type]
    spent = time.monotonic() - t0
    # the other limit is 60 s: well under it is the deadline working (slack for a loaded machine)
    assert spent < min(limits.values()) + 15, spent
    assert "bundles/" in str(err.value) and "untouched" in str(err.value)
    after = {p.name: p.read_bytes() for p in (d / "current").iterdir()}
    assert after | {"trusted.json": (d / "trusted.json").read_bytes()} == before
    assert status(d).tasks[0].version == "0.1.0"
    assert not (d / "staging").exists()
    with DeviceDir(d).lock("pull"):  # released: a second pull could start at once
        pass


# ---- 5. small ones: the lock file, durable writes -------------------------------------------


def test_the_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    d, victim = tmp_path / "dev", tmp_path / "victim"
    d.mkdir()
    victim.write_bytes(b"precious")
    (d / "lock").symlink_to(victim)
    with pytest.raises(FleetError, match="is a symbolic link"):
        with DeviceDir(d).lock("pull"):
            pass
    assert victim.read_bytes() == b"precious"


def test_trusted_state_and_key_sets_are_written_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory is fsynced after the rename: the new file survives a power cut."""
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    keys = TrustedKeySet(version=0, threshold=1, keys={A.keyid: A.public.text()})
    DeviceDir(tmp_path / "dev").write_trusted(TrustedState(keyset=keys))
    assert synced == ["file", "dir"]
    synced.clear()
    rotate_keys(tmp_path / "pub", current_keys=[A], new_keys=[C])  # keys-1.json and keys.json
    assert synced == ["file", "dir", "file", "dir"]

"""The device side of pld.fleet: `pld device pull|status|rollback` and `pld classify --device-dir`
with real keys, the real model, a real HTTP server on 127.0.0.1, fsspec's memory store.

Every refusal leaves the active bundle files and trusted state byte-identical and names the
problem. Publications are written here file by file (``Pub``), so the bad ones can be crafted.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import FleetError, ModelMismatchError, PldError, PullLockedError
from pld.fleet import DeviceDir, pull, rollback, status
from pld.fleet.index import ChannelIndex, IndexEntry, KeySet
from pld.fleet.keys import SigningKey
from pld.fleet.signed import sign_document
from pld.fleet.store import Store
from pld.runtime import Classifier, load_bundle, shipped_bundles
from pld.runtime.bundle import bundle_digest, file_bytes

pytestmark = pytest.mark.model  # the base device primes the real model once per module
runner = CliRunner()
A, B, C = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
NOW = dt.datetime.now(dt.UTC)
TEXT = "Target: chess player\nContext: The chess player was BLANK.\nSentence: The chess player was hispanic."


def bundle_bytes(
    name: str = "stereoset",
    version: str = "0.1.0",
    provenance: dict | None = None,
    **student: object,
) -> bytes:
    """A shipped bundle as a file's bytes, with another version (provenance, student) if asked."""
    b = load_bundle(shipped_bundles()[name])
    b = msgspec.structs.replace(b, version=version, provenance=provenance or b.provenance)
    if student:
        b = msgspec.structs.replace(b, student=msgspec.structs.replace(b.student, **student))
    b = msgspec.structs.replace(b, digest=bundle_digest(b))
    return file_bytes(b)


def entry(data: bytes) -> IndexEntry:
    b, sha = msgspec.json.decode(data), hashlib.sha256(data).hexdigest()
    return IndexEntry(file=f"bundles/{sha}.pld.json", name=b["name"], version=b["version"],
                      length=len(data), sha256=sha, student_model=b["student"]["model"],
                      student_sha256=b["student"]["sha256"])  # fmt: skip


class Pub:
    """A publication laid out as the publisher writes it, signed with real keys."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.store = Store(url)

    def index(self, tasks: dict[str, bytes | IndexEntry], version: int, *, keys=(A,),
              channel: str = "stable", path_channel: str | None = None,
              expires: dt.timedelta = dt.timedelta(days=30)) -> bytes:  # fmt: skip
        """Write the bundles and a signed index of ``tasks``; returns the envelope."""
        entries = {}
        for task, item in tasks.items():
            e = item if isinstance(item, IndexEntry) else entry(item)
            if not isinstance(item, IndexEntry):
                self.store.write(e.file, item)
            entries[task] = e
        index = ChannelIndex(type="pld-channel-index", channel=channel, version=version,
                             published=NOW.isoformat(), expires=(NOW + expires).isoformat(),
                             tasks=entries)  # fmt: skip
        env = sign_document(msgspec.json.encode(index), list(keys)) if keys else b""
        self.raw(f"channels/{path_channel or channel}/index.json", env)
        return env

    def keys(self, keyset: KeySet, signers: list[SigningKey], name: str = "keys.json") -> None:
        self.raw(name, sign_document(msgspec.json.encode(keyset), signers))

    def raw(self, rel: str, data: bytes) -> None:
        self.store.write(rel, data)


def keyset(version: int, *keys: SigningKey, threshold: int = 1) -> KeySet:
    return KeySet(type="pld-keyset", version=version, threshold=threshold,
                  keys={k.keyid: k.public.text() for k in keys})  # fmt: skip


def snapshot(d: Path) -> dict[str, bytes]:
    """What must not change on a refusal: the active files and trusted state."""
    files = {p.name: p.read_bytes() for p in (d / "current").iterdir()}
    return files | {"trusted.json": (d / "trusted.json").read_bytes()}


def version_of(d: Path, task: str = "stereoset") -> str:
    return next(t.version for t in status(d).tasks if t.task == task)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A publication (index v1: stereoset 0.1.0) and a device directory that pulled it."""
    root = tmp_path_factory.mktemp("base")
    Pub(root / "pub").index({"stereoset": bundle_bytes()}, 1)
    pull(root / "pub", root / "dev", trusted_keys=[A.public])
    return root / "pub", root / "dev"


@pytest.fixture
def dev(base: tuple[Path, Path], tmp_path: Path) -> tuple[Pub, Path]:
    """A fresh copy of the base publication and device."""
    shutil.copytree(base[0], tmp_path / "pub")
    shutil.copytree(base[1], tmp_path / "dev", symlinks=True)
    return Pub(tmp_path / "pub"), tmp_path / "dev"


@pytest.fixture
def http_pub(tmp_path: Path) -> Iterator[tuple[Path, str, list[int]]]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``; bundles get ``extra[0]``
    bytes more than the file has (0: an honest server)."""
    www, extra = tmp_path / "www", [0]
    www.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.startswith("/bundles/") or not extra[0]:
                return super().do_GET()
            data = (www / self.path.lstrip("/")).read_bytes() + b" " * extra[0]
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/", extra
    server.shutdown()
    server.server_close()


# ---- refusals: each leaves the active bundles byte-identical ---------------------------------


def _unsigned(p: Pub) -> None:
    p.index({"stereoset": bundle_bytes(version="0.2.0")}, 2, keys=())
    p.raw("channels/stable/index.json", b'{"type": "pld-channel-index", "version": 2}')


def _no_signature(p: Pub) -> None:
    env = msgspec.json.decode(p.index({"stereoset": bundle_bytes(version="0.2.0")}, 2))
    p.raw("channels/stable/index.json", msgspec.json.encode(env | {"signatures": []}))


def _bad_signature(p: Pub) -> None:
    env = msgspec.json.decode(p.index({"stereoset": bundle_bytes(version="0.2.0")}, 2))
    other = msgspec.json.decode(p.index({}, 9))
    p.raw("channels/stable/index.json", msgspec.json.encode(env | {"signatures": other["signatures"]}))  # fmt: skip


def _old_index(p: Pub) -> None:  # the device trusts v2 (see test_refusals); serve its v1
    p.raw("channels/stable/index.json", (p.store.read("channels/stable/index-1.json")))


def _bad_bytes(p: Pub, data: bytes) -> None:
    e = entry(bundle_bytes(version="0.2.0"))
    p.raw(e.file, data)
    p.index({"stereoset": e}, 3)


REFUSALS = {
    "unsigned": (_unsigned, "not a signed envelope"),
    "no-signature": (_no_signature, "carries no signature"),
    "bad-signature": (_bad_signature, "bad signature by trusted key"),
    "unknown-key": (
        lambda p: p.index({"stereoset": bundle_bytes(version="0.2.0")}, 2, keys=(B,)),
        f"signed by untrusted key {B.keyid}",
    ),  # fmt: skip
    "other-channel": (
        lambda p: p.index({}, 2, channel="canary", path_channel="stable"),
        "is for channel 'canary', not 'stable'",
    ),  # fmt: skip
    "rollback-attack": (_old_index, "has version 1, older than version 2"),
    "same-version-other-content": (
        lambda p: p.index({"stereoset": bundle_bytes(version="0.3.0")}, 2),
        "the version this device trusts, but different content",
    ),  # fmt: skip
    "length": (
        lambda p: _bad_bytes(p, bundle_bytes(version="0.2.0")[:-9]),
        "has 2283 bytes where the index says 2292",
    ),  # fmt: skip
    "sha256": (
        lambda p: _bad_bytes(p, bundle_bytes(version="0.2.1")),
        "refusing it (a tampered file)",
    ),
    # mix-and-match: a file really published before (0.1.0) served under the name of 0.2.0
    "mix-and-match": (lambda p: _bad_bytes(p, bundle_bytes()), "refusing it (a tampered file)"),
    "another-tasks-file": (
        lambda p: _bad_bytes(p, bundle_bytes("logiqa")),
        "where the index says 2292",
    ),
    "model-mismatch": (
        lambda p: p.index({"stereoset": bundle_bytes(version="0.2.0", sha256="ab" * 32)}, 3),
        "was validated with model file sha256 abababababab",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_leave_the_active_bundle_byte_identical(dev: tuple[Pub, Path], case: str) -> None:
    pub, d = dev
    pub.raw("channels/stable/index-1.json", pub.store.read("channels/stable/index.json"))
    pub.index({"stereoset": bundle_bytes()}, 2)  # same tasks, newer index: trusted v2
    assert pull(pub.url, d).unchanged == ["stereoset"]
    before = snapshot(d)
    make, message = REFUSALS[case]
    make(pub)
    with pytest.raises(PldError) as err:
        pull(pub.url, d, trusted_keys=[B.public])  # an extra key never widens a stored set
    assert message in str(err.value)
    assert snapshot(d) == before and version_of(d) == "0.1.0"
    assert not (d / "staging").exists() and not (d / "current.tmp").exists()
    if case == "model-mismatch":
        assert isinstance(err.value, ModelMismatchError)


def test_an_expired_index_names_both_times(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    before = snapshot(d)
    pub.index({"stereoset": bundle_bytes(version="0.2.0")}, 2, expires=dt.timedelta(hours=-1))
    with pytest.raises(FleetError, match="expired at") as err:
        pull(pub.url, d, now=NOW)
    expiry = (NOW - dt.timedelta(hours=1)).isoformat()
    assert expiry in str(err.value) and NOW.isoformat() in str(err.value)
    assert snapshot(d) == before


def test_unnamed_bundle_files_are_never_fetched(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    stray = bundle_bytes(version="9.9.9")
    pub.raw(entry(stray).file, stray)  # valid, but no index names it
    assert pull(pub.url, d).unchanged == ["stereoset"]
    assert not DeviceDir(d).object_path(entry(stray).sha256).exists()
    assert version_of(d) == "0.1.0"


def test_a_server_sending_more_bytes_is_cut_off(dev: tuple[Pub, Path], http_pub) -> None:
    pub, d = dev
    www, url, extra = http_pub
    Pub(www).index({"stereoset": bundle_bytes(version="0.2.0")}, 2)
    before = snapshot(d)
    extra[0] = 10_000
    with pytest.raises(FleetError, match="sent more than the 2292 bytes the index says"):
        pull(url, d)
    assert snapshot(d) == before
    extra[0] = 0
    assert pull(url, d).changed[0].new_version == "0.2.0"  # the same store, honest again


def test_model_mismatch_is_allowed_when_asked_and_recorded(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    pub.index({"stereoset": bundle_bytes(version="0.2.0", sha256="ab" * 32)}, 2)
    with pytest.raises(ModelMismatchError, match="--allow-model-mismatch"):
        pull(pub.url, d)
    result = pull(pub.url, d, allow_model_mismatch=True)
    assert result.changed[0].allow_model_mismatch
    (st,) = status(d).tasks
    assert (st.version, st.allow_model_mismatch) == ("0.2.0", True)
    with pytest.warns(UserWarning, match="is not the one bundle 'stereoset' was validated with"):
        clf = Classifier.open("stereoset", device_dir=d)  # the runtime follows the record
    with clf:
        assert clf.bundle.version == "0.2.0" and clf.restore_ms is not None


# ---- pulls from every kind of store, status, rollback, classify -----------------------------


def test_pull_over_http_and_memory_then_status_rollback_and_classify(
    dev: tuple[Pub, Path], http_pub
) -> None:
    _, d = dev
    www, url, _ = http_pub
    Pub(www).index({"stereoset": bundle_bytes(version="0.2.0")}, 2)
    result = pull(url, d)
    assert [(c.task, c.old_version, c.new_version) for c in result.changed] == [
        ("stereoset", "0.1.0", "0.2.0")
    ]
    t = result.timings
    assert t.total_ms >= t.fetch_ms + t.verify_ms + t.prime_ms + t.activate_ms > 0
    mem = Pub(f"memory://pub-{uuid.uuid4().hex}")
    mem.index({"stereoset": bundle_bytes(version="0.3.0"), "logiqa": bundle_bytes("logiqa")}, 3)
    assert {c.task: c.new_version for c in pull(mem.url, d).changed} == {
        "stereoset": "0.3.0",
        "logiqa": "0.1.0",
    }
    st = {s.task: s for s in status(d).tasks}
    assert (st["stereoset"].version, st["stereoset"].index_version) == ("0.3.0", 3)
    assert st["stereoset"].last_known_good and st["stereoset"].last_known_good.version == "0.2.0"
    assert st["logiqa"].last_known_good is None
    # the prefix was primed before the switch: the first classifier restores it
    with Classifier.open("stereoset", device_dir=d) as clf:
        assert clf.restore_ms is not None and clf.prime_ms is None
        # a device keeps every task's state: the default LRU of 8 would prune active ones
        assert clf.options.states_kept >= 256
    out = runner.invoke(app, ["classify", "--device-dir", str(d), "--task", "stereoset", TEXT])
    assert out.exit_code == 0, out.output
    assert msgspec.json.decode(out.output.splitlines()[-1])["label"] in clf.labels

    out = runner.invoke(app, ["device", "rollback", "--device-dir", str(d), "--task", "stereoset"])
    assert out.exit_code == 0, out.output
    assert "stereoset: 0.3.0 -> 0.2.0 (rolled back)" in out.output
    assert version_of(d) == "0.2.0" and version_of(d, "logiqa") == "0.1.0"
    assert pull(mem.url, d).held == ["stereoset"]  # the index still names 0.3.0: left alone
    assert version_of(d) == "0.2.0"
    out = runner.invoke(app, ["device", "status", "--device-dir", str(d)])
    assert "rolled back" in out.output and msgspec.json.decode(out.output.splitlines()[-1])
    with pytest.raises(FleetError, match="nothing to roll back to for task 'stereoset'"):
        rollback(d, "stereoset")
    with pytest.raises(FleetError, match="no such task 'nope'"):
        rollback(d, "nope")
    (d.parent / "empty").mkdir()
    with pytest.raises(FleetError, match="no active bundle"):
        rollback(d.parent / "empty")
    mem.index({"stereoset": bundle_bytes(version="0.4.0")}, 4)  # a new publication moves it on
    result = pull(mem.url, d)
    assert result.changed[0].new_version == "0.4.0"
    assert result.removed == ["logiqa"]  # the channel's index no longer names it
    assert sorted(p.name for p in (d / "generations").iterdir()) == ["4", "5"]


def test_pull_cli_prints_changes_then_json(dev: tuple[Pub, Path], tmp_path: Path) -> None:
    pub, d = dev
    (tmp_path / "a.pub").write_bytes(A.public.pem())
    pub.index({"stereoset": bundle_bytes()}, 2)
    args = ["device", "pull", "--from", pub.url, "--device-dir", str(d)]
    out = runner.invoke(app, [*args, "--trusted-key", str(tmp_path / "a.pub")])
    assert out.exit_code == 0, out.output
    assert "up to date" in out.output
    assert msgspec.json.decode(out.output.splitlines()[-1])["index_version"] == 2
    out = runner.invoke(
        app, ["device", "pull", "--from", pub.url, "--device-dir", str(tmp_path / "new")]
    )
    assert out.exit_code != 0 and "trusts no key yet" in str(out.exception)


# ---- keys: threshold, rotation ----------------------------------------------------------------


def test_threshold_two_of_two(tmp_path: Path) -> None:
    pub, d = Pub(tmp_path / "pub"), tmp_path / "dev"
    pub.index({}, 1, keys=(A, B))
    keys = [A.public, B.public]
    pull(pub.url, d, trusted_keys=keys, threshold=2)
    assert status(d).threshold == 2
    pub.index({}, 2, keys=(A,))
    with pytest.raises(FleetError, match=r"1 valid signature\(s\) from trusted keys, 2 required"):
        pull(pub.url, d)
    pub.index({}, 2, keys=(A, B))
    assert pull(pub.url, d).index_version == 2


def test_key_rotation(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    same = {"stereoset": bundle_bytes()}
    pub.keys(keyset(1, B), [B])  # not signed by the key the device trusts: refused
    pub.index(same, 2, keys=(B,))
    with pytest.raises(FleetError, match="refusing the published key set"):
        pull(pub.url, d)
    pub.keys(keyset(1, B), [A])  # not signed by the keys it names: refused
    with pytest.raises(FleetError, match="signed by the keys it names"):
        pull(pub.url, d)
    assert status(d).keyids == [A.keyid]
    pub.keys(keyset(1, B), [A, B])  # the rotation: old and new sign the new set
    result = pull(pub.url, d)
    assert result.keys_rotated and status(d).keyids == [B.keyid]
    pub.index(same, 3, keys=(A,))  # the old key alone is no longer enough
    with pytest.raises(FleetError, match=f"signed by untrusted key {A.keyid}"):
        pull(pub.url, d)
    pub.index(same, 3, keys=(B,))
    assert pull(pub.url, d).index_version == 3


def test_a_device_that_missed_two_rotations_catches_up(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    pub.keys(keyset(1, B), [A, B], "keys-1.json")
    pub.keys(keyset(2, C), [B, C], "keys-2.json")
    pub.keys(keyset(2, C), [B, C])
    pub.index({"stereoset": bundle_bytes()}, 2, keys=(C,))
    assert pull(pub.url, d).key_version == 2 and status(d).keyids == [C.keyid]


def test_a_second_pull_fails_at_once(dev: tuple[Pub, Path]) -> None:
    pub, d = dev
    with DeviceDir(d).lock("pull"):
        with pytest.raises(PullLockedError, match=rf"another pull is running on {d} \(pid \d+\)"):
            pull(pub.url, d)


def test_what_the_publisher_writes_a_device_pulls(tmp_path: Path) -> None:
    from pld.fleet import publish, rotate_keys

    pub, d = tmp_path / "pub", tmp_path / "dev"
    publish(["stereoset"], pub, channel="stable", keys=[A])
    assert pull(pub, d, trusted_keys=[A.public]).changed[0].new_version == "0.1.0"
    rotate_keys(pub, current_keys=[A], new_keys=[B])
    publish(["logiqa"], pub, channel="stable", keys=[B])
    result = pull(pub, d)
    assert result.keys_rotated and [c.task for c in result.changed] == ["logiqa"]
    assert result.unchanged == ["stereoset"] and status(d).keyids == [B.keyid]

"""The publisher's side of pld.fleet: keys, detached bundle signatures, signed channel indexes,
key rotation, the CLI, and the pure checks a device runs on what is published."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import BundleError, FleetError, RejectedError, SignatureError
from pld.fleet.detached import sign_bundle, verify_bundle
from pld.fleet.index import ChannelIndex, IndexEntry, check_index, parse_keyset
from pld.fleet.keys import PublicKey, SigningKey, generate_keys
from pld.fleet.publish_keys import rotate_keys
from pld.fleet.publisher import publish
from pld.fleet.signed import sign_document, verify_document
from pld.fleet.store import Store
from pld.runtime import load_bundle, save_bundle, shipped_bundles

runner = CliRunner()
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
A, B, C = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


def trusted(*keys: SigningKey) -> dict[str, PublicKey]:
    return {k.keyid: k.public for k in keys}


def mem() -> str:
    return f"memory://pub-{uuid.uuid4().hex}"


def variant(tmp_path: Path, name: str, version: str) -> Path:
    """A shipped bundle saved under ``tmp_path`` with another version (so other content)."""
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()[name]), version=version)
    return save_bundle(bundle, tmp_path / f"{name}-{version}.pld.json")


def read_index(
    dest: str | Path, channel: str, *keys: SigningKey, name: str = "index.json"
) -> ChannelIndex:
    data = Store(dest).read(f"channels/{channel}/{name}")
    payload = verify_document(data, trusted(*(keys or (A,))), what="index")
    return check_index(payload, channel=channel, now=NOW)


# ---- keys and detached signatures ----------------------------------------------------------


def test_generate_keys_private_and_no_overwrite(tmp_path: Path) -> None:
    key_path, pub_path, keyid = generate_keys(tmp_path / "k")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert SigningKey.load(key_path).keyid == PublicKey.load(pub_path).keyid == keyid
    before = key_path.read_bytes()
    with pytest.raises(FleetError, match="refusing to overwrite"):
        generate_keys(tmp_path / "k")
    assert key_path.read_bytes() == before


def test_sign_and_verify_bundle(tmp_path: Path) -> None:
    path = tmp_path / "b.pld.json"
    path.write_bytes(shipped_bundles()["logiqa"].read_bytes())
    sig = sign_bundle(path, A)
    assert sig == tmp_path / "b.pld.json.sig"
    assert set(json.loads(sig.read_text())) == {"payload", "signatures"}
    statement = json.loads(verify_document(sig.read_bytes(), trusted(A)))
    assert (statement["name"], statement["version"]) == ("logiqa", "0.1.0")
    assert statement["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_bundle(path, [B.public, A.public]) == A.keyid
    assert verify_bundle(path, [A.public], name="logiqa", version="0.1.0") == A.keyid
    with pytest.raises(SignatureError, match="not the logiqa 0.2.0 asked for"):
        verify_bundle(path, [A.public], version="0.2.0")

    with pytest.raises(SignatureError, match=f"signed by untrusted key {A.keyid}"):
        verify_bundle(path, [B.public])

    # the exact bytes are signed: even another layout of the same content is a changed file
    original = path.read_bytes()
    path.write_text(json.dumps(json.loads(original), indent=1, sort_keys=True))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        verify_bundle(path, [A.public])
    path.write_bytes(original.replace(b'"created_at": "', b'"created_at": "1'))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        verify_bundle(path, [A.public])
    # an older signed file with its own .sig, swapped in, verifies as what it is, no more
    old = variant(tmp_path, "logiqa", "0.0.9")
    sign_bundle(old, A)
    assert verify_bundle(old, [A.public]) == A.keyid
    with pytest.raises(SignatureError, match="not the logiqa 0.1.0 asked for"):
        verify_bundle(old, [A.public], version="0.1.0")

    path.write_bytes(original)
    forged = json.loads(sig.read_text())
    forged["signatures"] = json.loads(
        sign_bundle(variant(tmp_path, "logiqa", "2.0.0"), A).read_text()
    )["signatures"]
    sig.write_text(json.dumps(forged))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_bundle(path, [A.public])
    sig.write_text(json.dumps({"keyid": A.keyid, "sig": "AA==", "digest": "x"}))
    with pytest.raises(SignatureError, match="old-style signature"):
        verify_bundle(path, [A.public])

    sig.unlink()
    with pytest.raises(SignatureError, match="no signature file"):
        verify_bundle(path, [A.public])


# ---- publish ---------------------------------------------------------------------------------


def test_publish_versions_files_and_carry_forward(tmp_path: Path) -> None:
    dest = mem()
    first = publish(["stereoset", "logiqa"], dest, channel="stable", keys=[A], now=NOW)
    assert first.version == 1 and [t.new for t in first.tasks] == [True, True]
    index = read_index(dest, "stable")
    assert sorted(index.tasks) == ["logiqa", "stereoset"]
    source = shipped_bundles()["stereoset"].read_bytes()
    sha = hashlib.sha256(source).hexdigest()
    assert index.tasks["stereoset"] == IndexEntry(
        file=f"bundles/{sha}.pld.json",
        name="stereoset",
        version="0.1.0",
        length=len(source),
        sha256=sha,
        student_model="gemma-3-270m",
        student_sha256=load_bundle(shipped_bundles()["stereoset"]).student.sha256,
    )
    assert Store(dest).read(f"bundles/{sha}.pld.json") == source

    # the same bundle again: its file is left alone, the index still gets a new version
    again = publish(["stereoset"], dest, channel="stable", keys=[A], now=NOW)
    assert again.version == 2 and not again.tasks[0].new
    assert read_index(dest, "stable").tasks == index.tasks

    newer = variant(tmp_path, "stereoset", "0.2.0")
    third = publish([newer], dest, channel="stable", keys=[A], now=NOW)
    assert third.version == 3 and third.tasks[0].new and third.tasks[0].version == "0.2.0"
    latest = read_index(dest, "stable")
    assert latest.tasks["stereoset"].version == "0.2.0"
    assert latest.tasks["logiqa"] == index.tasks["logiqa"]  # carried forward
    store = Store(dest)
    assert store.read("channels/stable/index.json") == store.read("channels/stable/index-3.json")
    assert [read_index(dest, "stable", name=f"index-{v}.json").version for v in (1, 2)] == [1, 2]


def test_other_channel_is_untouched() -> None:
    dest = mem()
    publish(["stereoset"], dest, channel="stable", keys=[A], now=NOW)
    stable = Store(dest).read("channels/stable/index.json")
    canary = publish(["contractnli"], dest, channel="canary", keys=[A], now=NOW)
    assert canary.version == 1
    assert Store(dest).read("channels/stable/index.json") == stable
    assert list(read_index(dest, "canary").tasks) == ["contractnli"]
    with pytest.raises(RejectedError, match="for channel 'canary', not 'stable'"):
        check_index(
            verify_document(Store(dest).read("channels/canary/index.json"), trusted(A)),
            channel="stable",
            now=NOW,
        )


def test_several_keys_sign_and_expiry() -> None:
    dest = mem()
    result = publish(["logiqa"], dest, channel="stable", keys=[A, B, A], now=NOW, expires_in_days=7)
    envelope = json.loads(Store(dest).read("channels/stable/index.json"))
    assert sorted(s["keyid"] for s in envelope["signatures"]) == sorted([A.keyid, B.keyid])
    data = Store(dest).read("channels/stable/index.json")
    verify_document(data, trusted(A, B), threshold=2)
    with pytest.raises(SignatureError, match="1 valid signature"):
        verify_document(data, trusted(A), threshold=2)
    index = read_index(dest, "stable", A, B)
    assert index.published == "2025-06-01T12:00:00+00:00"
    assert index.expires == result.expires == "2025-06-08T12:00:00+00:00"


def test_publish_refusals_write_nothing(tmp_path: Path) -> None:
    dest = mem()
    broken = tmp_path / "broken.pld.json"
    raw = json.loads(shipped_bundles()["stereoset"].read_text())
    raw["system_prompt"] += " (edited by hand)"
    broken.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="system_prompt"):
        publish(["logiqa", broken], dest, channel="stable", keys=[A])
    with pytest.raises(FleetError, match="two bundles for task 'logiqa'"):
        publish(["logiqa", variant(tmp_path, "logiqa", "0.3.0")], dest, channel="stable", keys=[A])
    with pytest.raises(FleetError, match="channel name"):
        publish(["logiqa"], dest, channel="../keys", keys=[A])
    with pytest.raises(FleetError, match="--key"):
        publish(["logiqa"], dest, channel="stable", keys=[])
    with pytest.raises(BundleError, match="no bundle file"):
        publish(["nope"], dest, channel="stable", keys=[A])
    assert not Store(dest).exists("bundles") and not Store(dest).exists("channels")


def test_publish_to_a_directory(tmp_path: Path) -> None:
    dest = tmp_path / "pub"
    result = publish([shipped_bundles()["contractnli"]], dest, channel="stable", keys=[A])
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    sha = result.tasks[0].sha256
    assert files == [
        f"bundles/{sha}.pld.json",
        "channels/stable/index-1.json",
        "channels/stable/index.json",
    ]
    assert (dest / result.tasks[0].file).read_bytes() == shipped_bundles()[
        "contractnli"
    ].read_bytes()
    assert result.index == str(dest / "channels/stable/index.json")
    # a lost index.json never makes the channel start again at version 1
    (dest / "channels/stable/index.json").unlink()
    with pytest.raises(FleetError, match="refusing to overwrite a published version"):
        publish(["contractnli"], dest, channel="stable", keys=[A])


# ---- key rotation ----------------------------------------------------------------------------


def test_rotate_keys() -> None:
    dest = mem()
    keyset = rotate_keys(dest, current_keys=[A], new_keys=[B])
    assert keyset.version == 1 and keyset.keys == {B.keyid: B.public.text()}
    data = Store(dest).read("keys.json")
    # a device checks a threshold of its current keys and of the new ones
    assert parse_keyset(verify_document(data, trusted(A))) == keyset
    assert parse_keyset(verify_document(data, trusted(B))) == keyset
    assert Store(dest).read("keys-1.json") == data

    # the old key alone cannot publish or rotate any more
    with pytest.raises(FleetError, match="0 of the keys given"):
        publish(["logiqa"], dest, channel="stable", keys=[A])
    with pytest.raises(FleetError, match="0 of the keys given"):
        rotate_keys(dest, current_keys=[A], new_keys=[C])
    assert publish(["logiqa"], dest, channel="stable", keys=[B]).version == 1

    second = rotate_keys(dest, current_keys=[B], new_keys=[A, C], threshold=2)
    assert second.version == 2 and second.threshold == 2 and set(second.keys) == {A.keyid, C.keyid}
    signers = json.loads(Store(dest).read("keys.json"))["signatures"]
    assert sorted(s["keyid"] for s in signers) == sorted([A.keyid, B.keyid, C.keyid])
    with pytest.raises(FleetError, match="--threshold 3"):
        rotate_keys(dest, current_keys=[A, C], new_keys=[A, C], threshold=3)


# ---- what a device checks, as pure functions -------------------------------------------------


def index_payload(version: int = 2, channel: str = "stable", days: float = 1) -> bytes:
    index = ChannelIndex(
        type="pld-channel-index",
        channel=channel,
        version=version,
        published=NOW.isoformat(),
        expires=(NOW + dt.timedelta(days=days)).isoformat(),
        tasks={},
    )
    return msgspec.json.encode(index)


def test_verify_document_refusals() -> None:
    payload = index_payload()
    assert verify_document(sign_document(payload, [A]), trusted(A)) == payload
    unsigned = msgspec.json.encode({"payload": "e30=", "signatures": []})
    with pytest.raises(SignatureError, match="no signature"):
        verify_document(unsigned, trusted(A))
    with pytest.raises(SignatureError, match="not a signed envelope"):
        verify_document(payload, trusted(A))
    env = json.loads(sign_document(payload, [A]))
    env["signatures"][0]["sig"] = json.loads(sign_document(b"other", [A]))["signatures"][0]["sig"]
    with pytest.raises(SignatureError, match=f"bad signature by trusted key {A.keyid}"):
        verify_document(json.dumps(env).encode(), trusted(A))
    with pytest.raises(SignatureError, match=f"signed by untrusted key {B.keyid}"):
        verify_document(sign_document(payload, [B]), trusted(A))
    both = sign_document(payload, [A, B])
    assert verify_document(both, trusted(A, B), threshold=2) == payload
    with pytest.raises(SignatureError, match="1 valid signature.*2 required"):
        verify_document(both, trusted(A, C), threshold=2)
    # the same key twice is one signature, not two
    env = json.loads(sign_document(payload, [A]))
    env["signatures"] *= 2
    with pytest.raises(SignatureError, match="2 required"):
        verify_document(json.dumps(env).encode(), trusted(A), threshold=2)


def test_check_index_refusals() -> None:
    payload = index_payload(version=2)
    digest = hashlib.sha256(payload).hexdigest()
    assert check_index(payload, channel="stable", now=NOW).version == 2
    with pytest.raises(RejectedError, match="channel 'canary'"):
        check_index(index_payload(channel="canary"), channel="stable", now=NOW)
    later = NOW + dt.timedelta(days=2)
    with pytest.raises(RejectedError, match="expired") as exc:
        check_index(payload, channel="stable", now=later)
    assert (NOW + dt.timedelta(days=1)).isoformat() in str(exc.value)
    assert later.isoformat() in str(exc.value)
    with pytest.raises(RejectedError, match="older than version 3"):
        check_index(payload, channel="stable", now=NOW, trusted_version=3)
    same = check_index(payload, channel="stable", now=NOW, trusted_version=2, trusted_sha256=digest)
    assert same.version == 2
    with pytest.raises(RejectedError, match="different content"):
        check_index(
            index_payload(version=2, days=5),
            channel="stable",
            now=NOW,
            trusted_version=2,
            trusted_sha256=digest,
        )


# ---- the CLI ---------------------------------------------------------------------------------


def test_cli_in_process(tmp_path: Path) -> None:
    out = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert out.exit_code == 0, out.output
    assert "signing.key" in out.stdout and SigningKey.load(tmp_path / "k/signing.key").keyid in (
        out.stdout
    )
    key, pub = str(tmp_path / "k/signing.key"), str(tmp_path / "k/signing.pub")
    out = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert isinstance(out.exception, FleetError)

    dest = str(tmp_path / "pub")
    args = ["bundle", "publish", "stereoset", "logiqa", "--to", dest, "--channel", "stable"]
    out = runner.invoke(app, [*args, "--key", key, "--expires-in", "2"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("stereoset: stereoset 0.1.0 (new file)")
    last = json.loads(lines[-1])
    assert last["version"] == 1 and [t["task"] for t in last["tasks"]] == ["stereoset", "logiqa"]
    out = runner.invoke(app, [*args, "--key", key])
    assert (
        "(file unchanged)" in out.stdout and json.loads(out.stdout.splitlines()[-1])["version"] == 2
    )
    assert runner.invoke(app, args).exit_code == 2  # --key is required

    bundle = variant(tmp_path, "logiqa", "1.0.0")
    out = runner.invoke(app, ["bundle", "sign", str(bundle), "--key", key])
    assert out.exit_code == 0 and Path(f"{bundle}.sig").is_file()
    out = runner.invoke(app, ["bundle", "verify", str(bundle), "--pubkey", pub])
    assert out.exit_code == 0 and out.stdout.startswith("ok:")

    generate_keys(tmp_path / "k2")
    new = str(tmp_path / "k2/signing.key")
    out = runner.invoke(app, ["keys", "rotate", "--to", dest, "--key", key, "--new-key", new])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.splitlines()[-1])["version"] == 1
    out = runner.invoke(app, [*args, "--key", key])
    assert isinstance(out.exception, FleetError)


def test_cli_subprocess_exit_codes(tmp_path: Path) -> None:
    pld = str(Path(sys.executable).parent / "pld")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([pld, *args], capture_output=True, text=True, timeout=60)

    assert run("keys", "generate", "--out", str(tmp_path / "k")).returncode == 0
    generate_keys(tmp_path / "other")
    bundle = variant(tmp_path, "stereoset", "1.1.0")
    done = run("bundle", "sign", str(bundle), "--key", str(tmp_path / "k/signing.key"))
    assert done.returncode == 0, done.stderr
    done = run("bundle", "verify", str(bundle), "--pubkey", str(tmp_path / "other/signing.pub"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "not trusted" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_package_loads_nothing_heavy_and_names_resolve() -> None:
    code = (
        "import sys, pld.cli, pld.fleet\n"
        "heavy = [m for m in ('cryptography', 'fsspec', 'aiohttp') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import pld.fleet.publisher\n"
        "from pld.fleet import publish\n"
        "assert callable(publish) and publish is pld.fleet.publisher.publish\n"
        "assert list(pld.fleet.__all__) == sorted(pld.fleet.__all__)\n"
        "assert all(getattr(pld.fleet, n) for n in pld.fleet.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # a device without the fleet extra: help works, a fleet command names the install command
    bare = (
        "import sys\n"
        "sys.modules.update(cryptography=None, fsspec=None)\n"
        "from typer.testing import CliRunner\n"
        "from pld.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "out = CliRunner().invoke(app, ['bundle', 'verify', 'b.pld.json', '--pubkey', 'p'])\n"
        "assert \"pip install 'pld[fleet]'\" in str(out.exception), out.exception\n"
    )
    subprocess.run([sys.executable, "-c", bare], check=True, timeout=60)

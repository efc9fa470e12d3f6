"""Micro-benchmarks of signature verification in pld.fleet, with a real ed25519 key generated
in a temporary directory: the raw check, a signed channel index, a detached bundle signature.

No model is loaded; each benchmark calibrates its own rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pld.bench.inputs import default_bundle
from pld.fleet.detached import sign_bundle, verify_bundle
from pld.fleet.keys import PublicKey, SigningKey, generate_keys
from pld.fleet.publisher import publish
from pld.fleet.signed import verify_document
from pld.fleet.store import Store
from pld.runtime import shipped_bundles

pytestmark = pytest.mark.benchmark(group="fleet")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, PublicKey]:
    """A key pair written by ``generate_keys`` and read back, as ``pld keys generate`` does."""
    key_path, pub_path, keyid = generate_keys(tmp_path_factory.mktemp("keys") / "k")
    key, pub = SigningKey.load(key_path), PublicKey.load(pub_path)
    assert key.keyid == pub.keyid == keyid
    return key, pub


def test_verify_raw(benchmark: BenchmarkFixture, keys: tuple[SigningKey, PublicKey]) -> None:
    """One ed25519 verification of a shipped bundle's bytes (``PublicKey.verify``)."""
    key, pub = keys
    data = shipped_bundles()["contractnli"].read_bytes()
    sig = key.sign(data)
    assert benchmark(pub.verify, sig, data)
    assert not pub.verify(sig, data + b" ")


def test_verify_index(
    benchmark: BenchmarkFixture, keys: tuple[SigningKey, PublicKey], tmp_path: Path
) -> None:
    """A device's check of a channel index published with every shipped bundle."""
    key, pub = keys
    publish(sorted(shipped_bundles()), tmp_path, channel="stable", keys=[key])
    envelope = Store(tmp_path).read("channels/stable/index.json")
    trusted = {pub.keyid: pub}
    payload = benchmark(verify_document, envelope, trusted, what="index")
    assert b'"pld-channel-index"' in payload
    benchmark.extra_info["envelope_bytes"] = len(envelope)


def test_verify_detached_bundle(
    benchmark: BenchmarkFixture, keys: tuple[SigningKey, PublicKey], tmp_path: Path
) -> None:
    """A side-loaded bundle's ``.sig``: load and validate the bundle, canonical bytes, ed25519
    (the benchmark bundle, about 60 kB)."""
    key, pub = keys
    path = tmp_path / "contractnli-long.pld.json"
    path.write_bytes(Path(default_bundle()).read_bytes())
    sign_bundle(path, key)
    keyid = benchmark(verify_bundle, path, [pub])
    assert keyid == key.keyid
    benchmark.extra_info["bundle_bytes"] = path.stat().st_size

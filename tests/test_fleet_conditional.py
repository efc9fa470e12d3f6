"""Conditional index reads: the sync agent asks an HTTP store for the channel's index only if it
changed since the last completed pull (If-None-Match / If-Modified-Since), so an unchanged index
costs one request and no body, and a 304 can only ever mean "do nothing this time".

Real keys, real bundles and a real HTTP server on 127.0.0.1 (``servers.StoreServer``: the
standard library's file server plus a sha256 ETag, or stock with Last-Modified alone) that
counts requests and bytes server-side. The lying 304 is fault injection by that server
(``lie_304``), not something a real server does on demand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import msgspec
import pytest
from servers import StoreServer
from typer.testing import CliRunner

from pld.cli import app
from pld.fleet import status
from pld.fleet.device import DeviceDir
from pld.fleet.keys import SigningKey
from pld.fleet.publisher import publish
from pld.fleet.puller import VALIDATOR_MAX_AGE_S, pull
from pld.fleet.store import Validators
from pld.fleet.sync import SyncOutcome, sync_once
from pld.fleet.sync_state import VALIDATORS_FILE, read_sync_state, read_validators
from pld.runtime import load_bundle, save_bundle, shipped_bundles

KEY = SigningKey.generate()
INDEX = "/channels/stable/index.json"
DEFAULT_EVERY_S = 900.0  # `pld device sync --every 15m`


def bundle_file(tmp: Path, version: str) -> Path:
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()["stereoset"]), version=version)
    return save_bundle(bundle, tmp / f"stereoset-{version}.pld.json")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    publish([bundle_file(tmp_path, "0.1.0")], root, channel="stable", keys=[KEY])
    return root


@pytest.fixture
def server(www: Path) -> Iterator[StoreServer]:
    srv = StoreServer(www)
    yield srv
    srv.close()


def check(url: str, d: Path, **options: object) -> SyncOutcome:
    return sync_once(url, d, trusted_keys=[KEY.public], prime=False, **options)  # type: ignore[arg-type]


def version(d: Path) -> str:
    return status(d).tasks[0].version


def test_validators_from_response_headers() -> None:
    assert Validators.of(None) == Validators()
    lm = "Wed, 02 Dec 2026 10:00:00 GMT"
    later = "Wed, 02 Dec 2026 10:00:01 GMT"
    assert Validators.of({"ETag": '"abc"', "Last-Modified": lm, "Date": later}) == Validators(
        '"abc"', lm
    )
    # a date in the same second as the change is no validator: a second change in that
    # second would carry the same date
    assert Validators.of({"Last-Modified": lm, "Date": lm}) == Validators()
    assert Validators.of({"Last-Modified": "yesterday", "Date": later}) == Validators()
    # a header that cannot be sent back as it came is not kept
    assert Validators.of({"ETag": '"a"\x7f'}).etag is None
    assert Validators.of({"ETag": '"' + "a" * 300 + '"'}).etag is None
    assert Validators('W/"x"', lm).conditions() == {
        "If-None-Match": 'W/"x"',
        "If-Modified-Since": lm,
    }


@pytest.mark.model
def test_unchanged_index_answers_304_then_a_publication_is_downloaded(
    www: Path, server: StoreServer, tmp_path: Path
) -> None:
    d = tmp_path / "dev"
    first = check(server.url, d)
    assert version(d) == "0.1.0" and read_sync_state(d).last_result == "pulled"  # type: ignore[union-attr]
    hits = server.take()
    # the index first (its validators are recorded with the very bytes verified), keys.json,
    # the bundle
    assert [(h.method, h.path, h.status) for h in hits][:2] == [
        ("GET", INDEX, 200),
        ("GET", "/keys.json", 404),
    ]
    assert len(hits) == 3 and hits[2].path.startswith("/bundles/")
    assert not any(h.conditional for h in hits)  # nothing recorded yet: asked whole
    record = read_validators(d)["stable"]
    assert record.etag and record.version == 1 and record.source == server.url
    assert (d / VALIDATORS_FILE).exists() and first.error is None

    trusted = (d / "trusted.json").read_bytes()
    for _ in range(2):  # each further check of the unchanged index: one request, no body
        out = check(server.url, d)
        (hit,) = server.take()
        assert (hit.method, hit.path, hit.status, hit.conditional) == ("GET", INDEX, 304, True)
        assert hit.body == 0 and 0 < hit.sent < 300
        st = read_sync_state(d)
        assert st is not None and st.last_result == "unchanged" and st.last_error is None
        assert st.index_version == 1 and st.consecutive_failures == 0
        assert st.last_success == st.last_check
        assert out.result is None and out.error is None
    assert (d / "trusted.json").read_bytes() == trusted and version(d) == "0.1.0"
    shown = CliRunner().invoke(app, ["device", "status", "--device-dir", str(d)])
    assert shown.exit_code == 0 and " (unchanged), last success " in shown.output, shown.output

    # a publication whose bundle is not there yet: the pull fails, nothing is recorded, so the
    # next check asks again (with the old validator) and gets the new index, not a 304
    old_files = set(www.glob("bundles/*"))
    publish([bundle_file(tmp_path, "0.2.0")], www, channel="stable", keys=[KEY])
    (bundle,) = set(www.glob("bundles/*")) - old_files
    bundle.rename(tmp_path / "held-back")
    check(server.url, d)
    st = read_sync_state(d)
    assert st is not None and st.last_result == "failed" and st.last_error.reason == "store"  # type: ignore[union-attr]
    assert read_validators(d)["stable"] == record and version(d) == "0.1.0"
    server.take()
    (tmp_path / "held-back").rename(bundle)
    check(server.url, d)
    hits = server.take()
    index_hit = next(h for h in hits if h.path == INDEX)
    assert (index_hit.status, index_hit.conditional) == (200, True) and index_hit.body > 0
    assert any(h.path == f"/bundles/{bundle.name}" for h in hits)
    assert version(d) == "0.2.0"
    st = read_sync_state(d)
    assert st is not None and (st.last_result, st.index_version) == ("pulled", 2)
    assert read_validators(d)["stable"].etag != record.etag

    check(server.url, d)  # and unchanged again
    assert [(h.path, h.status) for h in server.take()] == [(INDEX, 304)]


@pytest.mark.model
def test_a_lying_304_makes_the_device_take_nothing(
    www: Path, server: StoreServer, tmp_path: Path
) -> None:
    d = tmp_path / "dev"
    check(server.url, d)
    before = {p: (d / p).read_bytes() for p in ("trusted.json", "current/manifest.json")}
    generation = DeviceDir(d).current_generation()
    record = read_validators(d)["stable"]
    publish([bundle_file(tmp_path, "0.2.0")], www, channel="stable", keys=[KEY])
    server.take()
    server.lie_304 = True  # fault injection: 304 for a changed index

    check(server.url, d)
    (hit,) = server.take()  # no bundle, no keys.json: nothing new was even asked for
    assert (hit.path, hit.status, hit.conditional) == (INDEX, 304, True)
    st = read_sync_state(d)
    assert st is not None and st.last_result == "unchanged" and st.index_version == 1
    assert {p: (d / p).read_bytes() for p in before} == before
    assert DeviceDir(d).current_generation() == generation and version(d) == "0.1.0"
    assert read_validators(d)["stable"] == record

    # past the record's age the index is asked for whole: a 304 to that is refused, and the
    # device still keeps what it has
    later = dt.datetime.fromtimestamp(record.recorded_at + VALIDATOR_MAX_AGE_S + 1, dt.UTC)
    check(server.url, d, now=later)
    (hit,) = server.take()
    assert (hit.path, hit.status, hit.conditional) == (INDEX, 304, False)
    st = read_sync_state(d)
    assert st is not None and st.last_error is not None and st.last_error.reason == "store"
    assert "304 Not Modified" in st.last_error.message
    assert {p: (d / p).read_bytes() for p in before} == before

    server.lie_304 = False  # the honest store: the update the lie delayed arrives
    check(server.url, d)
    assert version(d) == "0.2.0" and read_sync_state(d).last_result == "pulled"  # type: ignore[union-attr]


@pytest.mark.model
def test_a_304_cannot_hide_that_the_index_expired(tmp_path: Path) -> None:
    """The freeze protection stays: once the index the device holds expires (here within the
    validator's age), the index is asked for whole, and a 304 to that is refused."""
    www = tmp_path / "www6h"
    publish(
        [bundle_file(tmp_path, "0.1.0")], www, channel="stable", keys=[KEY], expires_in_days=0.25
    )
    srv = StoreServer(www)
    try:
        d = tmp_path / "dev"
        check(srv.url, d)
        record = read_validators(d)["stable"]
        expired = dt.datetime.fromisoformat(record.expires) + dt.timedelta(seconds=1)
        assert expired.timestamp() < record.recorded_at + VALIDATOR_MAX_AGE_S
        srv.take()
        srv.lie_304 = True  # fault injection, as above
        check(srv.url, d, now=expired - dt.timedelta(seconds=2))
        assert [(h.status, h.conditional) for h in srv.take()] == [(304, True)]
        check(srv.url, d, now=expired)
        assert [(h.status, h.conditional) for h in srv.take()] == [(304, False)]
        st = read_sync_state(d)
        assert st is not None and st.last_error is not None and st.last_error.reason == "store"
        srv.lie_304 = False  # an honest store that serves the same, expired index
        check(srv.url, d, now=expired)
        st = read_sync_state(d)
        assert st is not None and st.last_error is not None and st.last_error.reason == "expired"
        assert version(d) == "0.1.0"
    finally:
        srv.close()


@pytest.mark.model
def test_a_changed_device_state_or_option_asks_for_the_index_whole(
    server: StoreServer, tmp_path: Path
) -> None:
    d = tmp_path / "dev"
    check(server.url, d)
    server.take()
    pull(server.url, d, prime=False)  # a manual pull: always reads the index whole
    assert [(h.path, h.conditional) for h in server.take() if h.path == INDEX] == [(INDEX, False)]
    check(server.url, d, allow_model_mismatch=True)  # another option: read whole
    assert not next(h for h in server.take() if h.path == INDEX).conditional
    check(server.url, d)  # the record has the other option: back to the default, read whole
    assert not next(h for h in server.take() if h.path == INDEX).conditional
    check(server.url, d)
    assert [h.status for h in server.take()] == [304]
    rec = read_validators(d)["stable"]
    # a record that no longer matches what the device trusts is not used
    (d / VALIDATORS_FILE).write_bytes(
        msgspec.json.encode({"stable": msgspec.structs.replace(rec, sha256="0" * 64)})
    )
    check(server.url, d)
    assert [(h.status, h.conditional) for h in server.take() if h.path == INDEX] == [(200, False)]


@pytest.mark.model
def test_last_modified_alone_with_the_stock_file_server(www: Path, tmp_path: Path) -> None:
    index = www / INDEX[1:]
    old = time.time() - 60
    os.utime(index, (old, old))  # published a minute ago: Last-Modified is a validator
    srv = StoreServer(www, etag=False)
    try:
        d = tmp_path / "dev"
        check(srv.url, d)
        rec = read_validators(d)["stable"]
        assert rec.etag is None and rec.last_modified
        srv.take()
        check(srv.url, d)
        assert [(h.status, h.body) for h in srv.take()] == [(304, 0)]
        publish([bundle_file(tmp_path, "0.2.0")], www, channel="stable", keys=[KEY])
        check(srv.url, d)
        assert version(d) == "0.2.0"
    finally:
        srv.close()


@pytest.mark.model
def test_directory_and_other_fsspec_stores_are_read_whole(www: Path, tmp_path: Path) -> None:
    mem = fsspec.filesystem("memory")
    mem.put(str(www), "/pub-conditional", recursive=True)
    for n, source in enumerate((str(www), "memory://pub-conditional")):
        d = tmp_path / f"dev{n}"
        for _ in range(2):
            out = check(source, d)
            assert out.error is None
            assert read_sync_state(d).last_result == "pulled"  # type: ignore[union-attr]
        assert version(d) == "0.1.0" and not (d / VALIDATORS_FILE).exists()


@pytest.mark.model
def test_store_traffic_per_device_per_hour(server: StoreServer, tmp_path: Path) -> None:
    """The figures in bench/RESULTS.md: run with -s to print them."""
    d = tmp_path / "dev"
    check(server.url, d)
    server.take()
    pull(server.url, d, prime=False)  # what every check cost before: the index read whole
    whole = server.take()
    check(server.url, d)
    check(server.url, d)
    unchanged = server.take()[-1:]
    per_hour = 3600 / DEFAULT_EVERY_S
    figures = {
        "every_s": DEFAULT_EVERY_S,
        "whole": {
            "requests": len(whole),
            "bytes": sum(h.sent for h in whole),
            "body_bytes": sum(h.body for h in whole),
        },
        "unchanged": {
            "requests": len(unchanged),
            "bytes": sum(h.sent for h in unchanged),
            "body_bytes": sum(h.body for h in unchanged),
        },
    }
    figures["requests"] = [[h.path, h.status, h.sent, h.body] for h in whole + unchanged]
    for key in ("whole", "unchanged"):
        f = figures[key]
        assert isinstance(f, dict)
        f["per_hour"] = {"requests": f["requests"] * per_hour, "bytes": f["bytes"] * per_hour}
    print(json.dumps(figures))
    assert [(h.path, h.status) for h in unchanged] == [(INDEX, 304)]
    assert unchanged[0].body == 0 and len(whole) == 2

"""The fleet view: `pld serve`'s /metrics shows the sync agent's state and the active bundles,
and deploy/ holds recording rules (checked and unit-tested with promtool where it is installed)
and a Grafana dashboard that uses only series that exist.

The app is tested in-process without a model (httpx's ASGI transport; the service is not
started), and once end to end: the real `pld serve` on 127.0.0.1 with the real model, while
`pld device sync --once` moves its device directory to a new bundle.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from servers import free_port
from typer.testing import CliRunner

from pld.cli import app as cli_app
from pld.fleet.keys import SigningKey
from pld.fleet.publisher import publish
from pld.fleet.sync import run_agent
from pld.fleet.sync_state import SyncState, write_sync_state
from pld.runtime import ClassifierOptions, load_bundle, save_bundle, shipped_bundles
from pld.serve.app import create_app
from pld.serve.metrics import ServeMetrics
from pld.serve.registry import Registry
from pld.serve.service import ServeOptions, Service
from pld.serve.sources import DeviceSource

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KEY = SigningKey.generate()
runner = CliRunner()


def scrape(device_dir: Path) -> str:
    service = Service(
        Registry(DeviceSource(device_dir), ClassifierOptions()), ServeOptions(), ServeMetrics()
    )

    async def go() -> str:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://pld") as c:
            r = await c.get("/metrics")
            assert r.status_code == 200
            return r.text

    return asyncio.run(go())


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in Prometheus' text format."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(\{{.*\}})? (\S+)", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_metrics_show_the_sync_agents_state(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    d.mkdir()
    assert "pld_sync_" not in scrape(d)  # no agent yet: no series
    port = free_port()  # nothing listens: the store is down
    url = f"http://127.0.0.1:{port}/"
    out = run_agent(url, d, once=True, every_s=300, request_timeout=5, trusted_keys=[KEY.public])
    assert out is not None and out.error is not None
    text = scrape(d)
    assert samples(text, "pld_sync_last_error_info") == {'{reason="store"}': 1.0}
    assert samples(text, "pld_sync_last_result_info") == {'{result="failed"}': 1.0}
    assert samples(text, "pld_sync_consecutive_failures") == {"": 1.0}
    assert samples(text, "pld_sync_interval_seconds") == {"": 300.0}
    assert samples(text, "pld_sync_next_attempt_timestamp_seconds") == {"": out.state.next_attempt}
    assert not samples(text, "pld_sync_last_success_timestamp_seconds")  # never succeeded
    now = time.time()
    write_sync_state(d, SyncState(source="s", channel="stable", every_s=900, last_check=now,
                                  last_success=now, index_version=7, last_result="unchanged",
                                  deferred={"stereoset": "0.3.0"}))  # fmt: skip
    text = scrape(d)
    assert not samples(text, "pld_sync_last_error_info")
    assert samples(text, "pld_sync_last_result_info") == {'{result="unchanged"}': 1.0}
    assert samples(text, "pld_sync_last_success_timestamp_seconds") == {"": now}
    assert samples(text, "pld_sync_index_version") == {'{channel="stable"}': 7.0}
    assert samples(text, "pld_sync_rollout_deferred_info") == {
        '{task="stereoset",version="0.3.0"}': 1.0
    }
    (d / "sync.json").write_text("{damaged")  # a damaged file: no sync series, no error
    assert "pld_sync_" not in scrape(d)


# ---- deploy/ -----------------------------------------------------------------------------------


def _recorded() -> set[str]:
    text = (DEPLOY / "prometheus-rules.yml").read_text()
    return set(re.findall(r"^\s*- record: (\S+)$", text, re.M))


def test_prometheus_rules_check_and_unit_tests() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for args in (["check", "rules", "prometheus-rules.yml"],
                 ["test", "rules", "prometheus-rules.test.yml"]):  # fmt: skip
        proc = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_dashboard_is_valid_and_uses_only_series_that_exist(tmp_path: Path) -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash["title"] and dash["uid"] == "pld-fleet"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    d = tmp_path / "dev"
    write_sync_state(d, SyncState(source="s", channel="c", every_s=1, last_check=1,
                                  last_success=1, last_change=1, next_attempt=2, index_version=1,
                                  deferred={"t": "1"}))  # fmt: skip
    exported = set(re.findall(r"^# TYPE (\S+) ", scrape(d), re.M))
    known = exported | _recorded() | {"up"}
    text = (DEPLOY / "prometheus-rules.yml").read_text()
    rules = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    used_by_rules = set(re.findall(r"\b(pld_[a-z_]+)", rules))
    assert used_by_rules <= exported, used_by_rules - exported
    for p in panels:
        assert p["title"] and p["targets"], p
        for t in p["targets"]:
            names = set(re.findall(r"\b(pld[:_][A-Za-z0-9_:]+|up)\b", t["expr"]))
            assert names and names <= known, (p["title"], names - known)


# ---- end to end --------------------------------------------------------------------------------


def bundle_file(tmp: Path, version: str) -> Path:
    bundle = msgspec.structs.replace(load_bundle(shipped_bundles()["stereoset"]), version=version)
    return save_bundle(bundle, tmp / f"stereoset-{version}.pld.json")


@pytest.mark.model
def test_a_running_server_picks_up_what_the_agent_activates(tmp_path: Path) -> None:
    pub, d = tmp_path / "pub", tmp_path / "dev"
    publish([bundle_file(tmp_path, "0.1.0")], pub, channel="stable", keys=[KEY])
    (tmp_path / "k.pub").write_bytes(KEY.public.pem())
    sync = ["device", "sync", "--once", "--from", str(pub), "--device-dir", str(d), "--nice", "0"]
    out = runner.invoke(cli_app, [*sync, "--trusted-key", str(tmp_path / "k.pub")])
    assert out.exit_code == 0, out.output
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "pld"), "serve", "--device-dir", str(d),
         "--port", str(port), "--poll", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def metrics_when(pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                text = client.get("/metrics").text
                if re.search(pattern, text):
                    return text
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in /metrics after {timeout} s")

    try:
        metrics_when(r'pld_serve_bundle_info\{.*version="0\.1\.0".*\} 1\.0')
        publish([bundle_file(tmp_path, "0.2.0")], pub, channel="stable", keys=[KEY])
        out = runner.invoke(cli_app, sync)
        assert out.exit_code == 0, out.output
        text = metrics_when(r'pld_serve_bundle_info\{.*version="0\.2\.0".*\} 1\.0')
        assert 'version="0.1.0"' not in "".join(
            line for line in text.splitlines() if line.startswith("pld_serve_bundle_info")
        )
        assert samples(text, "pld_sync_index_version") == {'{channel="stable"}': 2.0}
        assert samples(text, "pld_sync_consecutive_failures") == {"": 0.0}
        r = client.post(
            "/v1/classify", json={"text": "Target: chess player\nContext: x\nSentence: y"}
        )
        assert r.status_code == 200 and r.json()["bundle"]["version"] == "0.2.0"
    finally:
        proc.terminate()
        proc.wait(60)
        client.close()

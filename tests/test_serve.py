"""`pld serve`'s behaviour (answers, every error, limits, metrics, reload) through the real
app in-process, on the real model and shipped bundles. What only the process shows (bad clients,
signals, hot swaps, micro-batching) is in ``test_serve_process.py``.

The app is started once for the module and shared; each test says which state it leaves.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from pld.runtime import load_bundle, shipped_bundles
from pld.runtime.cli_options import classifier_options
from pld.serve.app import create_app
from pld.serve.metrics import ServeMetrics
from pld.serve.registry import Registry
from pld.serve.service import ServeOptions, Service
from pld.serve.sources import BundleSource

pytestmark = pytest.mark.model

TEXT = "Target: chess player\nContext: The chess player was BLANK.\nSentence: The chess player was hispanic."
TEXTS = [
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The people are very thin.",
    "Target: Ethiopian\nContext: Many people live in Ethiopia.\nSentence: The cat ran up the tree.",
    TEXT,
]
READY_TIMEOUT = 400.0  # model load + priming on a busy 2-core machine


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the series on /metrics that carry ``labels`` (0 when none does)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def file_sha(name: str) -> str:
    return hashlib.sha256(shipped_bundles()[name].read_bytes()).hexdigest()


# ---- in-process: the app `pld serve` runs, two shipped bundles --------------------------------


class InProcess:
    """``create_app`` over a real ``Service``, its lifespan run by starlette's TestClient (the
    worker thread, the background priming), requests from 127.0.0.1."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.readyz: list[int] = []  # statuses /readyz answered while starting

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get("/readyz")
            self.readyz.append(r.status_code)
            if r.status_code == 200:
                return
            assert "loading failed" not in r.text, r.text
            time.sleep(0.2)  # each poll takes CPU from priming, which uses every core
        raise AssertionError(f"not ready after {timeout} s: {self.readyz[-3:]}")

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return self.client.post("/v1/classify", json=body)


@pytest.fixture(scope="module")
def served() -> Iterator[InProcess]:
    registry = Registry(BundleSource(["stereoset", "contractnli"]), classifier_options())
    options = ServeOptions(max_inputs=32, max_queue=40, max_body=65536)
    app = create_app(Service(registry, options, ServeMetrics()))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000)) as client:
        srv = InProcess(client)
        srv.wait_ready()
        yield srv


@pytest.mark.timeout(600)
def test_ready_only_after_priming_then_classify_one_and_many(served: InProcess) -> None:
    assert served.readyz[0] == 503 and served.readyz[-1] == 200, served.readyz
    assert served.client.get("/healthz").json()["ok"] is True
    r = served.post({"task": "stereoset", "text": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "stereoset"
    assert body["bundle"] == {
        "name": "stereoset",
        "version": "0.1.0",
        "sha256": file_sha("stereoset"),
    }
    (pred,) = body["predictions"]
    assert set(pred["probs"]) == {"stereotype", "anti-stereotype", "unrelated"}
    assert pred["label"] == max(pred["probs"], key=pred["probs"].get)
    assert pred["score"] == pred["probs"][pred["label"]]
    assert abs(sum(pred["probs"].values()) - 1) < 1e-6
    many = served.post({"task": "stereoset", "inputs": TEXTS}).json()["predictions"]
    assert len(many) == 3 and many[2] == pred  # same input, same answer, in order
    other = served.post({"task": "contractnli", "inputs": TEXTS[:2]}).json()
    assert set(other["predictions"][0]["probs"]) == {"entailment", "contradiction", "not_mentioned"}


def test_tasks_listing(served: InProcess) -> None:
    tasks = {t["task"]: t for t in served.client.get("/v1/tasks").json()["tasks"]}
    assert sorted(tasks) == ["contractnli", "stereoset"]
    st = tasks["stereoset"]
    assert (st["name"], st["version"], st["sha256"]) == (
        "stereoset",
        "0.1.0",
        file_sha("stereoset"),
    )
    assert st["rules"] == len(load_bundle(shipped_bundles()["stereoset"]).instructions)
    assert st["labels"] == ["stereotype", "anti-stereotype", "unrelated"]


def test_every_error_is_json_with_a_message(served: InProcess) -> None:
    def err(status: int, code: str, **kw: Any) -> str:
        r = served.client.post("/v1/classify", **kw)
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert e["code"] == code and e["message"], e
        return str(e["message"])

    assert "not valid JSON" in err(400, "malformed_json", content=b'{"task": "stereoset",')
    assert "0xff" in err(400, "invalid_utf8", content=b'{"text": "\xff"}')
    assert '"inputs"' in err(422, "invalid_request", json={"task": "stereoset"})
    assert "inputs" in err(422, "invalid_request", json={"task": "stereoset", "inputs": "x"})
    assert "contractnli, stereoset" in err(404, "unknown_task", json={"task": "nope", "text": "x"})
    assert "several tasks" in err(422, "task_required", json={"text": TEXT})
    assert "empty" in err(422, "invalid_input", json={"task": "stereoset", "inputs": [TEXT, " "]})
    msg = err(422, "context_overflow", json={"task": "stereoset", "text": "word " * 3000})
    assert re.search(r"input has \d+ tokens but only \d+ fit", msg), msg
    assert "--max-inputs" in err(
        413, "too_many_inputs", json={"task": "stereoset", "inputs": ["a"] * 65}
    )
    assert "--max-body" in err(413, "body_too_large", content=b"x" * 70000)
    r = served.client.get("/v1/nothing")
    assert r.status_code == 404 and "endpoints" in r.json()["error"]["message"]
    assert served.client.get("/v1/classify").status_code == 405
    assert served.post({"task": "stereoset", "text": TEXT}).status_code == 200  # unharmed


def test_metrics_name_task_version_and_outcome(served: InProcess) -> None:
    served.post({"task": "stereoset", "inputs": TEXTS[:2]})
    text = served.client.get("/metrics").text
    assert 'pld_serve_requests_total{outcome="ok",task="stereoset",version="0.1.0"}' in text
    assert 'outcome="unknown_task"' in text  # from the error test: task and version left empty
    for series in (
        'pld_serve_request_seconds_bucket{le="0.001",task="stereoset",version="0.1.0"}',
        'pld_serve_request_seconds_bucket{le="0.5",task="stereoset",version="0.1.0"}',
        'pld_serve_queue_wait_seconds_bucket{le="0.005",task="stereoset"}',
        'pld_serve_batch_size_bucket{le="1.0"}',
        'pld_serve_input_tokens_total{task="stereoset",version="0.1.0"}',
        "pld_serve_ready 1.0",
        f'pld_serve_bundle_info{{name="stereoset",sha256="{file_sha("stereoset")}",task="stereoset",version="0.1.0"}} 1.0',
    ):
        assert series in text, series
    assert metric(served.client, "pld_serve_inputs_total", task="stereoset") >= 2


def test_a_big_request_does_not_starve_a_single_one(served: InProcess) -> None:
    done: dict[str, float] = {}

    def big() -> None:
        r = served.post({"task": "stereoset", "inputs": TEXTS * 7})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 21
        done["big"] = time.monotonic()

    t = threading.Thread(target=big)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.3)  # the big one is admitted and being served
    t1 = time.monotonic()
    assert served.post({"task": "contractnli", "text": TEXT}).status_code == 200
    single = time.monotonic() - t1
    t.join()
    big_total = done["big"] - t0
    assert single < big_total / 3, (single, big_total)


def test_full_queue_is_503_with_retry_after(served: InProcess) -> None:
    out: list[httpx.Response] = []

    def send() -> None:
        out.append(served.post({"task": "stereoset", "inputs": TEXTS * 7}))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    full = [r for r in out if r.status_code == 503]
    assert full and any(r.status_code == 200 for r in out), [r.status_code for r in out]
    assert int(full[0].headers["retry-after"]) >= 1
    assert "--max-inputs" not in full[0].text and "queued" in full[0].json()["error"]["message"]


def test_reload_on_loopback_keeps_unchanged_bundles(served: InProcess) -> None:
    r = served.client.post("/v1/reload")
    assert r.status_code == 200, r.text
    assert sorted(r.json()["unchanged"]) == ["contractnli", "stereoset"]
    assert metric(served.client, "pld_serve_swaps_total", outcome="ok") == 0

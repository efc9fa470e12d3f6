"""`pld report`: a real run on a small slice, the page's safety (self-contained, escaped
inputs), its numbers against `evaluate` run directly, and the page in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, data_file, pld_process, records
from typer.testing import CliRunner

from pld.cli import app
from pld.evals.evaluate import EvalResult, evaluate
from pld.runtime import (
    Bundle,
    ClassifierOptions,
    Instruction,
    Model,
    load_bundle,
    resolve_bundle_path,
    save_bundle,
)

runner = CliRunner()
HOSTILE = "Target: x\nContext: <script>alert(1)</script> & <img src=x onerror=alert(2)>"
RULES = [
    "A sentence that repeats a common belief about the target is a stereotype.",
    "A sentence that contradicts the common belief is an anti-stereotype; <b>bold</b> & co.",
    "A sentence with no link to the context is unrelated.",
]
SCREENSHOT = REPO / "scripts" / "screenshot_report.py"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `pld report` as a user types it: a bundle with rules, 8 records of which two
    are the same hostile input with different gold labels (so at least one is an error)."""
    tmp = tmp_path_factory.mktemp("report")
    shipped = load_bundle(resolve_bundle_path("stereoset"))
    bundle = Bundle.create(
        name="stereoset-ruled",
        task=shipped.task,
        instructions=[
            Instruction(id=f"r{i}", text=t, support=10 - i, cluster=i, round=i % 2)
            for i, t in enumerate(RULES, 1)
        ],
        student=shipped.student,
        runtime=shipped.runtime,
        provenance={"kind": "test", "teacher": "<none>"},
    )
    bundle_path = tmp / "ruled.pld.json"
    save_bundle(bundle, bundle_path)
    recs = [
        {"id": r["id"], "text": r["text"], "label": r["label"]} for r in records("stereoset", n=6)
    ]
    recs += [
        {"id": "hostile-1", "text": HOSTILE, "label": "stereotype"},
        {"id": "hostile-2", "text": HOSTILE, "label": "anti-stereotype"},
    ]
    data = tmp / "slice.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "pld"), "report", "--bundle", str(bundle_path)]
        + ["--data", str(data), "--baseline", "zero-shot", "--threads", "1"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"tmp": tmp, "bundle": bundle, "bundle_path": bundle_path, "data": data, "line": line}


@pytest.mark.model
@pytest.mark.slow
def test_report_writes_html_and_json_at_the_default_path(run: dict[str, Any]) -> None:
    tmp = run["tmp"]
    assert Path(run["line"]["html"]) == Path("report-stereoset-ruled-slice.html")
    assert (tmp / "report-stereoset-ruled-slice.html").is_file()
    report = json.loads((tmp / "report-stereoset-ruled-slice.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["bundle", "zero-shot"]
    assert [s["name"] for s in run["line"]["systems"]] == ["bundle", "zero-shot"]
    assert report["n"] == 8 and report["bundle"] == "stereoset-ruled"


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-12


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("system", ["none", "zero-shot"])
def test_numbers_agree_with_evaluate(run: dict[str, Any], system: str, gemma: Model) -> None:
    report = json.loads((run["tmp"] / "report-stereoset-ruled-slice.json").read_text())
    got = report["systems"][0 if system == "none" else 1]
    opts = ClassifierOptions(n_threads=1)  # as the run: one thread copes best with a busy CPU
    want: EvalResult = evaluate(
        run["bundle_path"], run["data"], opts, model=gemma, baseline=system, progress=False
    )
    assert got["n"] == want.n == 8
    assert _close(got["accuracy"], want.accuracy)
    assert _close(got["macro_f1"], want.macro_f1)
    assert all(map(_close, got["macro_f1_ci"], want.macro_f1_ci))
    assert all(map(_close, got["accuracy_ci"], want.accuracy_ci))
    assert got["report"]["confusion"] == want.report.confusion
    for name, scores in want.report.per_label.items():
        row = got["report"]["per_label"][name]
        assert row["support"] == scores.support
        assert _close(row["f1"], scores.f1) and _close(row["precision"], scores.precision)
    lat = got["latency"]
    assert lat["requests"] == 8 and 0 < lat["p50_ms"] <= lat["p95_ms"]
    if system == "none":
        # the errors table is exactly the records the bundle got wrong, with its probabilities
        gold = [r["label"] for r in map(json.loads, run["data"].read_text().splitlines())]
        wrong = [i for i, (g, p) in enumerate(zip(gold, got["predictions"])) if g != p]
        assert sorted(e["index"] for e in report["errors"]) == wrong
        assert len(wrong) == 8 - sum(want.report.confusion[i][i] for i in range(3))
        for e in report["errors"]:
            assert e["predicted"] == got["predictions"][e["index"]] != e["gold"]
            assert e["probability"] == max(got["probs"][e["index"]])


@pytest.mark.model
@pytest.mark.slow
def test_page_is_self_contained_escaped_and_complete(run: dict[str, Any]) -> None:
    page = (run["tmp"] / "report-stereoset-ruled-slice.html").read_text(encoding="utf-8")
    report = json.loads((run["tmp"] / "report-stereoset-ruled-slice.json").read_text())
    # nothing fetched: no remote src/href, no script, no stylesheet link, no CSS url()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "url(" not in page and "@import" not in page
    # the hostile input (two records, one surely wrong) shows as text, never as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<img" not in page
    # every rule, numbered, with its provenance; rule text escaped too
    ol = page[page.index('<ol class="rules">') : page.index("</ol>")]
    for i, text in enumerate(RULES, 1):
        assert f"r{i}; support {10 - i}; cluster {i}; round {i % 2}" in ol
        assert (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")) in ol
    assert ol.count("<li>") == len(RULES)
    assert "teacher" in page and "&lt;none&gt;" in page
    # the per-label table and one confusion-matrix picture per system, with its counts
    main = report["systems"][0]
    for name, s in main["report"]["per_label"].items():
        assert re.search(rf"<td[^>]*>{re.escape(name)}</td><td[^>]*>{s['support']}</td>", page)
    svgs = re.findall(r"<svg[^>]*aria-label=\"confusion matrix[^>]*>.*?</svg>", page, re.S)
    assert len(svgs) == 2
    counts = [int(x) for x in re.findall(r'fill="#(?:fff|111)">(\d+)</text>', svgs[0])]
    assert counts == [v for row in main["report"]["confusion"] for v in row]


def test_bad_options_fail_before_the_model_loads(tmp_path: Path) -> None:
    data = data_file("stereoset")
    res = runner.invoke(
        app, ["report", "--bundle", "stereoset", "--data", str(data), "--out", "r.txt"]
    )
    assert res.exit_code != 0 and "must end in .html" in str(res.exception)
    out = str(tmp_path / "r.html")
    for spec, words in [("none", "always reported"), ("few-shot:x", "positive integer")]:
        res = runner.invoke(
            app,
            ["report", "-b", "stereoset", "--data", str(data), "--baseline", spec, "--out", out],
        )
        assert res.exit_code != 0 and words in str(res.exception)
    proc = pld_process("report", "-b", "no-such-bundle", "--data", str(data), "--out", out)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no shipped bundle" in err


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium); CI machines do not have it",
)
def test_page_renders_in_headless_chromium(run: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image

    tmp = run["tmp"]
    page = tmp / "report-stereoset-ruled-slice.html"
    png, dom_file = tmp / "shot.png", tmp / "dom.html"
    proc = subprocess.run(
        [sys.executable, str(SCREENSHOT), str(page), "--out", str(png), "--dom", str(dom_file)]
        + ["--width", "1280", "--height", "1600"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1280, 1600)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and heatmap cells
    assert pixels.std() > 10
    # the rendered DOM has the summary numbers and still no script element
    dom = dom_file.read_text(encoding="utf-8")
    report = json.loads((tmp / "report-stereoset-ruled-slice.json").read_text())
    for s in report["systems"]:
        for v in (s["macro_f1"], *s["macro_f1_ci"], s["accuracy"], *s["accuracy_ci"]):
            assert f"{v:.3f}" in dom
    assert "<script" not in dom and "&lt;script&gt;alert(1)" in dom


def test_screenshot_script_fails_on_a_missing_page(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCREENSHOT), str(tmp_path / "nope.html")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "no file" in proc.stderr

"""`pld bench scaling`: a tiny real run writes every sweep's CSV and PNG, and the numbers in them
show what must hold (full evaluation costs more than reuse on a long prompt; priming costs more
than restoring)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pld.bench import ScalingConfig
from pld.cli import app
from pld.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [x for x in lines if x.startswith("#")]
    return comments, list(csv.DictReader(x for x in lines if not x.startswith("#")))


@pytest.mark.model
@pytest.mark.slow
def test_quick_run_writes_csvs_and_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    out = tmp_path / "results"
    args = ["bench", "scaling", "--quick", "--out", str(out), "--threads", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])

    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"  # files only: no display here
    assert set(summary["files"]) == {"prompt", "input", "batch", "prime"}
    rows = {}
    for sweep, files in summary["files"].items():
        csv_path, png_path = Path(files["csv"]), Path(files["png"])
        assert csv_path == out / f"scaling-{sweep}.csv" and png_path == out / f"scaling-{sweep}.png"
        png = png_path.read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000
        comments, rows[sweep] = _read(csv_path)
        assert comments[0] == f"# command: {summary['command']}"
        assert summary["command"].startswith("pld bench scaling --out ")
        assert "--threads 1" in summary["command"]

    prompt = rows["prompt"]
    assert [int(r["target_tokens"]) for r in prompt] == [0, 300]
    assert abs(int(prompt[1]["system_prompt_tokens"]) - 300) < 40
    assert int(prompt[0]["prefix_tokens"]) < int(prompt[1]["prefix_tokens"])
    assert {"reuse_p50_ms", "reuse_p95_ms", "full_p50_ms", "full_p95_ms"} <= set(prompt[0])
    assert [int(r["reuse_n"]) for r in prompt] == [2, 2]  # 2 requests x 1 repeat
    # the whole prompt evaluated per request must cost more than reusing it
    assert float(prompt[1]["full_p50_ms"]) > float(prompt[1]["reuse_p50_ms"])

    inputs = rows["input"]
    assert [int(r["target_tokens"]) for r in inputs] == [16, 64]
    assert float(inputs[0]["input_tokens"]) < float(inputs[1]["input_tokens"])

    batch = rows["batch"]
    assert [(r["layout"], int(r["batch_size"])) for r in batch] == [
        ("shared", 1),
        ("shared", 2),
        ("windowed", 1),
    ]
    assert all(float(r["requests_per_s"]) > 0 for r in batch)

    prime = rows["prime"]
    assert float(prime[1]["prime_ms"]) > float(prime[1]["restore_ms"]) > 0
    assert float(prime[1]["state_mb"]) > float(prime[0]["state_mb"]) > 0

    slopes = summary["slopes"]
    assert slopes["full_ms_per_1k_prompt_tokens"] > slopes["reuse_ms_per_1k_prompt_tokens"]
    assert "scaling-prompt" in res.stdout and "slopes" in res.stdout


def test_bad_grids_are_refused_before_loading_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sweep"):
        ScalingConfig(sweeps=("prompt", "speed")).check()
    with pytest.raises(ConfigError, match="at least 32"):
        ScalingConfig(batch_requests=8).check()
    with pytest.raises(ConfigError, match="at most"):
        ScalingConfig(input_tokens=(16, 4096)).check()
    res = CliRunner().invoke(app, ["bench", "scaling", "--prompt-tokens", "0,1k"])
    assert isinstance(res.exception, ConfigError) and "whole numbers" in str(res.exception)
    res = CliRunner().invoke(app, ["bench", "scaling", "--out", str(tmp_path), "--requests", "0"])
    assert isinstance(res.exception, ConfigError) and "--requests" in str(res.exception)
    assert not list(tmp_path.iterdir())  # refused before writing anything

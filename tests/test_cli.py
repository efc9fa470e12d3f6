"""The CLI in-process (typer's runner) and once as a subprocess, the way a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import data_file, pld_process, records
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import BundleError, ConfigError, InputError
from pld.runtime import load_bundle, render_audit

runner = CliRunner()


def test_bundle_commands() -> None:
    out = runner.invoke(app, ["bundle", "list"])
    assert out.exit_code == 0 and "stereoset" in out.stdout and "logiqa" in out.stdout
    out = runner.invoke(app, ["bundle", "path", "contractnli"])
    assert out.exit_code == 0 and Path(out.stdout.strip()).is_file()
    out = runner.invoke(app, ["bundle", "show", "stereoset"])
    assert out.exit_code == 0
    assert "- anti-stereotype:" in out.stdout and "Rules (0)" in out.stdout
    out = runner.invoke(app, ["bundle", "validate", "logiqa"])
    assert out.exit_code == 0 and out.stdout.startswith("ok:")


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every command under a typer group, by its path ('bundle audit')."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, typer.core.TyperGroup):
            found |= _commands(command, path + " ")
        found[path] = command
    return found


def test_shared_options_have_one_name_and_one_help() -> None:
    commands = _commands(typer.main.get_command(app))
    shared = ["--bundle", "--data", "--model", "--threads", "--gpu-layers", "--batch-size",
              "--device-dir", "--calibrate", "--allow-model-mismatch", "--kv-type", "--ubatch",
              "--flash-attn", "--n-ctx", "--truncate"]  # fmt: skip
    helps: dict[str, set[str | None]] = {name: set() for name in shared}
    for path, command in commands.items():
        for param in command.params:
            for name in set(param.opts) & set(shared):
                helps[name].add(getattr(param, "help", None))
            # -d means --device-dir wherever it is taken; --max-batch survives only hidden
            assert "-d" not in param.opts or "--device-dir" in param.opts, path
            assert "--max-batch" not in param.opts or getattr(param, "hidden", False), path
    assert {name: len(h) for name, h in helps.items()} == dict.fromkeys(shared, 1)
    assert {"classify", "eval", "report", "bundle audit", "bench latency", "serve",
            "device pull", "device status"} <= set(commands)  # fmt: skip
    bundle = {name for name, c in commands.items() if name.startswith("bundle ")}
    assert bundle == {f"bundle {n}" for n in
                      ("show", "validate", "list", "path", "audit", "calibrate", "sign", "verify",
                       "publish")}  # fmt: skip


def test_show_numbers_rules_for_auditors() -> None:
    fixture = Path(__file__).parent / "fixtures" / "bundles" / "v1.json"
    out = runner.invoke(app, ["bundle", "show", str(fixture)])
    assert "  1. Praise of the product" in out.stdout and "support 7" in out.stdout
    # the same view from Python, for tools that review bundles without the CLI
    assert out.stdout == render_audit(load_bundle(fixture)) + "\n"


def test_errors_reach_the_caller() -> None:
    out = runner.invoke(app, ["bundle", "validate", "nope"])
    assert isinstance(out.exception, BundleError)
    out = runner.invoke(app, ["classify", "--bundle", "stereoset"])
    assert isinstance(out.exception, InputError)


@pytest.mark.model
def test_classify_input_file_writes_json_lines(tmp_path: Path) -> None:
    recs = records("stereoset", n=5)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in recs))
    out = runner.invoke(app, ["classify", "--bundle", "stereoset", "--input", str(src)])
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert [x["id"] for x in lines] == [r["id"] for r in recs]
    for x in lines:
        assert x["label"] in x["probs"] and abs(sum(x["probs"].values()) - 1) < 1e-6


@pytest.mark.model
def test_eval_prints_json_last(tmp_path: Path) -> None:
    data = data_file("stereoset", "dev")
    out = runner.invoke(app, ["eval", "--bundle", "stereoset", "--data", str(data), "--limit", "6"])
    assert out.exit_code == 0, out.output
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["n"] == 6 and {"accuracy", "macro_f1", "per_request_ms", "calibrated"} <= set(last)
    assert "confusion" in out.stdout


@pytest.mark.model
def test_subprocess_as_a_user_types_it(tmp_path: Path) -> None:
    pld = [sys.executable, "-c", "from pld.cli import main; main()"]
    env = dict(os.environ)
    ok = subprocess.run(
        pld
        + [
            "classify",
            "--bundle",
            "stereoset",
            "Target: nurse\nContext: The nurse was BLANK.\nSentence: The nurse was caring.",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    pred = json.loads(ok.stdout)
    assert (
        pred["label"] in ("stereotype", "anti-stereotype", "unrelated")
        and pred["calibrated"] is True
    )
    bad = tmp_path / "bad.pld.json"
    bad.write_text('{"schema_version": 1, "name": "x"}')
    err = subprocess.run(
        pld + ["bundle", "validate", str(bad)], capture_output=True, text=True, env=env, timeout=120
    )
    assert err.returncode == 2
    assert err.stderr.startswith("error: bundle") and "Traceback" not in err.stderr


@pytest.mark.model
def test_a_batch_too_large_for_llama_cpp_names_the_fix() -> None:
    out = runner.invoke(app, ["classify", "--bundle", "stereoset", "--batch-size", "300", "x"])
    assert isinstance(out.exception, ConfigError)
    assert "llama.cpp allows 253" in str(out.exception) and "--batch-size" in str(out.exception)
    out = runner.invoke(app, ["classify", "--bundle", "stereoset", "--batch-size", "0", "x"])
    assert isinstance(out.exception, ConfigError) and "at least 1" in str(out.exception)


@pytest.mark.model
def test_ctrl_c_on_classify_says_interrupted_without_the_distillers_hint(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    text = "Target: nurse\nContext: The nurse was BLANK.\nSentence: The nurse was caring."
    src.write_text("".join(json.dumps({"id": str(i), "text": text}) + "\n" for i in range(5000)))

    run = pld_process("classify", "--bundle", "stereoset", "--input", str(src))
    try:
        assert run.stdout is not None
        first = run.stdout.readline()  # it is classifying now
        assert json.loads(first)["id"] == "0"
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr[-2000:]
    assert stderr.rstrip().endswith("interrupted") and "Traceback" not in stderr
    assert "teacher" not in stderr

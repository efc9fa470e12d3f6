"""`pld serve` on a device without the serve extra, and its argument checks (no model needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pld.cli import app
from pld.errors import ConfigError, DependencyError, InputError

runner = CliRunner()


def test_pld_imports_no_server_stack() -> None:
    """The core device install stays lean: `pld` itself never imports the serve extra."""
    code = (
        "import sys, pld.cli; "
        "print([m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'uvicorn', 'prometheus_client', 'pld.serve.app')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Faked: the extra is installed in the test environment, and uninstalling it is not an
    # option, so find_spec is told that starlette is missing.
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "starlette" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = runner.invoke(app, ["serve", "--bundle", "stereoset"])
    assert isinstance(result.exception, DependencyError)
    assert "pip install 'pld[serve]'" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ([], InputError, "--device-dir"),
        (["--bundle", "stereoset", "--device-dir", "/nonexistent"], InputError, "not both"),
        (["--bundle", "stereoset", "--max-inputs", "0"], ConfigError, "--max-inputs"),
        (["--bundle", "stereoset", "--max-queue", "8"], ConfigError, "--max-queue"),
        (["--bundle", "stereoset", "--poll", "0"], ConfigError, "--poll"),
        (["--bundle", "stereoset", "--batch-window-ms", "-1"], ConfigError, "--batch-window-ms"),
        (["--device-dir", "/nonexistent/pld-device"], InputError, "does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_loading(
    args: list[str], error: type[Exception], words: str
) -> None:
    result = runner.invoke(app, ["serve", *args])
    assert isinstance(result.exception, error), result.output
    assert words in str(result.exception)


def test_a_task_given_twice_is_refused() -> None:
    from pld.errors import BundleError
    from pld.serve.sources import BundleSource

    with pytest.raises(BundleError, match="given twice"):
        BundleSource(["stereoset", "stereoset"])
    assert list(BundleSource(["stereoset", "again=stereoset"]).files) == ["stereoset", "again"]


@pytest.mark.parametrize("flag", ["--batch-size", "--max-batch"])
def test_batch_size_has_one_name_and_its_old_one_still_works(flag: str) -> None:
    # the check runs before the serve extra or a model is touched
    result = runner.invoke(app, ["serve", "--bundle", "stereoset", flag, "0"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "--batch-size is 0" in str(result.exception)
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--batch-size" in help_text and "--max-batch" not in help_text


@pytest.mark.parametrize("echo", [False, True], ids=["kept", "echoed"])
def test_the_harness_shows_why_the_real_pld_serve_did_not_start(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], echo: bool
) -> None:
    """The bench's server harness starts `pld serve` as a user types it; one that refuses its
    arguments (before any model loads) exits, and the harness's error carries its own words."""
    from pld.bench.serve_harness import Server, ServerError

    missing = tmp_path / "missing.pld.json"
    log = tmp_path / "serve.log" if not echo else None  # echoed: kept in a temporary file
    with pytest.raises(ServerError) as raised:
        Server("--bundle", str(missing), log=log, echo=echo, ready_timeout=60)
    said = f"error: no bundle file '{missing}'"
    message = str(raised.value)
    assert "pld serve exited (2) before it was ready" in message and said in message, message
    kept = raised.value.log
    assert f"stderr, last 40 lines ({kept})" in message
    assert kept == log if log else kept.parent == Path(tempfile.gettempdir())
    assert said in kept.read_text()
    assert (said in capfd.readouterr().err) == echo  # streamed to the terminal only when asked
    if not log:
        kept.unlink()
        kept.with_suffix(".out").unlink()

"""`pld serve` on a device without the serve extra, and its argument checks (no model needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec

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

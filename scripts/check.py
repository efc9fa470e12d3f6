"""Lint, formatting and strict type checks over the whole tree; exits non-zero if any fails.

mypy cannot follow setuptools' package-dir mapping (the folder ``runtime/`` is ``pld.runtime``),
so this script mirrors the installed layout as symbolic links under ``build/typecheck/pld`` and
checks ``-p pld`` there: every package under its real import name. ``just lint`` and
``tests/test_checks.py`` (and so the README's test command) run it.

    python scripts/check.py [ruff|format|mypy ...]   # default: all three
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
LINTED = "runtime models bench evals distiller fleet serve pld scripts tests".split()


def mirror() -> Path:
    """Build ``build/typecheck/pld/...`` from pyproject's package-dir; returns the tree root."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "pld"
    top.mkdir(parents=True)
    for entry in sorted((ROOT / package_dir["pld"]).iterdir()):
        if entry.suffix in (".py", ".typed"):
            (top / entry.name).symlink_to(entry)
    for name, folder in sorted(package_dir.items()):
        parts = name.split(".")
        if len(parts) == 2:  # pld.X -> X/ (subpackages inside it come along)
            (top / parts[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return TREE


def run(name: str, cmd: list[str], cwd: Path = ROOT) -> bool:
    print(f"$ {' '.join(cmd)}", flush=True)
    ok = subprocess.run(cmd, cwd=cwd).returncode == 0
    print(f"{name}: {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def main(argv: list[str]) -> int:
    wanted = argv or ["ruff", "format", "mypy"]
    bin_dir = Path(sys.executable).parent
    ruff = str(bin_dir / "ruff") if (bin_dir / "ruff").exists() else "ruff"
    results = []
    if "ruff" in wanted:
        results.append(run("ruff check", [ruff, "check", *LINTED]))
    if "format" in wanted:
        results.append(run("ruff format", [ruff, "format", "--check", *LINTED]))
    if "mypy" in wanted:
        tree = mirror()
        cache = ROOT / "build" / "mypy-cache"
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(cache), "-p", "pld"]  # fmt: skip
        env_ok = run("mypy --strict", cmd, cwd=tree)
        results.append(env_ok)
    return 0 if all(results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main(sys.argv[1:]))

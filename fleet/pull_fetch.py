"""Fetching one file of a publication onto the device, and the checks on a fetched bundle that
need more than its bytes (the index's name and version, the model file the device has).

Reads stop at the length a signed index declared, so a store that sends more cannot fill the
disk; a staging write that fails (a full disk) says so and leaves the active bundles alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pld.models as models
from pld.errors import DeadlineError, FleetError, ModelMismatchError, RejectedError, StoreError
from pld.runtime import Bundle

from .index import IndexEntry, check_model_name
from .pull_faults import pause, write_fault
from .store import Store

__all__ = ["check_student", "download", "read_limited"]

_CHUNK = 64 << 10


def _disk_full(path: Path, exc: OSError) -> FleetError:
    return FleetError(
        f"cannot write {path} ({exc.strerror or exc}); free space on the device and pull again "
        "(the active bundles are untouched)"
    )


def read_limited(store: Store, rel: str, limit: int, *, optional: bool = False) -> bytes | None:
    """The bytes of ``rel`` (at most ``limit``), or None when ``optional`` and absent."""
    try:
        data = store.read(rel, limit=limit)
    except StoreError as exc:
        if optional and "does not exist" in str(exc):
            return None
        raise
    if len(data) > limit:
        raise RejectedError(f"{store.path(rel)} is larger than {limit} bytes; refusing it")
    return data


def download(store: Store, entry: IndexEntry, task: str, dest: Path) -> bytes:
    """Stream ``entry.file`` into ``dest``, reading at most ``entry.length`` + 1 bytes."""
    path = store.path(entry.file)
    limit = entry.length
    got = bytearray()
    missing = StoreError(
        f"{path} does not exist, but the index names it for task {task!r}; the publication is "
        "incomplete (publish again, or sync every file of it)"
    )
    try:
        src = store.open(path)
    except StoreError:
        raise
    except Exception as exc:
        failed = store.failed(path, exc)
        if store.is_missing(exc) and not isinstance(failed, DeadlineError):
            raise missing from None
        raise failed from None
    try:
        out = open(dest, "wb")  # closed below, with the source
    except OSError as exc:
        src.close()
        raise _disk_full(dest, exc) from None
    with src, out:
        while len(got) <= limit:
            try:
                if store.deadlines is not None:
                    store.deadlines.check(path)
                chunk = src.read(min(_CHUNK, limit + 1 - len(got), _CHUNK if got else 64))
            except StoreError:
                raise
            except Exception as exc:
                failed = store.failed(path, exc)
                if store.is_missing(exc) and not isinstance(failed, DeadlineError):
                    raise missing from None
                raise failed from None
            if not chunk:
                break
            first = not got
            got += chunk
            try:
                write_fault(str(dest))
                out.write(chunk)
                if first:
                    out.flush()
            except OSError as exc:
                raise _disk_full(dest, exc) from None
            if first:
                pause("download")  # test only: a kill here is a kill mid-download
        if len(got) > limit:
            raise RejectedError(
                f"the store sent more than the {limit} bytes the index says for task {task!r} "
                f"({path}); stopped reading there and refused it (a tampered or wrong file)"
            )
        try:
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise _disk_full(dest, exc) from None
    return bytes(got)


def check_student(
    bundle: Bundle,
    entry: IndexEntry,
    task: str,
    model: str | None,
    allow: bool,
    resolved: dict[str, models.ResolvedModel],
) -> tuple[str, bool]:
    """The model to run the bundle on, and whether it is not the file it was validated with."""
    if bundle.name != entry.name or bundle.version != entry.version:
        raise RejectedError(
            f"bundle for task {task!r} is {bundle.name} {bundle.version}, the index says "
            f"{entry.name} {entry.version}; refusing it (the publication is inconsistent)"
        )
    check_model_name(bundle.student.model, f"bundle {bundle.name} {bundle.version} (task {task!r})")
    ours, theirs = bundle.student.sha256, entry.student_sha256
    if ours and theirs and ours != theirs:
        raise RejectedError(
            f"bundle for task {task!r} was validated with model sha256 {ours[:12]}..., the index "
            f"says {theirs[:12]}...; refusing it (the publication is inconsistent)"
        )
    name = model or entry.student_model or bundle.student.model
    if name not in resolved:
        resolved[name] = models.resolve(name)
    have = resolved[name]
    expected = ours or theirs
    if not expected or have.sha256 == expected:
        return name, False
    if not allow:
        raise ModelMismatchError(
            f"bundle {bundle.name} {bundle.version} for task {task!r} was validated with model "
            f"file sha256 {expected[:12]}..., but this device's {name} is {have.path} (sha256 "
            f"{have.sha256[:12]}...); install that model, or pull with --allow-model-mismatch to "
            "run it anyway (status records it)"
        )
    return name, True

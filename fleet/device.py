"""The device directory: its layout, its lock, its trusted state, its generations and the one
atomic switch between them.

Every change on disk that a pull or a rollback makes goes through ``DeviceDir``. It knows files
and renames, not signatures, stores or models (``puller`` checks, ``device_prime`` primes,
``device_status`` reports and rolls back); the records it reads and writes are
``device_schema``'s. The runtime reads ``current/`` without importing this package
(``pld.runtime.device_bundle_path``)::

    D/lock                       fcntl lock: one writer at a time (pull or rollback)
    D/device-id                  a random id made once: the device's staged-rollout bucket
    D/sync.json                  the sync agent's state (``sync_state``), written atomically
    D/trusted.json               the key set and channel versions the device trusts
    D/objects/<sha256>.pld.json  verified bundle files, read-only
    D/generations/<n>/           <task>.pld.json (hard links to objects) and manifest.json
    D/current -> generations/<n> the active generation, switched with one os.replace
    D/states/                    prefix-state files, primed before the switch
    D/staging/                   the pull in progress; removed by the next pull
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from pld.errors import FleetError, PullLockedError
from pld.files import atomic_write

from .device_schema import Manifest, TrustedState

__all__ = ["DeviceDir", "check_name"]

# fullmatch only: with match, "$" also matches before a trailing newline
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DEVICE_ID = re.compile(r"[0-9a-f]{32}")
_SUFFIX = ".pld.json"
_T = TypeVar("_T")


def check_name(value: str, what: str) -> str:
    """Refuse a channel or task name that could not be a plain file name."""
    if not _NAME.fullmatch(value):
        raise FleetError(
            f"{what} name {value!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode(path: Path, kind: type[_T]) -> _T | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FleetError(
            f"{path} is damaged ({exc}); restore it from a backup or start the device directory "
            "afresh with pld device pull --trusted-key"
        ) from None


def _encode(obj: msgspec.Struct) -> bytes:
    return msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"


class DeviceDir:
    """The device directory at ``root``: paths, lock, trusted state, generations, switch."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.lock_path = self.root / "lock"
        self.trusted_path = self.root / "trusted.json"
        self.objects = self.root / "objects"
        self.generations = self.root / "generations"
        self.current = self.root / "current"
        self.states = self.root / "states"
        self.staging = self.root / "staging"
        self.device_id_path = self.root / "device-id"
        self.sync_path = self.root / "sync.json"

    # -- the lock ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, operation: str = "pull") -> Iterator[None]:
        """Hold the directory's lock; a second pull or rollback fails at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:  # O_NOFOLLOW: a symlink planted at D/lock must not make us truncate its target
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise FleetError(
                f"{self.lock_path} is a symbolic link; remove it (pld creates a plain file there)"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                what, pid = (holder + ["pull", "?"])[:2] if holder else ("pull", "?")
                raise PullLockedError(
                    f"another {what} is running on {self.root} (pid {pid}); wait for it to "
                    "finish, then try again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{operation} {os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock; the file stays (removing it would race)

    # -- the device id ---------------------------------------------------------------------

    def read_device_id(self) -> str | None:
        """The device's id, or None before its first pull made one."""
        try:
            text = self.device_id_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(f"cannot read {self.device_id_path} ({exc})") from None
        if not _DEVICE_ID.fullmatch(text):
            raise FleetError(
                f"{self.device_id_path} holds {text[:40]!r}, not a device id (32 hex digits); "
                "remove it and pull again (a new id puts the device in a new rollout bucket)"
            )
        return text

    def device_id(self) -> str:
        """The device's stable id: made once at random (128 bits), then kept. A copy of a
        device directory (a cloned image) must drop ``D/device-id`` to get its own bucket.
        """
        found = self.read_device_id()
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".device-id.{secrets.token_hex(6)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(f"{secrets.token_hex(16)}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, self.device_id_path)  # fails if another process made one first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        found = self.read_device_id()
        assert found is not None
        return found

    # -- trusted state and manifests -----------------------------------------------------

    def read_trusted(self) -> TrustedState | None:
        """The trusted state, or None before the first successful pull."""
        return _decode(self.trusted_path, TrustedState)

    def write_trusted(self, state: TrustedState) -> None:
        """Replace ``trusted.json`` atomically (and durably)."""
        atomic_write(self.trusted_path, _encode(state), fsync=True)

    def current_generation(self) -> int | None:
        """The number of the active generation, or None when nothing is active."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        name = Path(target).name
        if not name.isdigit():
            raise FleetError(f"{self.current} points to {target!r}, not a generation")
        return int(name)

    def manifest(self) -> Manifest | None:
        """The active generation's manifest, or None when nothing is active."""
        n = self.current_generation()
        if n is None:
            return None
        found = _decode(self.generations / str(n) / "manifest.json", Manifest)
        if found is None:
            raise FleetError(f"the active generation {n} of {self.root} has no manifest.json")
        return found

    def _generation_numbers(self) -> list[int]:
        if not self.generations.is_dir():
            return []
        return sorted(int(p.name) for p in self.generations.iterdir() if p.name.isdigit())

    def next_generation(self) -> int:
        """The number a new generation gets."""
        return max([0, *self._generation_numbers(), self.current_generation() or 0]) + 1

    # -- objects -------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        """Where the verified bundle file with this sha256 lives."""
        if not _HEX64.fullmatch(sha256):
            raise FleetError(f"{sha256!r} is not a hex sha256")
        return self.objects / f"{sha256}{_SUFFIX}"

    def read_object(self, sha256: str, length: int) -> bytes | None:
        """The object file's bytes if it is there with exactly this length and sha256."""
        try:
            data = self.object_path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        ok = len(data) == length and hashlib.sha256(data).hexdigest() == sha256
        return data if ok else None

    def valid_object(self, sha256: str, length: int) -> Path | None:
        """The object file if it is there with exactly this length and sha256."""
        return self.object_path(sha256) if self.read_object(sha256, length) is not None else None

    def add_object(self, staged: Path, sha256: str) -> Path:
        """Move a verified staging file into ``objects/``, read-only."""
        self.objects.mkdir(parents=True, exist_ok=True)
        target = self.object_path(sha256)
        os.chmod(staged, 0o444)
        os.replace(staged, target)
        _fsync_dir(self.objects)
        return target

    def fresh_staging(self) -> Path:
        """An empty staging folder for this pull."""
        folder = self.staging / str(os.getpid())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    # -- activation ----------------------------------------------------------------------

    def _place(self, sha256: str, task: str, target: Path) -> None:
        source = self.object_path(sha256)
        if not source.exists():  # an object removed by hand: the active file has the bytes
            source = self.current / f"{task}{_SUFFIX}"
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, target)

    def activate(
        self, manifest: Manifest, *, before_switch: Callable[[], None] | None = None
    ) -> Path:
        """Build generation ``manifest.generation`` in staging, rename it into ``generations/``,
        then point ``current`` at it with one ``os.replace``: every task switches at once.
        """
        n = manifest.generation
        build = self.staging / f"generation-{n}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        for task, entry in manifest.tasks.items():
            self._place(entry.sha256, check_name(task, "task"), build / f"{task}{_SUFFIX}")
        atomic_write(build / "manifest.json", _encode(manifest), fsync=True)
        _fsync_dir(build)
        self.generations.mkdir(exist_ok=True)
        final = self.generations / str(n)
        os.rename(build, final)
        _fsync_dir(self.generations)
        link = self.root / "current.tmp"
        link.unlink(missing_ok=True)
        os.symlink(f"generations/{n}", link)
        if before_switch is not None:
            before_switch()
        os.replace(link, self.current)
        _fsync_dir(self.root)
        return final

    # -- cleaning ------------------------------------------------------------------------

    def clean_stale(self) -> None:
        """Remove what a killed pull left: staging, ``current.tmp``, generations never switched
        to, temporary files. Call with the lock held.
        """
        shutil.rmtree(self.staging, ignore_errors=True)
        (self.root / "current.tmp").unlink(missing_ok=True)
        active = self.current_generation() or 0
        for n in self._generation_numbers():
            if n > active:
                shutil.rmtree(self.generations / str(n), ignore_errors=True)
        for tmp in self.root.glob(".trusted.json.*.tmp"):
            tmp.unlink(missing_ok=True)
        for folder, max_age in ((self.objects, 0.0), (self.states, 600.0)):
            # a classifier may be writing a state file right now: leave young ones alone
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - tmp.stat().st_mtime > max_age:
                        tmp.unlink()

    def clean_unreferenced(self) -> None:
        """Keep the active generation and the one before it (a process may still be opening
        its files); remove older generations and objects neither of them names.
        """
        active = self.current_generation()
        if active is None:
            return
        older = [n for n in self._generation_numbers() if n < active]
        keep = {active, *older[-1:]}
        for n in older[:-1]:
            shutil.rmtree(self.generations / str(n), ignore_errors=True)
        wanted: set[str] = set()
        for n in keep:
            m = _decode(self.generations / str(n) / "manifest.json", Manifest)
            if m is not None:
                wanted |= {e.sha256 for e in [*m.tasks.values(), *m.last_known_good.values()]}
        for path in self.objects.glob(f"*{_SUFFIX}") if self.objects.is_dir() else []:
            if path.name[: -len(_SUFFIX)] not in wanted:
                path.unlink(missing_ok=True)

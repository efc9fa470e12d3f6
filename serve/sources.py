"""Where a server's bundles come from: a device directory that `pld device pull` manages, or
bundle files named on the command line. Each ``Source`` lists the wanted bundle file per task and
a marker that changes when that list may have; loading, priming and swapping are ``registry``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from pld.errors import BundleError
from pld.runtime import device_run_settings, resolve_bundle_path

__all__ = ["BundleSource", "DeviceSource", "Source", "Wanted"]

_SUFFIX = ".pld.json"


@dataclass(frozen=True)
class Wanted:
    """One task's bundle file as a source lists it, with the model it runs on."""

    path: Path
    model: str | None = None  # None: the bundle's student
    allow_model_mismatch: bool = False
    sha256: str | None = None  # what the device's manifest says the file's bytes hash to


class Source:
    """Where the active bundles are listed; ``marker`` changes when they may have changed."""

    state_dir: Path | None = None

    def marker(self) -> str:
        raise NotImplementedError

    def wanted(self) -> dict[str, Wanted]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class DeviceSource(Source):
    """A device directory: ``D/current`` -> ``generations/<n>/<task>.pld.json``, states in
    ``D/states`` (the contract ``pld.runtime.store`` documents; pld.fleet is not imported)."""

    def __init__(self, device_dir: str | Path) -> None:
        self.root = Path(device_dir)
        self.state_dir = self.root / "states"

    def marker(self) -> str:
        try:
            return os.readlink(self.root / "current")
        except OSError:
            return ""

    def wanted(self) -> dict[str, Wanted]:
        try:
            generation = (self.root / "current").resolve(strict=True)
        except (OSError, RuntimeError):
            raise BundleError(
                f"device directory {self.root} has no active bundle; run 'pld device pull "
                f"--from SRC --device-dir {self.root} --trusted-key KEY' first"
            ) from None
        try:
            manifest = msgspec.json.decode((generation / "manifest.json").read_bytes())
            recorded = {t: e["sha256"] for t, e in manifest["tasks"].items()}
        except (OSError, msgspec.DecodeError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(
                f"the active generation {generation} of {self.root} has no readable "
                f"manifest.json ({exc}); run 'pld device pull' again"
            ) from None
        out = {}
        for path in sorted(generation.glob(f"*{_SUFFIX}")):
            task = path.name[: -len(_SUFFIX)]
            if not isinstance(recorded.get(task), str):
                raise BundleError(
                    f"{path} is not in the manifest of {generation}; the device directory was "
                    "changed by hand: run 'pld device pull' again"
                )
            model, allow = device_run_settings(path)
            out[task] = Wanted(path, model, allow, recorded[task])
        if not out:
            raise BundleError(
                f"device directory {self.root} has no active task in {generation}; publish a "
                "bundle to its channel and run 'pld device pull'"
            )
        return out

    def describe(self) -> str:
        return f"device directory {self.root}"


class BundleSource(Source):
    """Bundle files (or shipped names) given on the command line, as ``[TASK=]NAME_OR_PATH``;
    a reload re-reads the files."""

    def __init__(self, specs: list[str]) -> None:
        self.files: dict[str, Path] = {}
        for spec in specs:
            task, sep, where = spec.partition("=")
            if not sep:
                task, where = "", spec
            path = resolve_bundle_path(where)
            if not task:
                task = path.name[: -len(_SUFFIX)] if path.name.endswith(_SUFFIX) else path.stem
            if task in self.files:
                raise BundleError(
                    f"task {task!r} is given twice (--bundle {spec}); name one of them with "
                    "--bundle OTHER_TASK=NAME_OR_PATH"
                )
            self.files[task] = path

    def marker(self) -> str:
        parts = []
        for task, path in self.files.items():
            try:
                st = path.stat()
                parts.append(f"{task}:{st.st_mtime_ns}:{st.st_size}")
            except OSError:
                parts.append(f"{task}:missing")
        return "|".join(parts)

    def wanted(self) -> dict[str, Wanted]:
        return {task: Wanted(path) for task, path in self.files.items()}

    def describe(self) -> str:
        return ", ".join(f"{t}={p}" for t, p in self.files.items())

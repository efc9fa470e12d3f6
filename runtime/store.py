"""Bundles shipped with pld, the rule that turns ``--bundle NAME_OR_PATH`` into a file, and
where a device directory keeps its active bundles.

Knows where bundles live (package data, a device directory) and nothing about their contents.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec

from pld.errors import BundleError

__all__ = ["device_bundle_path", "device_run_settings", "resolve_bundle_path", "shipped_bundles"]

_SUFFIX = ".pld.json"


def shipped_bundles() -> dict[str, Path]:
    """Name -> file of every bundle shipped in the package, sorted by name."""
    root = resources.files("pld.runtime.bundles")
    found = {
        entry.name[: -len(_SUFFIX)]: Path(str(entry))
        for entry in root.iterdir()
        if entry.name.endswith(_SUFFIX)
    }
    return dict(sorted(found.items()))


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """A bundle file from a path or the name of a shipped bundle."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_bundles()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise BundleError(
        f"no bundle file {str(name_or_path)!r} and no shipped bundle of that name; "
        f"pass a path to a .pld.json file or one of: {', '.join(shipped) or '(none shipped)'}"
    )


# The contract with ``pld.fleet`` (which owns the device directory; the runtime never imports
# it): ``D/current`` is a symbolic link to the active generation, a folder holding one
# ``<task>.pld.json`` per task and a ``manifest.json`` whose ``tasks.<task>`` records ``model``
# (the model to run it on when not the bundle's own, or null) and ``allow_model_mismatch``.
# ``pld device pull`` and ``pld device rollback`` replace the link atomically, and keep the
# previous generation until the next pull, so a path resolved here stays readable.


def device_bundle_path(device_dir: str | Path, task: str | None = None) -> Path:
    """The active bundle file of ``task`` (default: the only task) in a device directory.

    The ``current`` link is resolved once, so the file and its settings
    (``device_run_settings``) come from one activation even while a pull switches it.
    """
    root = Path(device_dir)
    try:
        generation = (root / "current").resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(
            f"device directory {root} has no active bundle; run 'pld device pull --from SRC "
            f"--device-dir {root} --trusted-key KEY' first"
        ) from None
    tasks = sorted(p.name[: -len(_SUFFIX)] for p in generation.glob(f"*{_SUFFIX}"))
    if task is None:
        if len(tasks) != 1:
            raise BundleError(
                f"device directory {root} has {len(tasks)} active tasks "
                f"({', '.join(tasks) or 'none'}); pick one with --task"
            )
        task = tasks[0]
    path = generation / f"{task}{_SUFFIX}"
    if Path(task).name != task or not path.is_file():
        raise BundleError(
            f"device directory {root} has no active bundle for task {task!r} (active: "
            f"{', '.join(tasks) or 'none'}); publish one to its channel and run 'pld device pull'"
        )
    return path


def device_run_settings(bundle_path: Path) -> tuple[str | None, bool]:
    """``(model, allow_model_mismatch)`` recorded for a file ``device_bundle_path`` returned."""
    try:
        manifest = msgspec.json.decode((bundle_path.parent / "manifest.json").read_bytes())
        entry = manifest["tasks"][bundle_path.name[: -len(_SUFFIX)]]
        model, allow = entry.get("model"), entry.get("allow_model_mismatch", False)
    except (OSError, msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return None, False
    return (model if isinstance(model, str) else None), allow is True

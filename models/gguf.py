"""Read the key/value metadata at the head of a GGUF file, in pure Python.

Only scalars and strings come back; arrays (the tokenizer's vocabulary, merges) are skipped.
This module knows the GGUF container format (versions 2 and 3), not what any key means.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import cast

from pld.errors import ModelError

__all__ = ["MetadataValue", "read_metadata"]

MetadataValue = str | int | float | bool

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
_STRING = 8
_ARRAY = 9
# Fixed-size value types: GGUF type id -> struct format (little-endian).
_SCALARS: dict[int, str] = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}


class _Corrupt(Exception):
    """Internal: the header is truncated or holds an impossible value."""


class _Reader:
    """A cursor over the mapped file; every read is bounds-checked."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def unpack(self, fmt: str) -> int | float | bool:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise _Corrupt(f"truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return cast(int | float | bool, value)

    def integer(self, fmt: str) -> int:
        value = self.unpack(fmt)
        assert isinstance(value, int)  # fmt is an integer format
        return value

    def count(self) -> int:
        return self.integer("<Q")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"length {n} at byte {self.pos} runs past the end of the file")
        self.pos += n

    def string(self) -> str:
        n = self.count()
        start = self.pos
        self.skip(n)
        try:
            return self.buf[start : self.pos].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"invalid UTF-8 in a string at byte {start}") from exc

    def skip_array(self) -> None:
        elem_type = self.integer("<I")
        n = self.count()
        if elem_type in _SCALARS:
            self.skip(n * struct.calcsize(_SCALARS[elem_type]))
        elif elem_type == _STRING:
            # Strings are length-prefixed, so they must be walked; a vocabulary of 262,144
            # tokens takes a few tens of milliseconds this way.
            buf, pos, size = self.buf, self.pos, self.size
            for _ in range(n):
                if pos + 8 > size:
                    raise _Corrupt(f"truncated string array at byte {pos}")
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            if pos > size:
                raise _Corrupt("string array runs past the end of the file")
            self.pos = pos
        elif elem_type == _ARRAY:
            for _ in range(n):
                self.skip_array()
        else:
            raise _Corrupt(f"unknown array element type {elem_type}")

    def value(self, value_type: int) -> MetadataValue | None:
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            self.skip_array()
            return None
        raise _Corrupt(f"unknown value type {value_type}")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, MetadataValue]:
    """Return the scalar and string metadata of the GGUF file at ``path``."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            magic = f.read(4)
            if magic != _MAGIC:
                raise ModelError(
                    f"'{p}' is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); "
                    "pass a path to a .gguf file or a registry name (see 'pld models list')"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, p)
    except OSError as exc:
        raise ModelError(f"cannot read model file '{p}': {exc.strerror or exc}") from exc


def _parse(buf: mmap.mmap, path: Path) -> dict[str, MetadataValue]:
    reader = _Reader(buf)
    reader.skip(4)
    try:
        version = reader.unpack("<I")
        if version not in _SUPPORTED_VERSIONS:
            raise ModelError(
                f"'{path}' is GGUF version {version}, which pld cannot read (it reads versions "
                "2 and 3); convert it with a current llama.cpp"
            )
        reader.count()  # number of tensors: not needed for the metadata
        n_kv = reader.count()
        metadata: dict[str, MetadataValue] = {}
        for _ in range(n_kv):
            key = reader.string()
            value_type = reader.integer("<I")
            value = reader.value(value_type)
            if value is not None:
                metadata[key] = value
        return metadata
    except _Corrupt as exc:
        raise ModelError(
            f"'{path}' is not a valid GGUF file ({exc}); the file is truncated or corrupt, "
            "download it again"
        ) from exc

"""Facts about running processes that the benchmarks and the tests measure by: a process's peak
resident memory, and a free TCP port on this machine. Reads Linux's /proc where it exists; knows
nothing of pld's packages.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import overload

__all__ = ["free_port", "peak_rss_mb"]


@overload
def peak_rss_mb() -> float: ...
@overload
def peak_rss_mb(pid: int) -> float | None: ...
def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory in MiB (VmHWM) of process ``pid``, by default this one; None where
    the system does not say (another process without /proc)."""
    try:
        status = Path(f"/proc/{'self' if pid is None else pid}/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    if pid is None or pid == os.getpid():
        import resource  # POSIX only; the high-water mark is in KiB on Linux, bytes on macOS

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the system's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

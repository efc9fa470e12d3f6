"""Test-only fault injection for `pld device pull`: pause points and a failing staging write.

The kill tests start a real `pld device pull`, wait for ``pause: POINT`` on its stderr and
SIGKILL it exactly there; the disk-full test makes the staging write fail where no small
filesystem can be mounted. Both are inert unless their environment variable is set:

- ``PLD_PULL_PAUSE=download|verified|priming|activate``: print ``pause: POINT``, sleep 120 s;
- ``PLD_PULL_FAIL_WRITE=ENOSPC``: a staging write raises ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import sys
import time

__all__ = ["POINTS", "pause", "write_fault"]

POINTS = ("download", "verified", "priming", "activate")


def pause(point: str) -> None:
    """Test only: stop at ``point`` (up to 120 s) when ``PLD_PULL_PAUSE`` names it."""
    if os.environ.get("PLD_PULL_PAUSE") == point:
        print(f"pause: {point}", file=sys.stderr, flush=True)
        time.sleep(120)


def write_fault(path: str) -> None:
    """Test only: raise the disk-full error a staging write would get, when asked to."""
    if os.environ.get("PLD_PULL_FAIL_WRITE") == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

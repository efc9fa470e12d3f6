"""pld serve: the on-device HTTP server; imported by nothing but the CLI.

One process, one loaded model, every task of a device directory with its own primed prefix;
a worker thread micro-batches a bounded queue; new bundles are primed beside the old ones and
swapped in between batches. Needs the ``serve`` extra (starlette, uvicorn, prometheus-client);
importing this package loads none of it (names below are imported on first use)::

    from pld.serve import DeviceSource, run
    run(DeviceSource("/var/lib/pld"), port=8080)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pld.serve.app import create_app
    from pld.serve.registry import Registry
    from pld.serve.server import run
    from pld.serve.service import ServeOptions, Service
    from pld.serve.sources import BundleSource, DeviceSource

__all__ = [
    "BundleSource",
    "DeviceSource",
    "Registry",
    "ServeOptions",
    "Service",
    "create_app",
    "run",
]

_LAZY = {
    "BundleSource": "sources",
    "DeviceSource": "sources",
    "Registry": "registry",
    "ServeOptions": "service",
    "Service": "service",
    "create_app": "app",
    "run": "server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

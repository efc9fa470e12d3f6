"""pld.fleet: signed bundle updates for devices (publish, pull, activate, roll back, and the
sync agent's state that monitoring reads).

Needs the ``fleet`` extra (cryptography, fsspec, aiohttp); ``pld.runtime`` never imports it.
Importing this package loads nothing: each name below is imported from its module (``_LAZY``)
on first use, so ``pld --help`` works on a device without the extra.

    from pld.fleet import SigningKey, publish
    publish(["stereoset"], "/srv/pld", channel="stable", keys=[SigningKey.load("signing.key")])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pld.fleet.detached import sign_bundle, verify_bundle
    from pld.fleet.device import DeviceDir
    from pld.fleet.device_status import DeviceStatus, RollbackResult, rollback, status
    from pld.fleet.keys import PublicKey, SigningKey, generate_keys
    from pld.fleet.publish_keys import rotate_keys
    from pld.fleet.publisher import PublishedTask, PublishResult, publish
    from pld.fleet.pull_result import PullResult
    from pld.fleet.puller import pull
    from pld.fleet.sync_state import SyncState, read_sync_state

__all__ = [
    "DeviceDir",
    "DeviceStatus",
    "PublicKey",
    "PublishResult",
    "PublishedTask",
    "PullResult",
    "RollbackResult",
    "SigningKey",
    "SyncState",
    "generate_keys",
    "publish",
    "pull",
    "read_sync_state",
    "rollback",
    "rotate_keys",
    "sign_bundle",
    "status",
    "verify_bundle",
]

# name -> the module of pld.fleet that defines it. No module may share an exported name
# (publish() lives in publisher.py): importing a submodule sets it as the package's attribute,
# and `from pld.fleet import publish` would then give the module instead of the function.
_LAZY = {
    "DeviceDir": "device",
    "DeviceStatus": "device_status",
    "PublicKey": "keys",
    "PublishResult": "publisher",
    "PublishedTask": "publisher",
    "PullResult": "pull_result",
    "RollbackResult": "device_status",
    "SigningKey": "keys",
    "SyncState": "sync_state",
    "generate_keys": "keys",
    "publish": "publisher",
    "pull": "puller",
    "read_sync_state": "sync_state",
    "rollback": "device_status",
    "rotate_keys": "publish_keys",
    "sign_bundle": "detached",
    "status": "device_status",
    "verify_bundle": "detached",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

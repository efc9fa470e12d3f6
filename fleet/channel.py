"""`pld channel promote|halt`: a staged rollout's next share, as the channel's next signed index.

Promote and halt are publications like any other: the current index is verified (as
``publish`` verifies it) before its tasks are carried into a new signature with a higher
version; only the share of the tasks in a staged rollout changes. Promoting to 100 % ends the
rollout (the entry no longer names a previous bundle); halting sets the share to 0 %: devices
that moved keep the new bundle, no other device moves. Knows nothing about devices.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import FleetError

from .keys import PublicKey, SigningKey
from .publish_store import channel_dir, current_index, signing_store, write_index
from .publisher import PublishedTask, PublishResult

__all__ = ["set_rollout"]


def set_rollout(
    dest: str | Path,
    *,
    channel: str,
    rollout: int,
    keys: Sequence[SigningKey],
    tasks: Sequence[str] = (),
    root_keys: Sequence[PublicKey] = (),
    expires_in_days: float = 30,
    now: dt.datetime | None = None,
) -> PublishResult:
    """Sign channel ``channel``'s next index with its staged rollouts at ``rollout`` percent.

    ``tasks`` limits the change to those tasks (default: every task in a staged rollout); a
    named task that is not in one is refused, as is a share below the current one unless it
    is 0 (a halt): a device that moved never moves back, so a smaller share would not shrink
    anything. Keys are checked as ``publish`` checks them.
    """
    folder = channel_dir(channel)
    store, keys, keyset = signing_store(
        dest, keys, root_keys, expires_in_days=expires_in_days, rollout=rollout, doing="sign"
    )
    current = current_index(store, channel, keyset, carry=True)
    if current is None:
        raise FleetError(f"channel {channel!r} has no index in {store.url}; publish first")
    staged = sorted(t for t, e in current.tasks.items() if e.previous is not None)
    for task in tasks:
        if task not in current.tasks:
            raise FleetError(
                f"channel {channel!r} serves no task {task!r}; its tasks: "
                f"{', '.join(sorted(current.tasks)) or 'none'}"
            )
        if task not in staged:
            raise FleetError(
                f"task {task!r} of channel {channel!r} is not in a staged rollout (every device "
                "takes its bundle); start one with pld bundle publish --rollout"
            )
    chosen = list(tasks) or staged
    if not chosen:
        raise FleetError(
            f"no task of channel {channel!r} is in a staged rollout; start one with "
            "pld bundle publish --rollout"
        )
    updated = dict(current.tasks)
    for task in chosen:
        entry = updated[task]
        if 0 < rollout < entry.rollout:
            raise FleetError(
                f"task {task!r} is rolled out to {entry.rollout}%; devices that moved never move "
                f"back, so {rollout}% would change nothing: halt it (pld channel halt, 0%) or "
                "publish the old bundle as a new version"
            )
        updated[task] = msgspec.structs.replace(
            entry, rollout=rollout, previous=None if rollout == 100 else entry.previous
        )
    version = current.version + 1
    if store.exists(f"{folder}/index-{version}.json"):
        raise FleetError(
            f"{store.path(f'{folder}/index-{version}.json')} exists, but {folder}/index.json is "
            f"version {current.version}; restore index.json from the newest index-<N>.json"
        )
    index = write_index(store, channel, version, updated, keys, expires_in_days, now)
    return PublishResult(
        channel=channel,
        version=version,
        index=store.path(f"{folder}/index.json"),
        expires=index.expires,
        tasks=[
            PublishedTask(
                task=task,
                name=e.name,
                version=e.version,
                sha256=e.sha256,
                file=e.file,
                new=False,
                rollout=e.rollout,
                previous_version=e.previous.version if e.previous else None,
            )
            for task in chosen
            for e in [updated[task]]
        ],
    )

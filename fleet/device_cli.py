"""`pld device pull|sync|status|rollback`: a thin layer over ``pld.fleet``'s device directory.

Imports nothing of the fleet extra at module level, so `pld` runs on a device without it.
Each command prints lines for people, then one JSON line last; refusals raise ``pld.errors``
classes, which ``pld.cli`` turns into one line and a non-zero exit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pld.runtime.cli_options import AllowModelMismatchOpt, DeviceDirRequiredOpt, ModelOpt

device_app = typer.Typer(no_args_is_help=True, help="Signed bundle updates on this device.")


# Options pull and sync share, with one help text each.
SourceOpt = Annotated[
    str, typer.Option("--from", help="The publication: a directory or an fsspec URL.")
]
TrustedKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-key",
        help="The publisher's signing.pub (repeatable); needed on the first pull only.",
    ),
]
ThresholdOpt = Annotated[
    int, typer.Option(help="Valid signatures from distinct trusted keys required.")
]
ChannelOpt = Annotated[str, typer.Option(help="The channel to follow.")]
RequestTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds one request to the store may take.")
]
PullTimeoutOpt = Annotated[
    float,
    typer.Option(help="Seconds all requests of one pull may take together (not priming)."),
]


def _need_fleet() -> None:
    try:
        import cryptography  # noqa: F401
        import fsspec  # noqa: F401
    except ImportError as exc:
        from pld.errors import DependencyError

        raise DependencyError(
            f"pld device pull needs the fleet extra ({exc.name} is missing); "
            "pip install 'pld[fleet]'"
        ) from None


def _echo_json(obj: object) -> None:
    import msgspec

    typer.echo(msgspec.json.encode(obj).decode())


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


@device_app.command("pull")
def pull_cmd(
    source: SourceOpt,
    device_dir: DeviceDirRequiredOpt,
    trusted_key: TrustedKeyOpt = None,
    threshold: ThresholdOpt = 1,
    channel: ChannelOpt = "stable",
    allow_model_mismatch: AllowModelMismatchOpt = False,
    model: ModelOpt = None,
    request_timeout: RequestTimeoutOpt = 30.0,
    pull_timeout: PullTimeoutOpt = 300.0,
    nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="Lower this pull's CPU priority by N (19: serving keeps the cores while a "
            "new bundle is primed; 0: prime as fast as possible).",
        ),
    ] = 19,
) -> None:
    """Fetch, verify, prime and atomically activate what a signed channel index names.

    With --allow-model-mismatch, a bundle validated with another model file is accepted, and
    pld device status says so."""
    _need_fleet()
    if nice:
        os.nice(nice)  # this process only: priming a long prompt must not starve the server
    from .keys import PublicKey
    from .puller import pull

    keys = [PublicKey.load(p) for p in trusted_key or []]
    result = pull(
        source,
        device_dir,
        channel=channel,
        trusted_keys=keys,
        threshold=threshold,
        allow_model_mismatch=allow_model_mismatch,
        model=model,
        request_timeout=request_timeout,
        pull_timeout=pull_timeout,
        log=_log,
    )
    for c in result.changed:
        note = "  (model mismatch allowed)" if c.allow_model_mismatch else ""
        typer.echo(f"{c.task}: {c.old_version or '(none)'} -> {c.new_version}{note}")
    for task in result.removed:
        typer.echo(f"{task}: removed (no longer in channel {result.channel!r})")
    for task in result.held:
        typer.echo(f"{task}: held (rolled back on this device)")
    for task, version in result.deferred.items():
        typer.echo(f"{task}: {version} is in a staged rollout that does not include this device")
    if not (result.changed or result.removed):
        typer.echo(
            f"up to date: channel {result.channel!r} index version {result.index_version}"
            f" ({len(result.unchanged)} task(s) unchanged)"
        )
    else:
        t = result.timings
        typer.echo(
            f"activated generation {result.generation} in {t.total_ms:.0f} ms (fetch "
            f"{t.fetch_ms:.0f}, verify {t.verify_ms:.0f}, prime {t.prime_ms:.0f}, activate "
            f"{t.activate_ms:.0f})"
        )
    _echo_json(result)


@device_app.command("sync")
def sync_cmd(
    source: SourceOpt,
    device_dir: DeviceDirRequiredOpt,
    every: Annotated[
        str, typer.Option(help="Time between pulls: 30s, 15m, 1h (a number alone: seconds).")
    ] = "15m",
    jitter: Annotated[
        str, typer.Option(help="Spread each wait by up to this share of it, e.g. 20%.")
    ] = "20%",
    max_backoff: Annotated[
        str,
        typer.Option(help="Longest wait after failures (they double from min(--every, 1m))."),
    ] = "1h",
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One attempt, then exit (for a systemd timer): skipped while backing off.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Attempt now even while backing off.")
    ] = False,
    trusted_key: TrustedKeyOpt = None,
    threshold: ThresholdOpt = 1,
    channel: ChannelOpt = "stable",
    allow_model_mismatch: AllowModelMismatchOpt = False,
    model: ModelOpt = None,
    request_timeout: RequestTimeoutOpt = 30.0,
    pull_timeout: PullTimeoutOpt = 300.0,
    nice: Annotated[
        int, typer.Option(min=0, max=19, help="Lower the agent's CPU priority by N.")
    ] = 19,
) -> None:
    """Pull on a schedule with jitter and backoff; D/sync.json records each attempt.

    A running pld serve on the same device directory picks up what a pull activates. Exit
    status with --once: 0 when the attempt succeeded or was skipped (backing off), 1 when it
    failed (the reason is in D/sync.json and pld device status).
    """
    _need_fleet()
    import signal
    import threading

    from .keys import PublicKey
    from .sync import parse_interval, parse_jitter, run_agent

    every_s = parse_interval(every)
    spread = parse_jitter(jitter)
    cap_s = parse_interval(max_backoff, "--max-backoff")
    if nice:
        os.nice(nice)
    stop = threading.Event()
    if not once and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the pull in flight, then exit

    def report(outcome: object) -> None:
        from .sync import SyncOutcome

        assert isinstance(outcome, SyncOutcome)
        st = outcome.state
        if outcome.error is not None:
            _log(f"sync failed ({st.last_error.reason if st.last_error else '?'}): "
                 f"{outcome.error}")  # fmt: skip
        elif outcome.result is not None:
            r = outcome.result
            for c in r.changed:
                _log(f"{c.task}: {c.old_version or '(none)'} -> {c.new_version}")
            for task, version in r.deferred.items():
                _log(f"{task}: {version} is in a staged rollout that does not include this device")
        _log(f"next attempt at {_stamp(st.next_attempt)}")
        _echo_json(outcome)

    last = run_agent(
        source,
        device_dir,
        channel=channel,
        every_s=every_s,
        jitter=spread,
        max_backoff_s=cap_s,
        once=once,
        force=force,
        stop=stop,
        on_attempt=report,
        trusted_keys=[PublicKey.load(p) for p in trusted_key or []],
        threshold=threshold,
        allow_model_mismatch=allow_model_mismatch,
        model=model,
        request_timeout=request_timeout,
        pull_timeout=pull_timeout,
        log=_log,
    )
    if last is not None and last.skipped:
        typer.echo(f"backing off after failures: next attempt at {_stamp(last.state.next_attempt)}")
        _echo_json(last)
    if once and last is not None and last.error is not None:
        raise typer.Exit(1)


def _stamp(when: float | None) -> str:
    import datetime as dt

    if when is None:
        return "-"
    return dt.datetime.fromtimestamp(when, dt.UTC).replace(microsecond=0).isoformat()


@device_app.command("status")
def status_cmd(device_dir: DeviceDirRequiredOpt) -> None:
    """Show each task's active bundle, the index version it came from, and its last-known-good."""
    from .device_status import status

    st = status(device_dir)
    if not st.tasks:
        typer.echo(f"{st.device_dir}: no active bundle; run pld device pull")
    else:
        typer.echo(f"{st.device_dir}: generation {st.generation}, activated {st.activated_at}")
        rows = [("task", "bundle", "version", "sha256", "channel", "index", "last-known-good")]
        for t in st.tasks:
            lkg = t.last_known_good
            rows.append(
                (
                    t.task,
                    t.name,
                    t.version
                    + (" (model mismatch allowed)" if t.allow_model_mismatch else "")
                    + (" (rolled back)" if t.held_from else ""),
                    t.sha256[:12],
                    t.channel,
                    f"v{t.index_version}",
                    f"{lkg.version} ({lkg.sha256[:12]})" if lkg else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if st.device_id is not None:
        typer.echo(f"device id: {st.device_id}")
    sync = st.sync
    if sync is not None:
        err = sync.last_error
        typer.echo(
            f"sync from {sync.source} (channel {sync.channel}, every {sync.every_s:g} s): last "
            f"check {_stamp(sync.last_check)}"
            + (f" ({sync.last_result})" if sync.last_result else "")
            + f", last success {_stamp(sync.last_success)}, next attempt {_stamp(sync.next_attempt)}"
        )
        if err is not None:
            typer.echo(
                f"last attempt failed ({err.reason}, {sync.consecutive_failures} in a row) at "
                f"{_stamp(err.at)}: {err.message}"
            )
        for task, version in sync.deferred.items():
            typer.echo(
                f"{task}: {version} is in a staged rollout that does not include this device"
            )
    if st.key_version is not None:
        channels = ", ".join(f"{c} v{v}" for c, v in st.channels.items()) or "none"
        typer.echo(
            f"trusted keys (key set v{st.key_version}, threshold {st.threshold}): "
            f"{', '.join(st.keyids)}; channels: {channels}"
        )
    _echo_json(st)


@device_app.command("rollback")
def rollback_cmd(
    device_dir: DeviceDirRequiredOpt,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="The task (default: every task).")
    ] = None,
) -> None:
    """Put the last-known-good bundle back, atomically (this device only; see the README)."""
    from .device_status import rollback

    result = rollback(device_dir, task, log=_log)
    for r in result.rolled_back:
        typer.echo(f"{r.task}: {r.from_version} -> {r.to_version} (rolled back)")
    for t in result.skipped:
        typer.echo(f"{t}: no last-known-good; left as it is")
    _echo_json(result)

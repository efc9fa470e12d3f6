"""`pld keys ...` and `pld bundle sign|verify|publish`: a thin layer over ``pld.fleet``.

Imports nothing of the fleet extra at module level, so `pld` runs on a device without it: each
command imports what it needs. Errors propagate to ``pld.cli``, which prints them (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from pld.errors import DependencyError

if TYPE_CHECKING:
    from .publisher import PublishResult

keys_app = typer.Typer(no_args_is_help=True, help="Signing keys for bundle updates.")
channel_app = typer.Typer(
    no_args_is_help=True, help="Staged rollouts of a published channel: promote, halt."
)

ExpiresOpt = Annotated[
    float, typer.Option("--expires-in", help="Days until devices refuse this index.")
]
RootPubOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--root-pub",
        help="Root public key (root.pub) to verify the store's keys.json with (repeatable; "
        "needed when --key is an index key).",
    ),
]
KeyOpt = Annotated[
    list[Path],
    typer.Option("--key", help="Private signing key (signing.key); repeat for several signatures."),
]


def require_fleet_extra() -> None:
    """Refuse with the install command when the fleet extra is missing (a bare device)."""
    from importlib.util import find_spec

    missing = [name for name in ("cryptography", "fsspec") if find_spec(name) is None]
    if missing:
        raise DependencyError(
            f"{' and '.join(missing)} not installed; bundle updates need the fleet extra: "
            "pip install 'pld[fleet]'"
        )


@keys_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for the key pair.")],
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="root (signs key sets; keep it offline, 2 or more with a threshold) or index "
            "(signs channel indexes). Without: one signing key holding both roles.",
        ),
    ] = None,
) -> None:
    """Write a new ed25519 key pair: OUT/ROLE.key (private, mode 0600) and OUT/ROLE.pub."""
    require_fleet_extra()
    from .keys import generate_keys

    key_path, pub_path, keyid = generate_keys(out, role)
    typer.echo(
        f"private key: {key_path} (keep it off devices{', and offline' if role == 'root' else ''})"
    )
    use = {
        None: "give it to devices: --trusted-key",
        "root": "give it to devices (--trusted-key) and publishers (--root-pub)",
        "index": "name it in the key set: pld keys rotate --index-key",
    }[role]
    typer.echo(f"public key:  {pub_path} ({use})")
    typer.echo(f"key id:      {keyid}")


@keys_app.command("rotate")
def rotate(
    to: Annotated[str, typer.Option("--to", help="Publication directory or fsspec URL.")],
    key: Annotated[
        list[Path], typer.Option("--key", help="A root key devices trust now (repeatable).")
    ],
    new_key: Annotated[
        list[Path] | None,
        typer.Option("--new-key", help="A root key from now on (repeatable; default: the same)."),
    ] = None,
    index_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--index-key",
            help="Public key (index.pub) that signs indexes from now on (repeatable; default: "
            "unchanged, or the root keys in a single-key setup).",
        ),
    ] = None,
    threshold: Annotated[
        int | None, typer.Option(help="Root signatures a device requires (default: unchanged).")
    ] = None,
    index_threshold: Annotated[int, typer.Option(help="Index signatures a device requires.")] = 1,
    reset_versions: Annotated[
        bool,
        typer.Option(
            "--reset-versions",
            help="Void every channel's version floor on devices (an index key was stolen).",
        ),
    ] = False,
) -> None:
    """Write keys.json in --to DEST: the next key set, signed by the current and new root keys."""
    require_fleet_extra()
    from .keys import PublicKey, SigningKey
    from .publish_keys import rotate_keys

    keyset = rotate_keys(
        to,
        current_keys=[SigningKey.load(p) for p in key],
        new_keys=[SigningKey.load(p) for p in new_key or []],
        index_keys=[PublicKey.load(p) for p in index_key or []],
        threshold=threshold,
        index_threshold=index_threshold,
        reset_versions=reset_versions,
    )
    index = keyset.index
    typer.echo(
        f"key set version {keyset.version}: root {', '.join(keyset.keys)} (threshold "
        f"{keyset.threshold}); index "
        + (f"{', '.join(index.keys)} (threshold {index.threshold})" if index else "the root keys")
        + ("; version floors reset" if keyset.floors_reset == keyset.version else "")
    )
    if keyset.threshold < 2:
        typer.echo("note: a root threshold of 2 or more (--threshold) is recommended", err=True)
    typer.echo(msgspec.json.encode(keyset).decode())


def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle file to sign.")],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (signing.key).")],
) -> None:
    """Write BUNDLE.sig, a detached signature of the bundle's content, for side-loading it."""
    require_fleet_extra()
    from .detached import sign_bundle
    from .keys import SigningKey

    signing_key = SigningKey.load(key)
    out = sign_bundle(bundle, signing_key)
    typer.echo(f"signed {bundle} with key {signing_key.keyid}: {out}")


def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle file (its BUNDLE.sig lies beside it).")],
    pubkey: Annotated[
        list[Path], typer.Option("--pubkey", help="Trusted public key (signing.pub); repeatable.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Require the signature to be for this bundle.")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Require this bundle version.")
    ] = None,
) -> None:
    """Check BUNDLE.sig against trusted public keys; exit non-zero unless it verifies."""
    require_fleet_extra()
    from .detached import verify_bundle
    from .keys import PublicKey

    keyid = verify_bundle(bundle, [PublicKey.load(p) for p in pubkey], name=name, version=version)
    typer.echo(f"ok: {bundle} is signed by trusted key {keyid}")


def publish(
    bundles: Annotated[list[str], typer.Argument(help="Bundle files or shipped bundle names.")],
    to: Annotated[str, typer.Option("--to", help="Publication directory or fsspec URL.")],
    channel: Annotated[str, typer.Option("--channel", help="Channel, e.g. stable or canary.")],
    key: KeyOpt,
    root_pub: RootPubOpt = None,
    carry: Annotated[
        bool,
        typer.Option(
            help="Carry the channel's other tasks forward (--no-carry: after a rotation that "
            "reset the version floors, publish every task again)."
        ),
    ] = True,
    rollout: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="Percent of devices that take these bundles (a staged rollout; the others keep "
            "the channel's bundle from before). Widen it with pld channel promote.",
        ),
    ] = 100,
    check_data: Annotated[
        list[str] | None,
        typer.Option(
            "--check-data",
            help="TASK=FILE.jsonl: classify its --check-n shortest records ({text, label}; each "
            "label's shortest in turn) with the student now and publish them as the task's "
            "acceptance check, which devices run before activation (repeatable).",
        ),
    ] = None,
    check_n: Annotated[int, typer.Option(help="Records in each acceptance check.")] = 20,
    check_tolerance: Annotated[
        float, typer.Option(help="A device refuses below the recorded accuracy minus this.")
    ] = 0.05,
    expires_in: ExpiresOpt = 30,
) -> None:
    """Copy bundles to DEST and sign the channel's next index (its version one higher)."""
    require_fleet_extra()
    from .keys import PublicKey, SigningKey
    from .publisher import publish as publish_bundles

    checks = _check_sets(bundles, check_data or [], check_n, check_tolerance)

    result = publish_bundles(
        bundles,
        to,
        channel=channel,
        keys=[SigningKey.load(p) for p in key],
        root_keys=[PublicKey.load(p) for p in root_pub or []],
        carry=carry,
        rollout=rollout,
        checks=checks,
        expires_in_days=expires_in,
    )
    _echo_result(result)


def _check_sets(bundles: list[str], specs: list[str], n: int, tolerance: float) -> dict[str, bytes]:
    """task -> a new acceptance check set, for each --check-data TASK=FILE."""
    if not specs:
        return {}
    import msgspec as _msgspec

    from pld.errors import InputError
    from pld.runtime import load_bundle, resolve_bundle_path

    from .acceptance import CheckSet, make_check_set

    resolved = [resolve_bundle_path(b) for b in bundles]
    paths = {load_bundle(p).task.name: p for p in resolved}
    out: dict[str, bytes] = {}
    for spec in specs:
        task, sep, data = spec.partition("=")
        if not sep or task not in paths:
            raise InputError(
                f"--check-data {spec!r}: give TASK=FILE for a task published here "
                f"({', '.join(sorted(paths))})"
            )
        out[task] = make_check_set(paths[task], data, n=n, tolerance=tolerance)
        check = _msgspec.json.decode(out[task], type=CheckSet)
        typer.echo(
            f"{task}: acceptance check of {len(check.cases)} inputs (the shortest, "
            f"{sum(len(c.text) for c in check.cases) / len(check.cases):,.0f} characters on "
            f"average), {check.accuracy:.1%} on "
            f"{check.backend} (devices refuse below {check.accuracy - check.tolerance:.1%})"
        )
    return out


def _echo_result(result: PublishResult) -> None:
    for t in result.tasks:
        state = "new file" if t.new else "file unchanged"
        staged = (
            f", to {t.rollout}% of devices (the others: {t.previous_version})"
            if t.previous_version
            else ""
        )
        typer.echo(f"{t.task}: {t.name} {t.version} ({state}{staged}) {t.file}")
    typer.echo(
        f"channel {result.channel!r} index version {result.version}, expires {result.expires}: "
        f"{result.index}"
    )
    typer.echo(msgspec.json.encode(result).decode())


def _set_rollout(
    to: str, channel: str, key: list[Path], root_pub: list[Path] | None, task: list[str] | None,
    rollout: int, expires_in: float,
) -> None:  # fmt: skip
    require_fleet_extra()
    from .channel import set_rollout
    from .keys import PublicKey, SigningKey

    result = set_rollout(
        to,
        channel=channel,
        rollout=rollout,
        keys=[SigningKey.load(p) for p in key],
        tasks=task or [],
        root_keys=[PublicKey.load(p) for p in root_pub or []],
        expires_in_days=expires_in,
    )
    _echo_result(result)


ToOpt = Annotated[str, typer.Option("--to", help="Publication directory or fsspec URL.")]
ChannelOpt = Annotated[str, typer.Option("--channel", help="Channel, e.g. stable or canary.")]
TaskOpt = Annotated[
    list[str] | None,
    typer.Option("--task", "-t", help="Task (repeatable; default: every staged rollout)."),
]


@channel_app.command("promote")
def promote(
    to: ToOpt,
    channel: ChannelOpt,
    key: KeyOpt,
    rollout: Annotated[
        int, typer.Option(min=1, max=100, help="Percent of devices from now on (100: all).")
    ] = 100,
    task: TaskOpt = None,
    root_pub: RootPubOpt = None,
    expires_in: ExpiresOpt = 30,
) -> None:
    """Widen staged rollouts to --rollout percent of devices (a new signed index)."""
    _set_rollout(to, channel, key, root_pub, task, rollout, expires_in)


@channel_app.command("halt")
def halt(
    to: ToOpt,
    channel: ChannelOpt,
    key: KeyOpt,
    task: TaskOpt = None,
    root_pub: RootPubOpt = None,
    expires_in: ExpiresOpt = 30,
) -> None:
    """Stop staged rollouts: devices that moved keep the new bundle, no other device moves."""
    _set_rollout(to, channel, key, root_pub, task, 0, expires_in)

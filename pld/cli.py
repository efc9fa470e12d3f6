"""The `pld` command: mounts each package's commands and turns pld errors into exit codes.

Set PLD_TRACEBACK=1 to get the Python traceback instead of the one-line message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

from pld.bench import cli as bench_cli
from pld.distiller import cli as distiller_cli
from pld.errors import PldError, RunInterrupted
from pld.evals import cli as evals_cli
from pld.fleet import cli as fleet_cli
from pld.fleet import device_cli
from pld.models import cli as models_cli
from pld.runtime import cli as runtime_cli
from pld.serve import cli as serve_cli

__all__ = ["app", "main"]

# `pld bundle NAME`: each package lists its bundle commands by name, mounted the same way;
# fleet's list is written here until pld.fleet.cli exposes one.
FLEET_BUNDLE_COMMANDS: dict[str, Callable[..., None]] = {
    "sign": fleet_cli.sign,
    "verify": fleet_cli.verify,
    "publish": fleet_cli.publish,
}
bundle_app = typer.Typer(
    no_args_is_help=True, help="Inspect, check, audit, sign and publish instruction bundles."
)
for commands in (runtime_cli.BUNDLE_COMMANDS, evals_cli.BUNDLE_COMMANDS, FLEET_BUNDLE_COMMANDS):
    for name, command in commands.items():
        bundle_app.command(name)(command)

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prompt-Level Distillation: distilled rules as a small model's system prompt, run fast.",
)
app.command("classify")(runtime_cli.classify)
app.command("demo")(runtime_cli.demo)
app.command("serve")(serve_cli.serve)
app.command("eval")(evals_cli.evaluate)
app.command("report")(evals_cli.report)
app.add_typer(distiller_cli.app, name="distill")
app.add_typer(bundle_app, name="bundle")
app.add_typer(models_cli.app, name="models")
app.add_typer(fleet_cli.keys_app, name="keys")
app.add_typer(fleet_cli.channel_app, name="channel")
app.add_typer(device_cli.device_app, name="device")
app.add_typer(bench_cli.bench_app, name="bench")


def main() -> None:
    """Entry point of the `pld` script."""
    try:
        app()
    except RunInterrupted as exc:  # a long run that says how to resume it
        print(f"\n{exc}", file=sys.stderr)
        sys.exit(130)
    except PldError as exc:
        if os.environ.get("PLD_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as exc:
        # typer turns Ctrl-C into a silent exit 130
        if isinstance(exc, SystemExit) and exc.code != 130:
            raise
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)

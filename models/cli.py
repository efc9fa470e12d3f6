"""The ``pld models`` commands: list the registry, print a model's path, pull a model.

A thin layer over ``pld.models``; errors propagate to the root CLI, which owns exit codes.
"""

from __future__ import annotations

import typer

from .registry import DEFAULT_MODEL, list_models, pull, resolve

app = typer.Typer(no_args_is_help=True, help="Resolve model names to verified GGUF files.")


@app.command("list")
def list_command() -> None:
    """List the registry's models and where each one is on this machine."""
    header = ("NAME", "SOURCE", "FAMILY", "FORMAT", "SIZE", "LOCAL FILE")
    rows = [header]
    for spec, path in list_models():
        name = f"{spec.name} (default)" if spec.name == DEFAULT_MODEL else spec.name
        first = f"'{spec.install}', then " if spec.install else ""
        where = path or f"not yet; run {first}'pld models pull {spec.name}'"
        rows.append((name, spec.source, spec.family, spec.chat_format, f"{spec.size_mb} MB", where))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[-1]]))


@app.command("path")
def path_command(
    name: str = typer.Argument(DEFAULT_MODEL, help="A model name or a path to a .gguf file."),
) -> None:
    """Print the absolute path of a verified model file (assembling it if needed)."""
    typer.echo(resolve(name).path)


@app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help="A model name from 'pld models list'."),
) -> None:
    """Download or assemble a model, verify its sha256 and print where it is."""
    model = pull(name)
    typer.echo(f"{model.name}: {model.path}")
    typer.echo(f"sha256 {model.sha256}")

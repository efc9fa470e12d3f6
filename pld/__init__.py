"""pld: Prompt-Level Distillation.

The root package holds what every part shares (the version, errors, file helpers, the cache
layout, metrics, progress bars, text clipping, process measurements) and the CLI entry point; the
work lives in ``pld.runtime`` (bundles, engine, classifier), ``pld.models`` (the model
registry), ``pld.fleet`` (signed updates for devices), ``pld.serve`` (the HTTP server),
``pld.distiller`` (the offline pipeline), ``pld.evals`` (accuracy, reports, rule audits) and
``pld.bench`` (speed: latency, side-by-side comparison, scaling, server load). Importing it does
no work.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version has one source, the installed package's metadata (pyproject.toml); it is
    # read on first use so that importing pld stays free.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pld")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'pld' has no attribute {name!r}")

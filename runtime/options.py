"""How a classifier runs: one options object that travels from the CLI or the caller to the engine.

Knows settings and their defaults, nothing about models or bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import EngineConfig

__all__ = ["DEVICE_STATES_KEPT", "ClassifierOptions"]

# A device directory holds the primed state of every active and last-known-good bundle: none
# may be pruned while it is in use, or the first request after a restart primes again.
DEVICE_STATES_KEPT = 256


@dataclass(frozen=True, kw_only=True)
class ClassifierOptions:
    """Settings of a ``Classifier``; every field has a default that suits a 2-core CPU.

    ``max_batch`` 1 runs requests one at a time on a windowed sliding-window cache (the fastest
    layout on a CPU); larger values decode that many requests together (GPUs). ``calibrate``
    None follows the bundle. ``state_dir`` None keeps prefix-state files in pld's cache; a
    device directory keeps one per task (``DEVICE_STATES_KEPT``).
    """

    n_ctx: int = 0  # 0: fit the system prompt plus max_input_tokens
    n_threads: int = 0  # 0: every core
    n_gpu_layers: int = 0  # -1: all (CUDA or Metal builds)
    max_batch: int = 1
    n_batch: int = 512
    max_input_tokens: int = 2048
    flash_attn: bool = False
    calibrate: bool | None = None
    prefix_cache: bool = True
    state_dir: Path | None = None
    states_kept: int = 8  # prefix-state files a state_dir keeps (least recently used go)
    truncate: bool = False
    allow_model_mismatch: bool = False

    def engine_config(self) -> EngineConfig:
        """The engine's share of these settings."""
        return EngineConfig(
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            max_batch=self.max_batch,
            n_batch=self.n_batch,
            max_input_tokens=self.max_input_tokens,
            flash_attn=self.flash_attn,
        )

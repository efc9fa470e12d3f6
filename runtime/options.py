"""How a classifier runs: one options object that travels from the CLI or the caller to the engine.

Knows settings and their defaults, nothing about models or bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pld.errors import ConfigError

from .context import KV_TYPES, EngineConfig

__all__ = [
    "DEVICE_STATES_KEPT",
    "FLASH_ATTN",
    "ClassifierOptions",
    "FlashAttn",
    "parse_kv_type",
    "tuning_overrides",
]

FlashAttn = Literal["on", "off", "auto"]
# The CLI's --flash-attn words as ClassifierOptions.flash_attn values (None: llama.cpp decides).
FLASH_ATTN: dict[str, bool | None] = {"on": True, "off": False, "auto": None}

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
    n_ubatch: int = 0  # tokens per compute step (0: n_batch)
    n_threads_batch: int = 0  # threads for prompt-sized batches (0: as n_threads)
    max_input_tokens: int = 2048
    flash_attn: bool | None = False  # None: llama.cpp decides
    type_k: str = "f16"  # KV cache types (context.KV_TYPES); a quantized V needs flash_attn
    type_v: str = "f16"
    op_offload: bool = True
    calibrate: bool | None = None
    prefix_cache: bool = True
    state_dir: Path | None = None
    states_kept: int = 8  # prefix-state files a state_dir keeps (least recently used go)
    truncate: bool = False
    allow_model_mismatch: bool = False

    def __post_init__(self) -> None:
        self.engine_config().validate()  # a bad combination fails here, before any loading

    def engine_config(self) -> EngineConfig:
        """The engine's share of these settings."""
        return EngineConfig(
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            max_batch=self.max_batch,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_threads_batch=self.n_threads_batch,
            max_input_tokens=self.max_input_tokens,
            flash_attn=self.flash_attn,
            type_k=self.type_k,
            type_v=self.type_v,
            op_offload=self.op_offload,
        )


def parse_kv_type(text: str) -> tuple[str, str]:
    """``TYPE`` (K and V) or ``K/V``, as given to --kv-type, to (type_k, type_v)."""
    parts = [p.strip().lower() for p in text.split("/")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p not in KV_TYPES for p in parts):
        raise ConfigError(
            f"--kv-type {text!r} is not a KV cache type; give one of {', '.join(KV_TYPES)} for "
            "both K and V, or K/V such as q8_0/f16"
        )
    return parts[0], parts[1]


def tuning_overrides(
    kv_type: str | None = None, ubatch: int | None = None, flash_attn: FlashAttn | None = None
) -> dict[str, Any]:
    """The ClassifierOptions fields the CLI's --kv-type, --ubatch and --flash-attn set; a flag
    left out (None) keeps the library default."""
    out: dict[str, Any] = {}
    if kv_type is not None:
        out["type_k"], out["type_v"] = parse_kv_type(kv_type)
    if ubatch is not None:
        if ubatch < 0:
            raise ConfigError(f"--ubatch {ubatch}: pass a positive token count, or 0 for n_batch")
        out["n_ubatch"] = ubatch
    if flash_attn is not None:
        if flash_attn not in FLASH_ATTN:
            raise ConfigError(f"--flash-attn {flash_attn!r}: use on, off or auto")
        out["flash_attn"] = FLASH_ATTN[flash_attn]
    return out

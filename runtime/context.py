"""The llama.cpp context an engine runs on: its settings (``EngineConfig``), the context's
creation and sizing, raw decoding into logits rows, and the counters of what was decoded.

It knows token ids and sequence ids; what sequence 0 holds is ``priming``, how requests are
scored is ``engine``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pld.errors import ConfigError, ContextOverflowError, ModelError

from .batch import ALIGN, Item, LlamaBatch
from .devices import gpu_backend
from .model import Model

__all__ = ["KV_TYPES", "EngineConfig", "EngineStats", "LlamaContext"]


# KV cache element types llama.cpp accepts (``--cache-type-k/-v`` in llama.cpp's own tools).
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@dataclass
class EngineConfig:
    """Context settings. ``n_ctx`` 0 means: fit the prefix plus ``max_input_tokens`` per sequence."""

    n_ctx: int = 0
    n_batch: int = 512
    # Tokens per llama.cpp compute step (0: n_batch). It also sizes the windowed sliding-window
    # cache (n_swa + n_ubatch cells, rounded up to 256), and an input longer than it makes the
    # engine restore the prefix's last window afterwards.
    n_ubatch: int = 0
    n_threads: int = 0
    n_threads_batch: int = 0  # threads for prompt-sized batches (0: as n_threads)
    n_gpu_layers: int = 0
    max_batch: int = 1
    max_input_tokens: int = 2048
    # Off by default: measured on Gemma-3 270M (CPU), prefix reuse then matches a from-scratch
    # evaluation bit for bit, while flash attention changes label probabilities by up to 0.08.
    # None lets llama.cpp decide (its "auto").
    flash_attn: bool | None = False
    # KV cache element types (KV_TYPES); a quantized V cache needs flash attention.
    type_k: str = "f16"
    type_v: str = "f16"
    # Let llama.cpp move host-resident weights' ops to a GPU for large batches (GPU builds).
    op_offload: bool = True
    # None: windowed sliding-window cache when requests run one at a time (see Engine), full-size
    # otherwise. True forces the full-size cache.
    swa_full: bool | None = None

    def threads(self) -> int:
        """Threads to use: the configured count, or every core."""
        return self.n_threads or max(1, os.cpu_count() or 1)

    def threads_batch(self) -> int:
        """Threads for batches: the configured count, or ``threads()``."""
        return self.n_threads_batch or self.threads()

    def ubatch(self) -> int:
        """Tokens per compute step: ``n_ubatch``, or ``n_batch`` when it is 0."""
        return self.n_ubatch or self.n_batch

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the fix if the tuning knobs do not go together."""
        for name, value in (("type_k", self.type_k), ("type_v", self.type_v)):
            if value not in KV_TYPES:
                raise ConfigError(
                    f"unknown KV cache type {value!r} for {name}; use one of "
                    f"{', '.join(KV_TYPES)} (--kv-type)"
                )
        if self.type_v not in ("f32", "f16", "bf16") and self.flash_attn is False:
            raise ConfigError(
                f"a quantized V cache ({self.type_v}) needs flash attention in llama.cpp; "
                "turn it on (--flash-attn on) or keep V at f16"
            )
        for name, n in (("n_threads", self.n_threads), ("n_threads_batch", self.n_threads_batch)):
            if n < 0:
                raise ConfigError(f"{name} is {n}; pass a positive count, or 0 for every core")
        if not 0 <= self.n_ubatch <= self.n_batch:
            raise ConfigError(
                f"n_ubatch ({self.n_ubatch}) must be between 1 and n_batch ({self.n_batch}), or 0 "
                "for n_batch; lower --ubatch or raise n_batch"
            )
        if self.ubatch() % ALIGN:
            # chunk boundaries off the lane width would change how the prefix's cells round
            raise ConfigError(
                f"n_ubatch ({self.ubatch()}) must be a multiple of {ALIGN} so that every layout "
                f"rounds alike; pass --ubatch {max(ALIGN, self.ubatch() // ALIGN * ALIGN)}"
            )


@dataclass
class EngineStats:
    """What the engine actually decoded: the proof that the prefix is evaluated once."""

    prefix_tokens_decoded: int = 0
    suffix_tokens_decoded: int = 0
    full_tokens_decoded: int = 0
    # tokens of the pad sequence that align batched requests (see batch.ALIGN); never a request's
    pad_tokens_decoded: int = 0
    primes: int = 0
    reprimes: int = 0
    restores: int = 0
    requests: int = 0
    decode_calls: int = 0

    def tokens_decoded(self) -> int:
        """Every token llama.cpp was asked to decode: prefix, requests, from-scratch and pads."""
        return (
            self.prefix_tokens_decoded
            + self.suffix_tokens_decoded
            + self.full_tokens_decoded
            + self.pad_tokens_decoded
        )


class LlamaContext:
    """A llama.cpp context sized for a prefix and ``max_batch`` requests, and its decode step;
    the base of ``Engine`` (see there for the two layouts it is created in)."""

    def __init__(
        self,
        model: Model,
        config: EngineConfig | None = None,
        *,
        prefix_len: int = 0,
        lanes: int = 1,
    ) -> None:
        L = model.lib
        self._L = L
        self.model = model
        self.config = cfg = config or EngineConfig()
        self.lock = threading.RLock()
        self.stats = EngineStats()
        # sequences each request needs: 1 when labels differ in their first token, else one
        # per label (see label_room)
        self.n_labels = max(1, lanes)
        cfg.validate()
        self.windowed = cfg.max_batch == 1 and self.n_labels == 1 and not cfg.swa_full
        # seq 0: prefix; then (shared layout) one block of lanes per batched request and a
        # sequence for the pad tokens that align batched requests; last, the spacer (see
        # _add_spacer).
        self.n_seq = 2 if self.windowed else 3 + cfg.max_batch * self.n_labels
        self._spacer_seq = self.n_seq - 1
        self._pad_seq = self.n_seq - 2
        if cfg.max_batch < 1 or cfg.n_batch < 1:
            raise ConfigError(
                f"max_batch ({cfg.max_batch}) and n_batch ({cfg.n_batch}) must be at least 1; "
                "pass a positive --batch-size"
            )
        if self.n_seq > 256:
            raise ConfigError(
                f"max_batch {cfg.max_batch} x {self.n_labels} label lanes = {self.n_seq - 3} "
                "sequences, but llama.cpp allows 253; lower max_batch (--batch-size) to at most "
                f"{253 // self.n_labels}"
            )
        n_ctx = cfg.n_ctx or prefix_len + cfg.max_input_tokens + 64
        n_ctx = min(-(-n_ctx // 256) * 256, max(model.n_ctx_train, 256))
        ubatch, n_swa = cfg.ubatch(), model.n_swa
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = cfg.n_batch
        params.n_ubatch = ubatch
        params.n_seq_max = self.n_seq
        if self.windowed and n_swa > 0:
            # llama.cpp gives the windowed cache n_swa x n_seq_max + n_ubatch cells: room for the
            # window and a whole request after it, which then never wraps onto cells in use
            room = n_swa + cfg.max_input_tokens + 64
            params.n_seq_max = max(self.n_seq, -(-(room - ubatch) // n_swa))
        params.n_threads = cfg.threads()
        params.n_threads_batch = cfg.threads_batch()
        params.flash_attn_type = {
            True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
            None: L.LLAMA_FLASH_ATTN_TYPE_AUTO,
        }[cfg.flash_attn]
        params.type_k = getattr(L, f"GGML_TYPE_{cfg.type_k.upper()}")
        params.type_v = getattr(L, f"GGML_TYPE_{cfg.type_v.upper()}")
        params.op_offload = cfg.op_offload
        # Copies of the prefix pin every sliding-window cell they share, so the shared layout
        # keeps the full-size cache; the windowed one keeps only what requests attend to.
        params.swa_full = not self.windowed
        params.kv_unified = True  # copies of the prefix share cells instead of copying them
        params.no_perf = True
        ctx = L.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise ModelError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}; "
                "lower n_ctx or max_batch"
            )
        self.ctx = ctx
        self.mem = L.llama_get_memory(ctx)
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.prefix: list[int] = []
        self._batch = LlamaBatch(L, cfg.n_batch, self.n_labels)
        self._pad_token = max(model.bos, 0)
        # whether llama.cpp runs layers on the CPU, whose kernels batched requests must meet as
        # they do alone (a GPU's kernels are not arranged for)
        all_on_gpu = cfg.n_gpu_layers < 0 or cfg.n_gpu_layers > model.n_layer
        self._cpu = not all_on_gpu or gpu_backend() is None
        # the position whose sliding-window cell is the cache's first one (windowed priming)
        self._front = 0
        # shared layout: the prefix's sliding window every `_every` positions, so that reprime()
        # can restart there as priming passed it (about 8 MB per window on Gemma-3 270M)
        self._windows: dict[int, Any] = {}
        self._every = ubatch * max(1, -(-n_swa // ubatch))

    def _check_fits(self, n_prefix: int, n_suffix: int, *, what: str, extra: int = 0) -> None:
        if n_prefix + n_suffix + extra > self.n_ctx:
            raise ContextOverflowError(
                f"{what} does not fit the context: {n_prefix} prefix + {n_suffix} input"
                f"{f' + {extra} label' if extra else ''} tokens > n_ctx {self.n_ctx}; shorten "
                "it, raise n_ctx (pld classify --n-ctx), or pass truncate=True / --truncate"
            )

    def _decode_items(self, items: Sequence[Item]) -> list[npt.NDArray[np.float32]]:
        """Decode in n_batch chunks; return a copy of the logits row of every output item."""
        L, n_batch = self._L, self.config.n_batch
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(items), n_batch):
            chunk = items[start : start + n_batch]
            self._batch.fill(chunk)
            rc = L.llama_decode(self.ctx, self._batch.raw)
            self.stats.decode_calls += 1
            if rc != 0:
                raise ModelError(
                    f"llama_decode failed with code {rc} (1: no room in the KV cache for "
                    f"{len(chunk)} tokens, n_ctx {self.n_ctx}); raise n_ctx or lower max_batch"
                )
            for i, it in enumerate(chunk):
                if it[3]:
                    ptr = L.llama_get_logits_ith(self.ctx, i)
                    rows.append(np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy())
        return rows

    def close(self) -> None:
        """Free the context (the model stays loaded)."""
        with self.lock:
            if getattr(self, "ctx", None):
                self._batch.free()
                self._L.llama_free(self.ctx)
                self.ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

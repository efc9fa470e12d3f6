"""The inference engine: one llama.cpp context that evaluates a shared prefix once and then
scores label continuations for many requests, on the low-level llama.cpp API.

Sequence 0 holds the primed prefix. A request decodes only its suffix (straight into sequence 0,
or into a copy of it when requests are batched), reads one row of logits per label step and is
removed again. It knows token ids, not bundles, templates or label names.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pld.errors import ConfigError, ContextOverflowError, ModelError

from .batch import ALIGN, Item, LlamaBatch, decode_calls, label_room
from .model import Model

__all__ = ["KV_TYPES", "Engine", "EngineConfig", "EngineStats", "devices", "gpu_backend"]

L_SWA_ONLY = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: only the sliding-window cache


# KV cache element types llama.cpp accepts (``--cache-type-k/-v`` in llama.cpp's own tools).
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


# ggml device types (enum ggml_backend_dev_type) that hold offloaded layers
_GPU_DEVICE_TYPES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU
_BACKEND_NAMES = {"MTL": "metal"}  # registry names that are not the backend's usual name


def devices() -> list[tuple[str, str, int]]:
    """llama.cpp's compute devices: (backend registry name, device name, ggml device type)."""
    import llama_cpp.llama_cpp as L
    from llama_cpp._ggml import libggml as g

    L.llama_backend_init()
    ptr, name = ctypes.c_void_p, ctypes.c_char_p
    for fn, res, args in (
        (g.ggml_backend_dev_count, ctypes.c_size_t, []),
        (g.ggml_backend_dev_get, ptr, [ctypes.c_size_t]),
        (g.ggml_backend_dev_type, ctypes.c_int, [ptr]),
        (g.ggml_backend_dev_name, name, [ptr]),
        (g.ggml_backend_dev_backend_reg, ptr, [ptr]),
        (g.ggml_backend_reg_name, name, [ptr]),
    ):
        fn.restype, fn.argtypes = res, args
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        reg = g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)).decode()
        out.append((reg, g.ggml_backend_dev_name(dev).decode(), int(g.ggml_backend_dev_type(dev))))
    return out


def gpu_backend() -> str | None:
    """The backend offloaded layers run on in this llama.cpp build ('cuda', 'metal', 'vulkan',
    ...), or None when it has no GPU device."""
    for reg, _, kind in devices():
        if kind in _GPU_DEVICE_TYPES:
            return _BACKEND_NAMES.get(reg, reg.lower())
    return None


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
    primes: int = 0
    reprimes: int = 0
    restores: int = 0
    requests: int = 0
    decode_calls: int = 0


class Engine:
    """A llama.cpp context with a primed prefix in sequence 0; thread-safe (one lock).

    Two layouts. *Shared* (``max_batch`` > 1, or labels that need teacher forcing): each request
    decodes in its own copy of sequence 0 (cells shared), in a full-size sliding-window cache.
    *Windowed* (one request at a time, labels decided by their first token): a request decodes
    straight into sequence 0 and is cut off again, and the sliding-window layers keep the prefix's
    last window plus room for one request. Measured on Gemma-3 270M with a 4,664-token prefix:
    1.3x the cost of an empty prompt instead of 2.0x.

    Every layout gives a request the bits it gets evaluated alone from scratch (``score_full``).
    llama.cpp's CPU kernels round by a cell's offset modulo the SIMD width and by a row's place in
    a compute step, and Gemma-3 270M turns such rounding into label probabilities 0.1 apart, so
    the cells are laid out the same way everywhere: the prefix is decoded in ``n_ubatch`` chunks;
    when a windowed cache would wrap around, the window is first moved to its front (at a
    multiple of ALIGN cells from the chunk); after priming or restoring, the prefix's last window
    starts at cell 0 in every layout, where a restored state file puts it; batched requests are
    padded and grouped as ``batch`` describes.
    """

    # Version of the cell layout a primed prefix holds: part of a prefix-state file's key, so
    # that a state primed the older way is never restored (2: windows moved to the front).
    LAYOUT = 2

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

    # -- prefix --------------------------------------------------------------------------

    def prime(self, prefix: Sequence[int]) -> float:
        """Evaluate ``prefix`` into sequence 0 (replacing any earlier one); returns ms."""
        with self.lock:
            t0 = time.perf_counter()
            self._check_fits(len(prefix), 0, what="the system prompt")
            self._evaluate(prefix)
            self.stats.prefix_tokens_decoded += len(prefix)
            self.stats.primes += 1
            return (time.perf_counter() - t0) * 1000

    def _evaluate(self, prefix: Sequence[int]) -> None:
        self._L.llama_memory_clear(self.mem, True)
        self.prefix, self._windows, self._front = [], {}, 0
        self._decode_prefix(list(prefix), 0)
        self.prefix = list(prefix)
        self._window_to_front()
        self._add_spacer()

    def _decode_prefix(self, tokens: list[int], p0: int) -> None:
        """Decode prefix tokens from position ``p0`` (a multiple of n_ubatch) in n_ubatch chunks."""
        ubatch, n_swa = self.config.ubatch(), self.model.n_swa
        for a in range(0, len(tokens), ubatch):
            pos, chunk = p0 + a, tokens[a : a + ubatch]
            if n_swa > 0 and pos > 0:
                if self.windowed and pos - self._front + len(chunk) > n_swa + ubatch:
                    self._window_to_front()
                elif not self.windowed and pos % self._every == 0:
                    self._windows[pos] = self._save_window()
            self._decode_items([(t, pos + j, [0], False) for j, t in enumerate(chunk)])

    def _save_window(self) -> Any:
        """Sequence 0's sliding-window cells that later positions can still attend to."""
        L = self._L
        size = L.llama_state_seq_get_size_ext(self.ctx, 0, L_SWA_ONLY)
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data_ext(self.ctx, buf, size, 0, L_SWA_ONLY)
        return buf

    def _load_window(self, buf: Any) -> None:
        """Replace sequence 0's sliding-window cells by ``buf``, laid out from the cache's first
        free cell (its first cell: no other sequence holds any when this runs)."""
        n = self._L.llama_state_seq_set_data_ext(self.ctx, buf, len(buf), 0, L_SWA_ONLY)
        if n == 0:
            raise ModelError("llama.cpp could not restore the prefix's sliding-window cells")

    def _window_to_front(self) -> None:
        """Move sequence 0's sliding window to the front of its cache (dropping what no later
        position attends to): the layout a restored state file has, and room after it."""
        if self.model.n_swa > 0:
            self._load_window(self._save_window())
            end = int(self._L.llama_memory_seq_pos_max(self.mem, 0)) + 1
            self._front = max(0, end - self.model.n_swa)

    def _add_spacer(self) -> None:
        """Fill the cells from the prefix's end to the next multiple of ALIGN, without decoding:
        a request then starts on a lane boundary, sharing no SIMD group with the prefix whether
        it is alone or batched (llama.cpp's softmax sums a row of cells in groups of 8 or 16).

        The filler is a copy of the prefix's first cells: sequence 0 lends them to the spacer
        sequence, whose saved state is then restored as new cells after the prefix.
        """
        L, mem, spacer = self._L, self.mem, self._spacer_seq
        L.llama_memory_seq_rm(mem, spacer, -1, -1)
        n = -len(self.prefix) % ALIGN
        if n == 0 or len(self.prefix) + n > self.n_ctx:
            return
        L.llama_memory_seq_cp(mem, 0, spacer, 0, n)
        size = L.llama_state_seq_get_size(self.ctx, spacer)
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data(self.ctx, buf, size, spacer)
        L.llama_memory_seq_rm(mem, spacer, -1, -1)
        if L.llama_state_seq_set_data(self.ctx, buf, size, spacer) == 0:
            raise ModelError("llama.cpp could not lay out the cells after the prefix")

    def reprime(self, prefix: Sequence[int]) -> int:
        """Replace the primed prefix by ``prefix``, keeping the cells both share; returns the
        number of tokens decoded.

        Decoding restarts at a chunk boundary at or before the first differing token where
        priming left the sliding window behind (every ``n_swa`` tokens or so, or anywhere
        while the prefix is within one window), with that window put back where priming had it:
        the chunks and cells are then those ``prime(prefix)`` uses, and the result is
        bit-identical to priming from scratch. After ``restore()`` no window is kept, and it
        decodes the whole prefix. Refused on the windowed cache.
        """
        if self.windowed:
            raise ConfigError(
                "reprime() needs the full-size sliding-window cache: in the windowed layout the "
                "cells before the cut may already be overwritten, and the result would silently "
                "differ from prime(); use EngineConfig(swa_full=True) or max_batch > 1"
            )
        with self.lock:
            old, new = self.prefix, list(prefix)
            if new == old:
                return 0
            self._check_fits(len(new), 0, what="the system prompt")
            common = 0
            while common < min(len(old), len(new)) and old[common] == new[common]:
                common += 1
            if self.model.n_swa == 0 or self._front == 0:  # every window cell is still there
                start = common - common % self.config.ubatch()
            else:
                start = max([0] + [p for p in self._windows if p <= common])
            self._windows = {p: w for p, w in self._windows.items() if p <= start}
            self._L.llama_memory_seq_rm(self.mem, self._spacer_seq, -1, -1)
            self._L.llama_memory_seq_rm(self.mem, 0, start, -1)
            if start in self._windows:
                self._load_window(self._windows[start])
            self.prefix = []
            self._decode_prefix(new[start:], start)
            self.prefix = new
            self._window_to_front()
            self._add_spacer()
            self.stats.prefix_tokens_decoded += len(new) - start
            self.stats.reprimes += 1
            return len(new) - start

    def prefix_state(self) -> bytes:
        """The KV state of the primed prefix (sequence 0), for a prefix-state file."""
        with self.lock:
            L = self._L
            size = L.llama_state_seq_get_size(self.ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            n = L.llama_state_seq_get_data(self.ctx, buf, size, 0)
            return bytes(memoryview(buf)[:n])

    def restore(self, prefix: Sequence[int], state: bytes) -> bool:
        """Load a saved prefix state into sequence 0; False (and nothing loaded) if it fails."""
        with self.lock:
            L = self._L
            L.llama_memory_clear(self.mem, True)
            self.prefix, self._windows, self._front = [], {}, 0
            buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            n = L.llama_state_seq_set_data(self.ctx, buf, len(state), 0)
            ok = n > 0 and L.llama_memory_seq_pos_max(self.mem, 0) == len(prefix) - 1
            if not ok:
                L.llama_memory_clear(self.mem, True)
                return False
            self.prefix = list(prefix)
            self._window_to_front()
            self._add_spacer()
            self.stats.restores += 1
            return True

    # -- requests ------------------------------------------------------------------------

    def capacity(self, suffix_len: int, label_extra: int = 0) -> int:
        """Tokens free for one request after the prefix (negative: it does not fit)."""
        return self.n_ctx - len(self.prefix) - suffix_len - label_extra

    def _check_fits(self, n_prefix: int, n_suffix: int, *, what: str, extra: int = 0) -> None:
        if n_prefix + n_suffix + extra > self.n_ctx:
            raise ContextOverflowError(
                f"{what} does not fit the context: {n_prefix} prefix + {n_suffix} input"
                f"{f' + {extra} label' if extra else ''} tokens > n_ctx {self.n_ctx}; shorten "
                "it, raise n_ctx (pld classify --n-ctx), or pass truncate=True / --truncate"
            )

    def score(
        self, suffixes: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float64]:
        """Log-probabilities [request, label] of each label's tokens after prefix + suffix.

        Requests are decoded together, each in its own copy of the prefix sequence, and dropped
        afterwards, so request i never sees request j and the prefix is left as primed. On CPU
        weights each gets the bits it gets alone, whichever requests share its batch.
        """
        if not self.prefix:
            raise ConfigError("the engine has no primed prefix; call prime() or restore() first")
        out = np.empty((len(suffixes), len(labels)), dtype=np.float64)
        step = self.config.max_batch
        p0 = len(self.prefix)
        with self.lock:
            for start in range(0, len(suffixes), step):
                chunk = suffixes[start : start + step]
                if self.windowed:
                    out[start] = self._score_chunk(chunk, labels, p0, seq_base=0)[0]
                else:
                    out[start : start + len(chunk)] = self._score_chunk(chunk, labels, p0)
            self.stats.requests += len(suffixes)
        return out

    def score_full(
        self, prefix: Sequence[int], suffix: Sequence[int], labels: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float64]:
        """Reference path: clear the cache and evaluate prefix and suffix from scratch.

        The prefix and the suffix go to llama.cpp as separate batches, as they do on the reuse
        path, so both run the same kernels on the same shapes and any difference between the two
        can only come from reusing the cache. (Decoded as one batch, rows are grouped differently
        by the matmul kernels and label probabilities move by up to ~0.06 on Gemma-3 270M.)
        """
        with self.lock:
            self._check_fits(len(prefix), len(suffix), what="the prompt", extra=label_room(labels))
            self._evaluate(prefix)
            self.prefix = []
            self.stats.full_tokens_decoded += len(prefix) + len(suffix)
            row = self._score_chunk([suffix], labels, len(prefix), seq_base=0)
            self._L.llama_memory_clear(self.mem, True)
            return row[0]  # type: ignore[no-any-return]

    def _score_chunk(
        self,
        suffixes: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]],
        p0: int,
        seq_base: int = 1,
    ) -> npt.NDArray[np.float64]:
        L, mem = self._L, self.mem
        n_lab = len(labels)
        extra = label_room(labels)
        first_distinct = extra == 0
        lane = 1 if first_distinct else n_lab  # sequences per request
        if len(suffixes) > 1 and self._cpu and not first_distinct:
            # teacher-forced label steps are a few rows each; batched they would meet other
            # kernels than alone, so on CPU weights these requests go one at a time
            return np.vstack([self._score_chunk([s], labels, p0, seq_base) for s in suffixes])
        need = p0 + sum(len(s) + extra + ALIGN for s in suffixes)
        if need > self.n_ctx:
            if len(suffixes) > 1:  # split the batch rather than fail
                half = len(suffixes) // 2
                return np.vstack(
                    [
                        self._score_chunk(suffixes[:half], labels, p0, seq_base),
                        self._score_chunk(suffixes[half:], labels, p0, seq_base),
                    ]
                )
            self._check_fits(p0, len(suffixes[0]), what="the input", extra=extra)
        seqs = [
            list(range(seq_base + i * lane, seq_base + (i + 1) * lane))
            for i in range(len(suffixes))
        ]
        try:
            if p0:  # every lane but sequence 0 itself sees the prefix through shared cells
                for group in seqs:
                    for s in group:
                        if s != 0:
                            L.llama_memory_seq_cp(mem, 0, s, -1, -1)
            # phase 1: each suffix once, shared by its label lanes; logits at its last token
            runs = [
                [(t, p0 + j, group, j == len(suf) - 1) for j, t in enumerate(suf)]
                for group, suf in zip(seqs, suffixes)
            ]
            if len(runs) > 1 and self._cpu:
                rows = self._decode_aligned(runs, seqs, p0)
            else:
                rows = self._decode_items([it for run in runs for it in run])
            self.stats.suffix_tokens_decoded += sum(len(s) for s in suffixes)
            out = np.empty((len(suffixes), n_lab), dtype=np.float64)
            firsts = [lab[0] for lab in labels]
            for i, r in enumerate(rows):
                out[i] = self._logprob(r, firsts)
            if first_distinct:
                return out
            # phase 2: teacher-forced continuation of every multi-token label in its own lane
            items, owners = [], []
            for i, (group, suf) in enumerate(zip(seqs, suffixes)):
                for k, lab in enumerate(labels):
                    for j in range(len(lab) - 1):
                        items.append((lab[j], p0 + len(suf) + j, [group[k]], True))
                        owners.append((i, k, lab[j + 1]))
            if items:
                rows = self._decode_items(items)
                self.stats.suffix_tokens_decoded += len(items)
                for (i, k, nxt), r in zip(owners, rows):
                    out[i, k] += self._logprob(r, [nxt])[0]
            return out
        finally:
            for group in seqs:
                for s in group:
                    # sequence 0 keeps its prefix; copies go entirely
                    L.llama_memory_seq_rm(mem, s, p0 if s == 0 else -1, -1)

    def _decode_aligned(
        self, runs: Sequence[Sequence[Item]], seqs: Sequence[Sequence[int]], p0: int
    ) -> list[npt.NDArray[np.float32]]:
        """Decode requests' suffixes (first-token labels) so that each rounds as alone; return
        the output rows in order.

        Each llama_decode call (``decode_calls``) starts at the first free cell, as a request
        alone does; in it, every request starts a multiple of ALIGN cells further, after pad
        tokens, and its cells go before the next call.
        """
        L, mem, pad = self._L, self.mem, self._pad_seq
        limit = self.config.max_batch
        if self.model.n_swa > 0:  # the pads' positions stay within one window: never reusable
            limit = max(1, min(limit, (self.model.n_swa - 1) // ALIGN))
        rows: list[npt.NDArray[np.float32]] = []
        for call in decode_calls([len(r) for r in runs], limit, self.config.ubatch()):
            items: list[Item] = []
            n_pads = 0
            for i in call:
                lead = -len(items) % ALIGN
                items += [(self._pad_token, n_pads + k, [pad], False) for k in range(lead)]
                n_pads += lead
                items += runs[i]
            rows += self._decode_items(items)
            for i in call:
                for s in seqs[i]:
                    L.llama_memory_seq_rm(mem, s, p0, -1)
            L.llama_memory_seq_rm(mem, pad, -1, -1)
        return rows

    # -- decoding ------------------------------------------------------------------------

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

    @staticmethod
    def _logprob(row: npt.NDArray[np.float32], tokens: Sequence[int]) -> npt.NDArray[np.float64]:
        """log-softmax of ``row`` at ``tokens`` only (no full-vocabulary log-prob array)."""
        x = row.astype(np.float64)
        m = x.max()
        return x[list(tokens)] - (m + np.log(np.exp(x - m).sum()))  # type: ignore[no-any-return]

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

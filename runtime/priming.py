"""The primed prefix in sequence 0: priming, repriming and saving or restoring it, and the cell
layout it is left in (the sliding window moved to the cache's front, a spacer up to ALIGN).

It knows token ids and KV cells; scoring requests after the prefix is ``engine``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from typing import Any

from pld.errors import ConfigError, ModelError

from .batch import ALIGN
from .context import LlamaContext

__all__ = ["PrimedContext"]

L_SWA_ONLY = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: only the sliding-window cache


class PrimedContext(LlamaContext):
    """A llama.cpp context whose sequence 0 holds a primed prefix, laid out as ``Engine``
    describes; thread-safe (one lock)."""

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

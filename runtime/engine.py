"""The inference engine: one llama.cpp context that evaluates a shared prefix once and then
scores label continuations for many requests, on the low-level llama.cpp API.

Sequence 0 holds the primed prefix. A request decodes only its suffix (straight into sequence 0,
or into a copy of it when requests are batched), reads one row of logits per label step and is
removed again. The context is ``context``, priming and its cell layout ``priming``. It knows
token ids, not bundles, templates or label names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pld.errors import ConfigError

from .batch import ALIGN, Item, decode_calls, label_room
from .priming import PrimedContext

__all__ = ["Engine"]


class Engine(PrimedContext):
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

    # -- requests ------------------------------------------------------------------------

    def capacity(self, suffix_len: int, label_extra: int = 0) -> int:
        """Tokens free for one request after the prefix (negative: it does not fit)."""
        return self.n_ctx - len(self.prefix) - suffix_len - label_extra

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
            self.stats.pad_tokens_decoded += n_pads
            for i in call:
                for s in seqs[i]:
                    L.llama_memory_seq_rm(mem, s, p0, -1)
            L.llama_memory_seq_rm(mem, pad, -1, -1)
        return rows

    @staticmethod
    def _logprob(row: npt.NDArray[np.float32], tokens: Sequence[int]) -> npt.NDArray[np.float64]:
        """log-softmax of ``row`` at ``tokens`` only (no full-vocabulary log-prob array)."""
        x = row.astype(np.float64)
        m = x.max()
        return x[list(tokens)] - (m + np.log(np.exp(x - m).sum()))  # type: ignore[no-any-return]

"""What `pld bench compare` returns: the summary (``CompareResult``), one ``ContenderResult`` per
contender and, for ``--json-out``, every request's record (``PerRequest``).

Fields that only some contenders have are ``UNSET`` when they do not apply, so the JSON leaves
them out; ``None`` is a value that could not be measured. Knows the shapes only.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .worker_protocol import Reply

__all__ = [
    "BatchRecord",
    "ColdStart",
    "CompareResult",
    "ContenderResult",
    "PerRequest",
    "RequestRecord",
]


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One timed request of a one-at-a-time contender: which input, which repeat, its reply."""

    input: int
    repeat: int
    ms: float
    completion_tokens: int | UnsetType = UNSET
    evaluated: int | float
    cache_n: int | UnsetType = UNSET
    server_prompt_ms: float | None | UnsetType = UNSET
    server_predicted_ms: float | None | UnsetType = UNSET
    label: str | None
    text: str | None
    prompt_tokens: int

    @classmethod
    def of(cls, input: int, repeat: int, reply: Reply) -> RequestRecord:
        """The record of one input's reply."""
        return cls(
            input=input,
            repeat=repeat,
            ms=reply.ms,
            completion_tokens=reply.completion_tokens,
            evaluated=reply.evaluated,
            cache_n=reply.cache_n,
            server_prompt_ms=reply.server_prompt_ms,
            server_predicted_ms=reply.server_predicted_ms,
            label=reply.labels[0],
            text=reply.texts[0],
            prompt_tokens=reply.prompt_tokens[0],
        )


class BatchRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One round of batched pld: every input of the round in one call."""

    inputs: list[int]
    repeat: int
    ms: float
    labels: list[str | None]
    texts: list[str | None]
    prompt_tokens: list[int]
    evaluated: int | float

    @classmethod
    def of(cls, inputs: list[int], repeat: int, reply: Reply) -> BatchRecord:
        """The record of one batched reply to ``inputs``."""
        return cls(
            inputs=inputs,
            repeat=repeat,
            ms=reply.ms,
            labels=reply.labels,
            texts=reply.texts,
            prompt_tokens=reply.prompt_tokens,
            evaluated=reply.evaluated,
        )


class PerRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Every contender's records (those that timed any) and the inputs they index."""

    pld: list[RequestRecord] | UnsetType = UNSET
    pld_batched: list[BatchRecord] | UnsetType = UNSET
    chat_completion: list[RequestRecord] | UnsetType = UNSET
    chat_completion_cached: list[RequestRecord] | UnsetType = UNSET
    chat_completion_logprobs: list[RequestRecord] | UnsetType = UNSET
    llama_server: list[RequestRecord] | UnsetType = UNSET
    llama_server_swa_full: list[RequestRecord] | UnsetType = UNSET
    llama_server_logprobs: list[RequestRecord] | UnsetType = UNSET
    llama_server_logprobs_swa_full: list[RequestRecord] | UnsetType = UNSET
    inputs: list[str]


class ColdStart(msgspec.Struct, frozen=True, kw_only=True):
    """A fresh process's first answer: a worker's answer time, or a server's readiness and
    slot restore."""

    label: str | None
    evaluated: int | float
    answer_ms: float | UnsetType = UNSET
    ready_ms: int | UnsetType = UNSET
    restored_tokens: int | None | UnsetType = UNSET
    restore_ms: float | None | UnsetType = UNSET
    cache_n: int | UnsetType = UNSET


class ContenderResult(msgspec.Struct, frozen=True, kw_only=True):
    """One contender's numbers; the timing fields are set only when it ``ran``, else ``reason``
    says why not."""

    ran: bool
    reason: str | UnsetType = UNSET
    n: int | UnsetType = UNSET
    p50_ms: float | UnsetType = UNSET
    p95_ms: float | UnsetType = UNSET
    requests_per_s: float | UnsetType = UNSET
    prompt_tokens_per_request: float | UnsetType = UNSET
    evaluated_tokens_per_request: float | UnsetType = UNSET
    evaluated_tokens_min_max: list[float] | UnsetType = UNSET
    warmup_evaluated: list[int | float] | UnsetType = UNSET
    label_agreement: float | None | UnsetType = UNSET
    valid_labels: float | UnsetType = UNSET
    peak_rss_mb: float | None | UnsetType = UNSET
    cached_tokens_per_request: float | UnsetType = UNSET
    batch_size: int | UnsetType = UNSET
    paired_ratio_p50: float | None | UnsetType = UNSET
    cold_start_ms: float | None
    cold_start_reason: str | UnsetType = UNSET
    cold_start: ColdStart | UnsetType = UNSET
    settings: dict[str, Any]  # what the contender reports of its own configuration


class CompareResult(msgspec.Struct, frozen=True, kw_only=True):
    """The comparison: the setting, pld's p50, each contender's p50 over pld's (``vs_NAME``,
    None with ``vs_NAME_reason`` when it did not run), cold starts and every contender's numbers
    (its ``label_agreement`` with pld among them).
    The JSON line leaves ``per_request`` out; ``--json-out`` keeps it."""

    bundle: str
    model: str
    prefix_tokens: int
    requests: int
    repeats: int
    inputs: str
    threads: int
    grammar: bool
    pld_p50_ms: float
    pld_batched_per_request_ms: float | None
    pld_batched_per_request_ms_reason: str | UnsetType = UNSET
    vs_chat_completion: float | None
    vs_chat_completion_reason: str | UnsetType = UNSET
    vs_chat_completion_cached: float | None
    vs_chat_completion_cached_reason: str | UnsetType = UNSET
    vs_chat_completion_logprobs: float | None
    vs_chat_completion_logprobs_reason: str | UnsetType = UNSET
    vs_llama_server: float | None
    vs_llama_server_reason: str | UnsetType = UNSET
    vs_llama_server_swa_full: float | None
    vs_llama_server_swa_full_reason: str | UnsetType = UNSET
    vs_llama_server_logprobs: float | None
    vs_llama_server_logprobs_reason: str | UnsetType = UNSET
    vs_llama_server_logprobs_swa_full: float | None
    vs_llama_server_logprobs_swa_full_reason: str | UnsetType = UNSET
    cold_start_ms: dict[str, float | None]
    contenders: dict[str, ContenderResult]
    per_request: PerRequest | UnsetType = UNSET

    def line(self) -> CompareResult:
        """The summary the JSON line prints: without ``per_request``."""
        return msgspec.structs.replace(self, per_request=UNSET)

"""The messages between `pld bench compare` and its contenders, one JSON object a line.

``WorkerSpec`` says what a worker process loads; the worker's first line is its ready line
(``PldInfo`` or ``ChatInfo``), then it answers each ``Request`` with a ``Reply`` (or
``SuffixTokens``). llama.cpp's server is read into the same ``Reply``. Knows the shapes only,
nothing of models or processes.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "ChatInfo",
    "Kind",
    "PldInfo",
    "Reply",
    "Request",
    "SlotReply",
    "SuffixTokens",
    "WorkerSpec",
    "settings_of",
]

Kind = Literal[
    "pld", "pld_batched", "chat_completion", "chat_completion_cached", "chat_completion_logprobs"
]


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one worker process loads and how it runs."""

    kind: Kind
    bundle: str
    model: str | None = None  # registry name or .gguf path (None: the bundle's student)
    threads: int
    gpu_layers: int = 0
    n_ctx: int = 0
    max_tokens: int = 8
    grammar: bool = True
    batch_size: int = 8
    state_dir: str | None = None
    ram_cache_mb: int = 512


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line to a worker: answer these texts, count their suffix tokens, or quit."""

    op: Literal["answer", "suffix_tokens", "quit"]
    texts: list[str] = []


class PldInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A pld worker's ready line: its prefix, labels and the model it loaded."""

    ready: bool = True
    load_ms: float
    prefix_tokens: int
    label_tokens: list[int]
    label_first_tokens: list[int]  # each label's first token id: what the logprobs contenders read
    prime_ms: float | None
    restore_ms: float | None
    calibrated: bool
    labels: list[str]
    chat_format: str
    model_path: str
    system_prompt: str


class ChatInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A llama-cpp-python worker's ready line: the context its ``Llama`` really got."""

    ready: bool = True
    load_ms: float
    n_ctx: int
    swa_full: bool
    flash_attn_type: int
    n_batch: int


class Reply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One answer to one or more texts, with what the contender says it evaluated.

    ``evaluated`` is the prompt tokens decoded per text; the llama.cpp contenders add
    ``completion_tokens``, llama.cpp's server its cache hit (``cache_n``) and own timings, and a
    cold answer whether pld's saved prefix state was ``restored``.
    """

    ms: float
    labels: list[str | None]
    texts: list[str | None]
    prompt_tokens: list[int]
    completion_tokens: int | UnsetType = UNSET
    evaluated: int | float  # as counted: a mean over a batch is a float
    cache_n: int | UnsetType = UNSET
    server_prompt_ms: float | None | UnsetType = UNSET
    server_predicted_ms: float | None | UnsetType = UNSET
    restored: bool | UnsetType = UNSET


class SuffixTokens(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A pld worker's count of each text's request tokens (the input turn after the prefix)."""

    suffix_tokens: list[int]


class SlotReply(msgspec.Struct, frozen=True, kw_only=True):
    """What llama-server answers to a slot save or restore (only the fields read here)."""

    n_saved: int | None = None
    n_restored: int | None = None
    timings: dict[str, float] = {}


def settings_of(info: PldInfo | ChatInfo) -> dict[str, Any]:
    """The ready line as a contender's recorded settings: without the texts and the flag."""
    skip = ("ready", "labels", "label_first_tokens", "system_prompt")
    return {k: v for k, v in msgspec.structs.asdict(info).items() if k not in skip}

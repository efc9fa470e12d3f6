"""Texts of chosen lengths in tokens for the scaling sweeps: a system prompt built from a
bundle's own task and rules, and an input cut from real records.

Knows the runtime's bundle and tokenizer; nothing of timing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pld.errors import BundleError
from pld.runtime import Bundle, Model, render_system_prompt

__all__ = ["input_of_length", "prompt_of_length"]


def prompt_of_length(bundle: Bundle, model: Model, tokens: int) -> str:
    """A system prompt of about ``tokens`` tokens: the bundle's task and its rules, cycled past
    the last one when more are needed (0: no system prompt at all)."""
    if tokens == 0:
        return ""
    rules = bundle.instructions
    if not rules:
        raise BundleError(f"bundle '{bundle.name}' has no rules to build prompts from; pass one")

    def render(k: int) -> str:
        return render_system_prompt(bundle.task, [rules[i % len(rules)] for i in range(k)])

    def count(k: int) -> int:
        return len(model.tokenize(render(k), special=False))

    hi = 1
    while count(hi) < tokens:
        hi *= 2
    lo = hi // 2
    while lo < hi:  # the fewest rules that reach the target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= tokens else (mid + 1, hi)
    if lo > 0 and tokens - count(lo - 1) < count(lo) - tokens:
        lo -= 1
    return render(lo)


def input_of_length(model: Model, pool: Sequence[str], tokens: int, start: int = 0) -> str:
    """Real inputs from ``pool`` (from record ``start`` on, wrapping) joined and cut to about
    ``tokens`` tokens; re-tokenizing the cut text may move the count by a token or two."""
    parts: list[str] = []
    ids: list[int] = []
    i = start
    while len(ids) < tokens:
        parts.append(pool[i % len(pool)])
        ids = model.tokenize("\n\n".join(parts), special=False)
        i += 1
    return "".join(model.piece(t) for t in ids[:tokens]).strip()

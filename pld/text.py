"""Text shortening shared by every prompt pld builds: one helper, two ways to cut.

Knows strings only.
"""

from __future__ import annotations

__all__ = ["clip"]

_MARK = "[...]"


def clip(text: str, max_chars: int, *, keep_end: bool = False) -> str:
    """Shorten ``text`` to about ``max_chars`` characters, marking the cut with ``[...]``.

    By default the start is kept and `` [...]`` appended (the result is ``max_chars`` plus the
    mark). With ``keep_end`` the text is stripped and cut to at most ``max_chars`` in all,
    keeping its first third and its end around `` [...] ``: tasks put what is asked last
    (Contract-NLI's hypothesis, LogiQA's options), so a front-only cut would lose it.
    """
    if not keep_end:
        return text if len(text) <= max_chars else f"{text[:max_chars]} {_MARK}"
    text = text.strip()
    if len(text) <= max_chars:
        return text
    mark = f" {_MARK} "
    room = max(max_chars - len(mark), 2)
    head = room // 3
    return text[:head].rstrip() + mark + text[len(text) - (room - head) :].lstrip()

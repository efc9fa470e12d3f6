"""Chat formats: how a system prompt and one input become the token stream the student reads.

A prompt is split at the input into a *prefix* (start of turn, system text, input header), which
is the same for every request and is evaluated once, and a *suffix* (the input, end of turn,
start of the model's turn). Template text is tokenized with special tokens parsed; user and
bundle text never is, so an input cannot smuggle in a control token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHAT_FORMATS", "ChatFormat", "Segment"]

# (text, parse_special)
Segment = tuple[str, bool]


@dataclass(frozen=True)
class ChatFormat:
    """The fixed text around the system prompt and the input for one model family."""

    name: str
    turn_start: str
    system_end: str
    turn_end: str
    input_header: str = "Input:\n"

    def prefix(self, system_prompt: str) -> list[Segment]:
        """Segments of the shared prefix, ending with the input header."""
        segments: list[Segment] = [(self.turn_start, True)]
        if system_prompt:
            segments += [(system_prompt, False), (self.system_end, True)]
        return segments + [(self.input_header, False)]

    def suffix(self, text: str) -> list[Segment]:
        """Segments of one request: the input, then the opening of the model's answer."""
        return [(text, False), (self.turn_end, True)]


CHAT_FORMATS: dict[str, ChatFormat] = {
    # Gemma has no system role: the system text opens the first user turn.
    "gemma": ChatFormat(
        name="gemma",
        turn_start="<start_of_turn>user\n",
        system_end="\n\n",
        turn_end="<end_of_turn>\n<start_of_turn>model\n",
    ),
    "chatml": ChatFormat(
        name="chatml",
        turn_start="<|im_start|>system\n",
        system_end="<|im_end|>\n<|im_start|>user\n",
        turn_end="<|im_end|>\n<|im_start|>assistant\n",
    ),
}

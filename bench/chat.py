"""What every llama.cpp contender of `pld bench compare` sends and how its answer is read: the
chat template of the model's chat format (package data, ``bench/templates/*.j2``), the user turn,
the prompt rendered as text for a completion endpoint, a grammar that allows only the labels, and
the label a generated text names or whose first token scores highest.

Knows chat formats and label strings; nothing of processes, servers or timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from pld.errors import ConfigError

__all__ = [
    "EOS",
    "chat_template",
    "completion_prompt",
    "first_token_label",
    "label_grammar",
    "match_label",
    "user_message",
]

# chat format -> (BOS, EOS) text that the template's bos_token and eos_token stand for
EOS = {"gemma": ("<bos>", "<eos>"), "chatml": ("", "<|im_end|>")}


@cache
def chat_template(chat_format: str) -> str:
    """The Jinja chat template a user supplies for a model of this chat format."""
    if chat_format not in EOS:
        raise ConfigError(
            f"no chat template for chat format {chat_format!r}; pld bench compare knows "
            f"{', '.join(sorted(EOS))}"
        )
    return (resources.files("pld.bench.templates") / f"{chat_format}.j2").read_text("utf-8")


def match_label(text: str, labels: list[str]) -> str | None:
    """The label a generated text names: the longest label it starts with, else the one label
    it is a prefix of (a cut-off answer), else None."""
    t = text.strip().lower()
    starts = [lab for lab in labels if t.startswith(lab.lower())]
    if starts:
        return max(starts, key=len)
    partial = [lab for lab in labels if t and lab.lower().startswith(t)]
    return partial[0] if len(partial) == 1 else None


def label_grammar(labels: list[str]) -> str:
    """A GBNF grammar whose only sentences are the labels."""
    quoted = ['"' + lab.replace("\\", "\\\\").replace('"', '\\"') + '"' for lab in labels]
    return "root ::= " + " | ".join(quoted)


def user_message(text: str) -> str:
    """The user turn every generating contender sends: pld's input header, then the input."""
    return "Input:\n" + text


@cache
def _formatter(chat_format: str) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # no BOS text: create_completion and llama-server's /completion add the model's BOS token
    return Jinja2ChatFormatter(template=chat_template(chat_format), eos_token=EOS[chat_format][1],
                               bos_token="")  # fmt: skip


def completion_prompt(chat_format: str, system: str, text: str) -> str:
    """The chat prompt as text for a completion endpoint: the system and user turns and the
    generation prompt, rendered by the chat template, without the BOS the endpoint adds."""
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": user_message(text)},
    ]
    return str(_formatter(chat_format)(messages=messages).prompt)


def first_token_label(
    scores: Mapping[int, float], labels: Sequence[str], first_tokens: Sequence[int]
) -> str | None:
    """The label whose first token scores highest in ``scores`` (token id -> logit or
    log-probability; the first label on a tie, as pld), None when no label's first token is
    among them."""
    present = [i for i, tok in enumerate(first_tokens) if tok in scores]
    if not present:
        return None
    return labels[max(present, key=lambda i: scores[first_tokens[i]])]

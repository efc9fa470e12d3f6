"""Turn a ``--teacher`` spec into a backend: ``openai:MODEL@BASE_URL`` or ``local:NAME_OR_PATH``.

Knows the spec syntax and which class serves it, nothing about prompts or stages.
"""

from __future__ import annotations

from typing import Any

from pld.distiller.ask import Teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import OpenAITeacher, TeacherError

__all__ = ["open_teacher"]


def open_teacher(spec: str, *, cache: ResponseCache, **openai: Any) -> Teacher:
    """A teacher for ``spec`` sharing ``cache``; ``openai`` options go to ``OpenAITeacher``."""
    spec = spec.strip()
    if spec.startswith("local:") and len(spec) > len("local:"):
        from pld.distiller.local import LocalTeacher

        return LocalTeacher(spec[len("local:") :], cache=cache)
    if spec.startswith("openai:"):
        return OpenAITeacher.from_spec(spec, cache=cache, **openai)
    raise TeacherError(
        f"malformed teacher spec {spec!r}; use 'openai:MODEL@BASE_URL' (any OpenAI-compatible "
        "server; key from PLD_TEACHER_API_KEY or OPENAI_API_KEY) or 'local:NAME_OR_PATH' (a GGUF "
        "run with llama-cpp-python, e.g. 'local:smollm2-135m-instruct')"
    )

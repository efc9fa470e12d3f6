"""pld.distiller: the offline half. Labelled data and a teacher model in, a bundle out.

Stages, one module each: ``extract`` (one ``{rationale, rule}`` per example), ``cluster``
(DBSCAN over rule embeddings), ``consolidate`` (one instruction per cluster, and the prompt
budget), ``loop`` (the conflict loop with the student from ``student``), wired together by
``pipeline.distill`` (``pld distill``). Teachers share the base class ``teacher.Teacher``:
``openai_teacher.OpenAITeacher`` (any OpenAI-compatible server) and ``local.LocalTeacher`` (a
GGUF through llama-cpp-python), both behind the content-addressed ``cache.ResponseCache`` that
makes runs resumable and replayable. Prompts are files in ``prompts/`` (see ``templates``).

Importing this package loads nothing: each name below is imported on first use, so that
httpx, scikit-learn and llama-cpp-python stay unloaded until a distillation needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pld.distiller.backends import open_teacher
    from pld.distiller.cache import ResponseCache
    from pld.distiller.local import LocalTeacher
    from pld.distiller.openai_teacher import OpenAITeacher
    from pld.distiller.pipeline import DistillResult, Settings, distill
    from pld.distiller.teacher import ChatRequest, ChatResult, Teacher

__all__ = [
    "ChatRequest",
    "ChatResult",
    "DistillResult",
    "LocalTeacher",
    "OpenAITeacher",
    "ResponseCache",
    "Settings",
    "Teacher",
    "distill",
    "open_teacher",
]

_HOMES = {
    "ChatRequest": "teacher",
    "ChatResult": "teacher",
    "DistillResult": "pipeline",
    "LocalTeacher": "local",
    "OpenAITeacher": "openai_teacher",
    "ResponseCache": "cache",
    "Settings": "pipeline",
    "Teacher": "teacher",
    "distill": "pipeline",
    "open_teacher": "backends",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

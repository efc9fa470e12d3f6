"""pld.distiller: the offline half. Labelled data and a teacher model in, a bundle out.

Stages, one module each: ``extract`` (one ``{rationale, rule}`` per example), ``cluster``
(DBSCAN over rule embeddings), ``consolidate`` (one instruction per cluster, and the prompt
budget), ``loop`` (the conflict loop with the student from ``student``), wired together by
``pipeline.distill`` (``pld distill``). Teachers share the base class ``teacher.Teacher``:
``openai_teacher.OpenAITeacher`` (any OpenAI-compatible server) and ``local.LocalTeacher`` (a
GGUF through llama-cpp-python), both behind the content-addressed ``cache.ResponseCache`` that
makes runs resumable and replayable; the embedding-only ``embedders.WordLlamaEmbedder`` (the
default, shipped in its wheel) and ``embedders.OnnxEmbedder`` share that base. ``ruleset``
clusters a file of rules as a run would (``pld distill cluster``). Prompts are files in
``prompts/`` (see ``templates``).

Importing this package loads nothing: each name below is imported on first use, so that
httpx, scikit-learn, llama-cpp-python, tokenizers and onnxruntime stay unloaded until a
distillation needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pld.distiller.backends import open_teacher
    from pld.distiller.cache import ResponseCache
    from pld.distiller.embedders import OnnxEmbedder, WordLlamaEmbedder
    from pld.distiller.local import LocalTeacher
    from pld.distiller.openai_teacher import OpenAITeacher
    from pld.distiller.pipeline import DistillResult, Settings, distill
    from pld.distiller.ruleset import RuleClusters, cluster_rules, read_rules
    from pld.distiller.teacher import ChatRequest, ChatResult, Teacher

__all__ = [
    "ChatRequest",
    "ChatResult",
    "DistillResult",
    "LocalTeacher",
    "OnnxEmbedder",
    "OpenAITeacher",
    "ResponseCache",
    "RuleClusters",
    "Settings",
    "Teacher",
    "WordLlamaEmbedder",
    "cluster_rules",
    "distill",
    "open_teacher",
    "read_rules",
]

_HOMES = {
    "ChatRequest": "teacher",
    "ChatResult": "teacher",
    "DistillResult": "pipeline",
    "LocalTeacher": "local",
    "OnnxEmbedder": "embedders",
    "OpenAITeacher": "openai_teacher",
    "ResponseCache": "cache",
    "RuleClusters": "ruleset",
    "Settings": "pipeline",
    "Teacher": "teacher",
    "WordLlamaEmbedder": "embedders",
    "cluster_rules": "ruleset",
    "distill": "pipeline",
    "open_teacher": "backends",
    "read_rules": "ruleset",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

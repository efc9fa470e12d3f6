"""Turn a ``--teacher`` or ``--embedder`` spec into a backend: ``openai:MODEL@BASE_URL``,
``local:NAME_OR_PATH``, and for embeddings only ``wordllama[:CONFIG]`` and ``onnx:DIR``.

Knows the spec syntax and which class serves it, nothing about prompts or stages. Each backend
is imported only when a spec asks for it (httpx for one, llama-cpp-python for another).
``TeacherPool`` keeps the backends of one run: one per spec, all closed together.
"""

from __future__ import annotations

from typing import Any

from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import Teacher
from pld.errors import TeacherError

__all__ = ["DEFAULT_EMBEDDER", "TeacherPool", "open_teacher"]

DEFAULT_EMBEDDER = "wordllama"  # ships in its wheel: no download, no server


def open_teacher(spec: str, *, cache: ResponseCache, **openai: Any) -> Teacher:
    """A teacher for ``spec`` sharing ``cache``; ``openai`` options go to ``OpenAITeacher``."""
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "local" and rest:
        from pld.distiller.local import LocalTeacher

        return LocalTeacher(rest, cache=cache)
    if kind == "openai":
        from pld.distiller.openai_teacher import OpenAITeacher

        return OpenAITeacher.from_spec(spec, cache=cache, **openai)
    if kind == "wordllama" and (rest or not spec.endswith(":")):
        from pld.distiller.embedders import WORDLLAMA_CONFIG, WordLlamaEmbedder

        return WordLlamaEmbedder(rest or WORDLLAMA_CONFIG, cache=cache)
    if kind == "onnx" and rest:
        from pld.distiller.embedders import OnnxEmbedder

        return OnnxEmbedder(rest, cache=cache)
    raise TeacherError(
        f"malformed teacher spec {spec!r}; use 'openai:MODEL@BASE_URL' (any OpenAI-compatible "
        "server; key from PLD_TEACHER_API_KEY or OPENAI_API_KEY) or 'local:NAME_OR_PATH' (a GGUF "
        "run with llama-cpp-python, e.g. 'local:smollm2-135m-instruct'); an --embedder may also "
        "be 'wordllama' (the default, shipped offline) or 'onnx:DIR' (model.onnx and "
        "tokenizer.json)"
    )


class TeacherPool:
    """Teachers by spec sharing one cache: each opened on first use, all closed together."""

    def __init__(self, cache: ResponseCache, **openai: Any) -> None:
        self.cache, self.openai = cache, openai
        self.opened: dict[str, Teacher] = {}

    def get(self, spec: str) -> Teacher:
        """The teacher for ``spec``, opened the first time it is asked for."""
        if spec not in self.opened:
            self.opened[spec] = open_teacher(spec, cache=self.cache, **self.openai)
        return self.opened[spec]

    def close(self) -> None:
        """Close every teacher opened so far."""
        for teacher in self.opened.values():
            teacher.close()

    def __enter__(self) -> TeacherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

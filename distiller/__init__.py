"""pld.distiller: the offline half. Labelled data and a teacher model in, a bundle out.

Stages, one module each: ``extract`` (one ``{rationale, rule}`` per example), ``cluster``
(DBSCAN over rule embeddings), ``consolidate`` (one instruction per cluster, and the prompt
budget), ``loop`` (the conflict loop with the student from ``student``), wired together by
``pipeline.distill`` (``pld distill``). Teachers: ``teacher.OpenAITeacher`` (any
OpenAI-compatible server) and ``local.LocalTeacher`` (a GGUF through llama-cpp-python), both
behind the content-addressed ``cache.ResponseCache`` that makes runs resumable and replayable.
Prompts are files in ``prompts/``.

Importing this package loads nothing heavy.
"""

__all__: list[str] = []

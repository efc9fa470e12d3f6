"""pld.distiller: the offline half. So far: the teacher client (OpenAI-compatible chat and
embeddings with retries) and the content-addressed response cache that makes runs resumable.
Extraction, clustering, consolidation, the conflict loop and bundle writing are still to come.

Importing this package loads nothing heavy; httpx is imported with ``pld.distiller.teacher``.
"""

__all__: list[str] = []

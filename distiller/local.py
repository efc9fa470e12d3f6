"""The local teacher: chat completions and embeddings from a GGUF model that llama-cpp-python
runs in this process, behind the same ``Teacher`` interface as ``OpenAITeacher``.

Every call goes through a ``ResponseCache`` keyed by the model file's sha256, so a cache hit
never loads the model; the models load on the first real call and one lock serialises their use.
It knows nothing about prompts, stages or what the replies mean.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import ChatResult, JsonSchema, Message, Teacher, schema_of
from pld.errors import TeacherError
from pld.models import ResolvedModel, resolve

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["LocalTeacher"]


class LocalTeacher(Teacher):
    """A cached teacher on a local GGUF model (a registry name or a .gguf path).

    Chat uses the model's registry chat format ("gemma" or "chatml"); a JSON schema becomes a
    grammar that constrains the reply. Embeddings are mean-pooled and L2-normalised. One
    model answers one request at a time, so ``chat_many`` runs them one after another.
    """

    max_workers = 1

    def __init__(
        self,
        name_or_path: str,
        *,
        cache: ResponseCache | None = None,
        n_ctx: int = 4096,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        seed: int = 0,
    ) -> None:
        self.resolved: ResolvedModel = resolve(name_or_path)
        self.model = self.resolved.name
        self.cache = cache if cache is not None else ResponseCache()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self._lock = threading.Lock()
        self._llm: Llama | None = None
        self._embedder: Llama | None = None

    def close(self) -> None:
        """Free both models; a later call loads them again."""
        with self._lock:
            for llm in (self._llm, self._embedder):
                if llm is not None:
                    llm.close()
            self._llm = self._embedder = None

    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: JsonSchema | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> ChatResult:
        """One chat completion, from the cache when this exact request was made before."""
        body: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
            "response_format": None,
            "seed": self.seed,
        }
        if json_schema is not None:
            body["response_format"] = {"type": "json_object", "schema": schema_of(json_schema)[1]}
        request = {
            "endpoint": "local.chat",
            "model_sha256": self.resolved.sha256,
            "chat_format": self.resolved.chat_format,
            **body,
        }
        response, cached = self.cache.fetch(request, partial(self._complete, body))
        return ChatResult.from_response(response, cached)

    # ---- the embedding hooks of Teacher.embed ---------------------------------------------

    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        return {
            "endpoint": "local.embeddings",
            "model_sha256": self.resolved.sha256,
            "pooling": "mean-l2",
            "input": batch,
        }

    # ---- llama.cpp ----------------------------------------------------------------------

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        if self.resolved.chat_format == "gemma":
            messages = _fold_system(messages)
        with self._lock:
            if self._llm is None:
                self._llm = self._load(embedding=False)
            try:
                response = self._llm.create_chat_completion(
                    messages=messages,
                    temperature=body["temperature"],
                    max_tokens=body["max_tokens"],
                    seed=body["seed"],
                    response_format=body["response_format"],
                    model=self.model,
                )
            except ValueError as exc:  # the prompt does not fit in the context
                raise TeacherError(
                    f"local teacher '{self.model}' refused the request ({exc}); "
                    f"shorten the prompt or raise n_ctx (now {self.n_ctx})"
                ) from exc
        return dict(response)  # type: ignore[arg-type]

    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load(embedding=True)
            try:
                vectors, n_tokens = self._embedder.embed(
                    batch, normalize=True, truncate=False, return_count=True
                )
            except ValueError as exc:  # a text longer than the batch (= n_ctx) tokens
                raise TeacherError(
                    f"local teacher '{self.model}' cannot embed a text ({exc}); "
                    f"shorten it or raise n_ctx (now {self.n_ctx})"
                ) from exc
        return {
            "data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens},
        }

    def _load(self, *, embedding: bool) -> Llama:
        import llama_cpp

        from pld.runtime.model import quiet_llama  # verbose=False alone lets warnings through

        quiet_llama()
        options: dict[str, Any] = {"chat_format": self.resolved.chat_format}
        if embedding:
            # The whole text must fit in one batch: llama.cpp pools one sequence per batch slot.
            options = {
                "embedding": True,
                "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                "n_batch": self.n_ctx,
                "n_ubatch": self.n_ctx,
            }
        try:
            return llama_cpp.Llama(
                self.resolved.path,
                n_ctx=self.n_ctx,
                # 0 means every core, as in the runtime; llama-cpp-python's own default (None)
                # is half of them, which halved the teacher's speed on two cores
                n_threads=self.n_threads or max(1, os.cpu_count() or 1),
                n_threads_batch=self.n_threads or max(1, os.cpu_count() or 1),
                n_gpu_layers=self.n_gpu_layers,
                seed=self.seed,
                verbose=False,
                **options,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise TeacherError(
                f"cannot load local teacher model '{self.model}' from '{self.resolved.path}' "
                f"({exc}); check that it is a GGUF model llama-cpp-python "
                f"{llama_cpp.__version__} supports, or lower n_ctx/n_gpu_layers if memory ran out"
            ) from exc


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Put system text in front of the first user turn, as Gemma's own chat template does.

    llama-cpp-python's "gemma" format silently drops system messages.
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if not system:
        return rest
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]

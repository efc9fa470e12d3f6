"""Embedding-only backends: ``wordllama`` (the default ``--embedder``) and ``onnx:DIR``.

Both are ``Teacher``s that embed and refuse to chat, so the pipeline's cache, batching and
provenance treat them like any other backend. Both mean-pool token vectors with the attention
mask and L2-normalise. The heavy libraries (safetensors, tokenizers, onnxruntime) are imported
on the first real embedding, never on a cache hit. Knows nothing about rules or clustering.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from pld.distiller.cache import ResponseCache
from pld.distiller.teacher import JsonSchema, Message, Teacher
from pld.errors import DependencyError, TeacherError
from pld.paths import cache_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "WORDLLAMA_CONFIG",
    "Embedder",
    "OnnxEmbedder",
    "WordLlamaEmbedder",
    "mean_pool",
    "wordllama_files",
]

WORDLLAMA_CONFIG = "l2_supercat"  # the model the wordllama wheel ships
WORDLLAMA_DIM = 256
ONNX_INSTALL = "pip install onnxruntime tokenizers"


class Embedder(Teacher):
    """A backend that embeds only; ``chat`` is an error that names the fix."""

    spec: str

    def chat(
        self,
        messages: Sequence[Message],
        *,
        json_schema: JsonSchema | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> NoReturn:
        """Always raises TeacherError: an embedding model writes no text."""
        raise TeacherError(
            f"'{self.spec}' is an embedding model and cannot chat; use it as --embedder and an "
            "'openai:MODEL@BASE_URL' or 'local:NAME' model as --teacher and --synthesis"
        )


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """L2-normalised mean of token states ``[batch, seq, dim]`` over the tokens ``mask`` keeps
    (``[batch, seq]``); a text without tokens stays a zero vector."""
    m = mask.astype(np.float32)[..., None]
    pooled = np.sum(states * m, axis=1, dtype=np.float32) / np.maximum(m.sum(axis=1), 1.0)
    return normalise(pooled)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _response(vectors: np.ndarray, tokens: int) -> dict[str, Any]:
    """An OpenAI-shaped embeddings response (float32 values survive JSON exactly)."""
    return {
        "data": [{"index": i, "embedding": v} for i, v in enumerate(vectors.tolist())],
        "usage": {"prompt_tokens": tokens},
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- WordLlama -------------------------------------------------------------------------------


def wordllama_files(config: str = WORDLLAMA_CONFIG) -> tuple[Path, Path]:
    """``(weights, tokenizer)`` of a WordLlama config, from the installed wheel or else from
    ``wordllama/`` in pld's cache directory (where other configs' files can be put by hand).

    The wheel ships ``weights/l2_supercat_256.safetensors`` and
    ``tokenizers/l2_supercat_tokenizer_config.json``; ``WordLlama.load()`` looks for the
    tokenizer under ``tokenizer/`` and would download it, so pld reads both files itself.
    """
    spec = importlib.util.find_spec("wordllama")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            "the default embedder needs the wordllama package, which is not installed; "
            "pip install 'pld[distill]' (or pass --embedder openai:MODEL@URL or local:NAME)"
        )
    weights_name = f"{config}_{WORDLLAMA_DIM}.safetensors"
    tokenizer_name = f"{config}_tokenizer_config.json"
    roots = [Path(p) for p in spec.submodule_search_locations] + [cache_dir() / "wordllama"]
    weights = [r / "weights" / weights_name for r in roots]
    tokenizer = [r / sub / tokenizer_name for r in roots for sub in ("tokenizers", "tokenizer")]
    found_w = next((p for p in weights if p.is_file()), None)
    found_t = next((p for p in tokenizer if p.is_file()), None)
    if found_w is None or found_t is None:
        raise TeacherError(
            f"wordllama config '{config}' is not installed (no {weights_name} and "
            f"{tokenizer_name} in the wordllama package or in {roots[-1]}/weights and "
            f"{roots[-1]}/tokenizers); the wheel ships '{WORDLLAMA_CONFIG}': use "
            f"--embedder wordllama, or put the two files there"
        )
    return found_w, found_t


class WordLlamaEmbedder(Embedder):
    """WordLlama's static token embeddings (256 dimensions), mean-pooled and normalised: what
    ``WordLlama.load(config).embed(texts, norm=True)`` computes, from the files in the wheel.

    No file is downloaded and no network is reached: the weights and tokenizer are read from
    disk (``wordllama_files``), loaded on the first embedding that misses the cache.
    """

    def __init__(self, config: str = WORDLLAMA_CONFIG, *, cache: ResponseCache | None = None):
        self.config = config
        self.spec = "wordllama" if config == WORDLLAMA_CONFIG else f"wordllama:{config}"
        self.model = f"wordllama-{config}"
        self.version = _version("wordllama")
        self.weights, self.tokenizer_file = wordllama_files(config)
        self.cache = cache if cache is not None else ResponseCache()
        self._lock = threading.Lock()
        self._table: np.ndarray | None = None
        self._tokenizer: Tokenizer | None = None

    def describe(self) -> dict[str, str]:
        """The model and the wordllama version whose wheel shipped it."""
        return {"model": self.model, "package": f"wordllama {self.version}"}

    def close(self) -> None:
        """Drop the loaded table; a later embedding loads it again."""
        with self._lock:
            self._table = self._tokenizer = None

    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        return {
            "endpoint": "wordllama.embeddings",
            "config": self.config,
            "dim": WORDLLAMA_DIM,
            "wordllama": self.version,
            "pooling": "mean-l2",
            "input": batch,
        }

    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        table, tokenizer = self._load()
        encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(batch), -1)
        mask = np.array([e.attention_mask for e in encodings]).reshape(len(batch), -1)
        np.clip(ids, 0, len(table) - 1, out=ids)  # as WordLlama does
        return _response(mean_pool(table[ids], mask), int(mask.sum()))

    def _load(self) -> tuple[np.ndarray, Tokenizer]:
        with self._lock:
            if self._table is None or self._tokenizer is None:
                try:
                    from safetensors.numpy import load_file
                    from tokenizers import Tokenizer
                except ImportError:
                    raise DependencyError(
                        "the wordllama embedder needs safetensors and tokenizers (wordllama's "
                        "own dependencies); pip install 'pld[distill]'"
                    ) from None
                tensors = load_file(str(self.weights))
                self._table = np.ascontiguousarray(tensors["embedding.weight"], dtype=np.float32)
                tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
                tokenizer.enable_padding()
                tokenizer.no_truncation()
                self._tokenizer = tokenizer
            return self._table, self._tokenizer


# ---- ONNX ------------------------------------------------------------------------------------


class OnnxEmbedder(Embedder):
    """A sentence-embedding model exported to ONNX: a folder with ``model.onnx`` and
    ``tokenizer.json`` (what an ONNX export of a sentence-transformers model holds).

    Texts are tokenised with special tokens, padded per batch (truncated as the tokenizer says),
    run with onnxruntime on the CPU, mean-pooled with the attention mask when the graph's first
    output holds token states ``[batch, seq, dim]`` (a pooled ``[batch, dim]`` output is used
    as it is), and L2-normalised. The cache key holds both files' sha256.
    """

    def __init__(self, directory: str | Path, *, cache: ResponseCache | None = None) -> None:
        from pld.models.hashing import sha256_file

        self.directory = Path(directory).expanduser()
        self.spec = f"onnx:{directory}"
        self.model = self.directory.resolve().name
        model, tokenizer = self.directory / "model.onnx", self.directory / "tokenizer.json"
        missing = [p.name for p in (model, tokenizer) if not p.is_file()]
        if missing:
            raise TeacherError(
                f"'{self.directory}' has no {' and no '.join(missing)}; --embedder onnx:DIR needs "
                "a folder with model.onnx and tokenizer.json (an ONNX export of a "
                "sentence-transformers model)"
            )
        self.model_file, self.tokenizer_file = model, tokenizer
        self.model_sha256 = sha256_file(model)
        self.tokenizer_sha256 = sha256_file(tokenizer, use_cache=False)
        self.cache = cache if cache is not None else ResponseCache()
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Tokenizer | None = None

    def describe(self) -> dict[str, str]:
        """The model folder's name, its model.onnx's sha256 and the onnxruntime version."""
        return {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "package": f"onnxruntime {_version('onnxruntime')}",
        }

    def close(self) -> None:
        """Drop the session; a later embedding starts it again."""
        with self._lock:
            self._session = self._tokenizer = None

    def _embedding_request(self, batch: list[str]) -> dict[str, Any]:
        return {
            "endpoint": "onnx.embeddings",
            "model_sha256": self.model_sha256,
            "tokenizer_sha256": self.tokenizer_sha256,
            "pooling": "mean-l2",
            "input": batch,
        }

    def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        session, tokenizer = self._load()
        encodings = tokenizer.encode_batch(batch)
        n = len(batch)
        columns = {
            "input_ids": np.array([e.ids for e in encodings]).reshape(n, -1),
            "attention_mask": np.array([e.attention_mask for e in encodings]).reshape(n, -1),
            "token_type_ids": np.array([e.type_ids for e in encodings]).reshape(n, -1),
        }
        feed = {}
        for spec in session.get_inputs():
            if spec.name not in columns:
                raise TeacherError(
                    f"{self.model_file} wants an input '{spec.name}'; onnx: embedders feed "
                    f"only {', '.join(columns)}"
                )
            dtype = np.int32 if spec.type == "tensor(int32)" else np.int64
            feed[spec.name] = columns[spec.name].astype(dtype)
        try:
            outputs = session.run(None, feed)
        except Exception as exc:  # onnxruntime's errors share no base class
            raise TeacherError(
                f"the ONNX embedder in '{self.directory}' failed on a batch ({exc}); check that "
                "tokenizer.json truncates to the model's longest input"
            ) from exc
        first = np.asarray(outputs[0], dtype=np.float32)
        mask = columns["attention_mask"]
        if first.ndim == 3:
            vectors = mean_pool(first, mask)
        elif first.ndim == 2 and len(first) == n:
            vectors = normalise(first)
        else:
            raise TeacherError(
                f"{self.model_file}'s first output has shape {first.shape}; onnx: embedders "
                "need token states [batch, seq, dim] or sentence vectors [batch, dim]"
            )
        return _response(vectors, int(mask.sum()))

    def _load(self) -> tuple[Any, Tokenizer]:
        with self._lock:
            if self._session is None or self._tokenizer is None:
                try:
                    import onnxruntime
                    from tokenizers import Tokenizer
                except ImportError:
                    raise DependencyError(
                        f"--embedder onnx: needs onnxruntime and tokenizers; {ONNX_INSTALL} "
                        "(or pip install 'pld[onnx]')"
                    ) from None
                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3  # errors only
                try:
                    session = onnxruntime.InferenceSession(
                        str(self.model_file), options, providers=["CPUExecutionProvider"]
                    )
                    tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
                except Exception as exc:  # onnxruntime's and tokenizers' errors have no base
                    raise TeacherError(
                        f"cannot load the ONNX embedder in '{self.directory}' ({exc}); check "
                        "that model.onnx and tokenizer.json are a valid export"
                    ) from exc
                if tokenizer.padding is None:
                    tokenizer.enable_padding()
                self._session, self._tokenizer = session, tokenizer
            return self._session, self._tokenizer

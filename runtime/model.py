"""A loaded GGUF model and its vocabulary, on llama.cpp's low-level API.

One ``Model`` can serve many engines (bundles) at once: the weights are loaded once, and each
engine owns its own context. Which file a name means is ``pld.models``; this module knows
loading and tokenizing, not prompts, bundles or contexts.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from pld.errors import ModelError
from pld.models import ResolvedModel, resolve

__all__ = ["Model", "quiet_llama"]

_LOG_CALLBACK: Any = None


def quiet_llama() -> None:
    """Silence llama.cpp's stderr chatter unless PLD_LLAMA_LOG=1 (set once per process)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None or os.environ.get("PLD_LLAMA_LOG") == "1":
        return
    import llama_cpp.llama_cpp as L

    @L.llama_log_callback  # type: ignore[untyped-decorator]
    def _drop(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    _LOG_CALLBACK = _drop
    L.llama_log_set(_drop, ctypes.c_void_p(0))


class Model:
    """A loaded GGUF model (from a verified ``ResolvedModel``) and its vocabulary.

    Pass one to several ``Classifier``s to share its weights; whoever opened it closes it.
    """

    def __init__(self, resolved: ResolvedModel, *, n_gpu_layers: int = 0) -> None:
        import llama_cpp.llama_cpp as L

        quiet_llama()
        L.llama_backend_init()
        self.lib: Any = L  # the llama.cpp bindings, for the engines built on this model
        self.resolved = resolved
        self.path = resolved.path
        self.n_gpu_layers = n_gpu_layers
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        ptr = L.llama_model_load_from_file(self.path.encode(), params)
        if not ptr:
            raise ModelError(
                f"llama.cpp could not load {self.path}; check that it is a GGUF file this "
                "llama-cpp-python supports (pld models path NAME re-verifies registry models)"
            )
        self.ptr = ptr
        self.vocab = L.llama_model_get_vocab(ptr)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(L.llama_vocab_bos(self.vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(ptr))
        self.n_swa = int(L.llama_model_n_swa(ptr))
        self.n_layer = int(L.llama_model_n_layer(ptr))
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(ptr, buf, 256)
        self.description = buf.value.decode(errors="replace")

    @classmethod
    def open(cls, name_or_path: str, *, n_gpu_layers: int = 0) -> Model:
        """Resolve a registry name or .gguf path (verified, never downloaded) and load it."""
        return cls(resolve(name_or_path), n_gpu_layers=n_gpu_layers)

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids of ``text`` (no BOS); ``special`` parses control tokens like <end_of_turn>."""
        L = self.lib
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), arr, cap, False, special)
        if n < 0:
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, raw, len(raw), arr, cap, False, special)
        return list(arr[:n])

    def piece(self, token: int) -> str:
        """The text of one token."""
        buf = ctypes.create_string_buffer(128)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, 128, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def close(self) -> None:
        """Free the model (engines using it must be closed first)."""
        if getattr(self, "ptr", None):
            self.lib.llama_model_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The in-process contenders of `pld bench compare`, each run the way its users run it, in a
worker process of its own.

A worker loads one contender (pld one at a time, pld batched, llama-cpp-python's
``Llama.create_chat_completion`` with or without its ``LlamaRAMCache``, or its
``create_completion`` reading one token's logits) and answers JSON lines on stdin
(``worker_protocol``). Every answer says what was evaluated, so the driver (``compare.py``)
reports what each contender really did. Knows the runtime's public API and llama-cpp-python's
high-level one; llama.cpp's own server is ``llama_server.py``.

    python -m pld.bench.contenders serve SPEC_JSON   # a worker: JSON lines in, JSON lines out
    python -m pld.bench.contenders cold SPEC_JSON    # one cold answer (reads the text on stdin)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from pld.errors import ConfigError

from .chat import (
    EOS,
    chat_template,
    completion_prompt,
    first_token_label,
    label_grammar,
    match_label,
    user_message,
)
from .worker_protocol import ChatInfo, PldInfo, Reply, Request, SuffixTokens, WorkerSpec

__all__ = ["ChatContender", "LogprobsContender", "PldContender", "cold", "main", "serve"]


class PldContender:
    """pld's Classifier, one request at a time or in batches; the reference labels."""

    def __init__(self, spec: WorkerSpec) -> None:
        from pld.runtime import Classifier

        batched = spec.kind == "pld_batched"
        self.clf = Classifier.open(
            spec.bundle,
            model=spec.model,
            n_threads=spec.threads,
            n_gpu_layers=spec.gpu_layers,
            max_batch=spec.batch_size if batched else 1,
            state_dir=Path(spec.state_dir) if spec.state_dir else None,
            allow_model_mismatch=spec.model is not None,
        )
        self.labels = list(self.clf.labels)

    @property
    def restored(self) -> bool:
        """Whether opening restored a saved prefix state instead of priming it."""
        return self.clf.restore_ms is not None

    def info(self, load_ms: float) -> PldInfo:
        """The ready line."""
        c = self.clf
        return PldInfo(
            load_ms=load_ms,
            prefix_tokens=len(c.prefix_tokens),
            label_tokens=[len(t) for t in c.label_tokens],
            label_first_tokens=[t[0] for t in c.label_tokens],
            prime_ms=c.prime_ms,
            restore_ms=c.restore_ms,
            calibrated=c.calibrated,
            labels=self.labels,
            chat_format=c.resolved.chat_format,
            model_path=c.resolved.path,
            system_prompt=c.bundle.system_prompt,
        )

    def answer(self, texts: list[str]) -> Reply:
        """Classify the texts in one call; ``evaluated`` is the tokens decoded per text."""
        before = self.clf.engine.stats.tokens_decoded()
        t0 = time.perf_counter()
        preds = self.clf.classify_many(texts)
        ms = (time.perf_counter() - t0) * 1000
        prefix = len(self.clf.prefix_tokens)
        return Reply(
            ms=ms,
            labels=[p.label for p in preds],
            texts=[p.label for p in preds],
            prompt_tokens=[prefix + p.timings.input_tokens for p in preds],
            evaluated=(self.clf.engine.stats.tokens_decoded() - before) / len(texts),
        )

    def suffix_tokens(self, texts: list[str]) -> list[int]:
        """Each text's request tokens: what follows the shared prefix."""
        return [len(self.clf.request_tokens(t)[0]) for t in texts]


class _LlamaContender:
    """A llama-cpp-python ``Llama`` on the bundle's model, kept alive between requests, with
    the tokens of each request's first ``eval()`` counted (what it really evaluated after its
    own prefix match or cache load)."""

    restored = False  # a fresh process has nothing to restore

    def __init__(self, spec: WorkerSpec) -> None:
        import llama_cpp

        from pld.models import resolve
        from pld.runtime import load_bundle, resolve_bundle_path

        bundle = load_bundle(resolve_bundle_path(spec.bundle))
        self.resolved = resolve(spec.model or bundle.student.model)
        self.labels = list(bundle.labels)
        self.system = bundle.system_prompt
        self.spec = spec
        self.llm = llama_cpp.Llama(
            model_path=self.resolved.path,
            n_ctx=spec.n_ctx,
            n_threads=spec.threads,
            n_threads_batch=spec.threads,
            n_gpu_layers=spec.gpu_layers,
            verbose=False,
        )
        # Instrument, do not change: count the tokens of each eval(); a request's first is the
        # prompt the Llama really evaluates after its own prefix match or cache load.
        self._evals: list[int] = []
        inner = self.llm.eval

        def counting(tokens: Any) -> None:
            self._evals.append(len(tokens))
            inner(tokens)

        self.llm.eval = counting  # type: ignore[method-assign]

    def info(self, load_ms: float) -> ChatInfo:
        """The ready line: the context the Llama really got."""
        p = self.llm.context_params
        return ChatInfo(
            load_ms=load_ms,
            n_ctx=self.llm.n_ctx(),
            swa_full=bool(p.swa_full),
            flash_attn_type=int(p.flash_attn_type),
            n_batch=self.llm.n_batch,
        )


class ChatContender(_LlamaContender):
    """What a user writes first: ``Llama(...).create_chat_completion`` at temperature 0."""

    def __init__(self, spec: WorkerSpec) -> None:
        from llama_cpp.llama_cache import LlamaRAMCache
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        from llama_cpp.llama_grammar import LlamaGrammar

        super().__init__(spec)
        bos, eos = EOS[self.resolved.chat_format]
        self.llm.chat_handler = Jinja2ChatFormatter(
            template=chat_template(self.resolved.chat_format),
            eos_token=eos,
            bos_token=bos,
            stop_token_ids=[self.llm.token_eos()],
        ).to_chat_handler()
        if spec.kind == "chat_completion_cached":
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=spec.ram_cache_mb << 20))
        self.grammar = (
            LlamaGrammar.from_string(label_grammar(self.labels), verbose=False)
            if spec.grammar
            else None
        )

    def answer(self, texts: list[str]) -> Reply:
        """One chat completion; the label is read from the generated text."""
        (text,) = texts
        self._evals.clear()
        t0 = time.perf_counter()
        out: Any = self.llm.create_chat_completion(
            messages=[
                {"role": "system", "content": self.system},
                {"role": "user", "content": user_message(text)},
            ],
            temperature=0.0,
            max_tokens=self.spec.max_tokens,
            grammar=self.grammar,
        )
        ms = (time.perf_counter() - t0) * 1000
        content = out["choices"][0]["message"]["content"] or ""
        return Reply(
            ms=ms,
            labels=[match_label(content, self.labels)],
            texts=[content],
            prompt_tokens=[out["usage"]["prompt_tokens"]],
            completion_tokens=out["usage"]["completion_tokens"],
            evaluated=self._evals[0] if self._evals else 0,
        )


class LogprobsContender(_LlamaContender):
    """What a careful user writes: the rendered chat prompt through ``create_completion`` for one
    token at temperature 0, and the label whose first token scores highest, which is pld's rule
    when the labels' first tokens differ (the only case it is run for).

    The next token's logits come through create_completion's public ``logits_processor`` hook.
    Its ``logprobs=`` would need ``Llama(logits_all=True)``: the output layer for every prompt
    token, an n_ctx x n_vocab score matrix (1 MB a row with Gemma 3's vocabulary) and a
    log-softmax of every evaluated row on each request, which no careful user keeps. The ``Llama``
    stays alive and keeps its prefix match between calls: it re-evaluates only the tokens after
    the longest common prefix with the previous prompt.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        firsts = [self.llm.tokenize(lab.encode(), add_bos=False, special=False)[0]
                  for lab in self.labels]  # fmt: skip
        if len(set(firsts)) < len(firsts):
            raise ConfigError(
                f"the labels {self.labels} do not all differ in their first token; a "
                "first-token contender cannot score them"
            )
        self.first_tokens = firsts
        self._scores: dict[int, float] = {}

    def _capture(self, input_ids: Any, logits: Any) -> Any:
        self._scores = {tok: float(logits[tok]) for tok in self.first_tokens}
        return logits

    def answer(self, texts: list[str]) -> Reply:
        """One token after the rendered prompt; the label is the best-scoring first token."""
        from llama_cpp import LogitsProcessorList

        (text,) = texts
        self._evals.clear()
        self._scores = {}
        t0 = time.perf_counter()
        prompt = completion_prompt(self.resolved.chat_format, self.system, text)
        out: Any = self.llm.create_completion(
            prompt,
            max_tokens=1,
            temperature=0.0,
            logits_processor=LogitsProcessorList([self._capture]),
        )
        ms = (time.perf_counter() - t0) * 1000
        return Reply(
            ms=ms,
            labels=[first_token_label(self._scores, self.labels, self.first_tokens)],
            texts=[out["choices"][0]["text"]],
            prompt_tokens=[out["usage"]["prompt_tokens"]],
            completion_tokens=out["usage"]["completion_tokens"],
            evaluated=self._evals[0] if self._evals else 0,
        )


def _open(spec: WorkerSpec) -> PldContender | ChatContender | LogprobsContender:
    if spec.kind in ("pld", "pld_batched"):
        return PldContender(spec)
    if spec.kind == "chat_completion_logprobs":
        return LogprobsContender(spec)
    return ChatContender(spec)


def _private_stdout() -> TextIO:
    """A private copy of stdout for the replies; fd 1 then points at stderr, so that stray
    prints of native code cannot corrupt the JSON lines."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def serve(spec: WorkerSpec) -> None:
    """The worker loop: the ready line, then one JSON reply per JSON request line."""
    out = _private_stdout()
    t0 = time.perf_counter()
    contender = _open(spec)
    ready = contender.info((time.perf_counter() - t0) * 1000)
    out.write(msgspec.json.encode(ready).decode() + "\n")
    for line in sys.stdin:
        req = msgspec.json.decode(line, type=Request)
        if req.op == "quit":
            break
        reply: Reply | SuffixTokens
        if req.op == "suffix_tokens" and isinstance(contender, PldContender):
            reply = SuffixTokens(suffix_tokens=contender.suffix_tokens(req.texts))
        else:
            reply = contender.answer(req.texts)
        out.write(msgspec.json.encode(reply).decode() + "\n")


def cold(spec: WorkerSpec) -> None:
    """A fresh process's first answer: load (restoring pld's saved prefix state), answer once."""
    text = sys.stdin.read()
    out = _private_stdout()
    contender = _open(spec)
    reply = msgspec.structs.replace(contender.answer([text]), restored=contender.restored)
    out.write(msgspec.json.encode(reply).decode() + "\n")


def main(argv: list[str]) -> None:
    """Entry point of a worker process."""
    if len(argv) != 2 or argv[0] not in ("serve", "cold"):
        raise ConfigError("usage: python -m pld.bench.contenders serve|cold SPEC_JSON")
    spec = msgspec.json.decode(argv[1], type=WorkerSpec)
    (serve if argv[0] == "serve" else cold)(spec)


if __name__ == "__main__":
    main(sys.argv[1:])

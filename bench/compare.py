"""`pld bench compare`: pld against what a user would run instead, same model, prompt and inputs.

Contenders, each in its own process so that peak memory is its own: pld one at a time and
batched, llama-cpp-python's ``create_chat_completion`` without and with its ``LlamaRAMCache`` and
its ``create_completion`` reading one token's logits (``contenders.py``, driven through
``workers.py``), and llama.cpp's ``llama-server`` generating through its chat endpoint or reading
one token's log-probabilities from ``/completion``, each with its default sliding-window cache and
with ``--swa-full`` (``llama_server.py``). The logprobs contenders choose the label whose first
token scores highest, pld's own rule when the labels' first tokens differ. Each is warmed up,
then requests go round-robin (order rotated per input) over repeats; cold start is timed from a
fresh process to its first answer. Reports what each contender says it evaluated, never what its
documentation says it should; the numbers are ``compare_summary.py``'s.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from pld.errors import ConfigError, DataError, PldError
from pld.progress import progress
from pld.runtime import read_records

from .chat import chat_template, completion_prompt
from .compare_summary import Tally, summarize
from .compare_types import BatchRecord, ColdStart, CompareResult, RequestRecord
from .inputs import default_bundle, default_inputs
from .llama_server import LlamaServer, ServerConfig, default_server_bin
from .worker_protocol import Kind, PldInfo, Reply, WorkerSpec, settings_of
from .workers import Worker, cold_answer

__all__ = ["CONTENDERS", "default_server_bin", "run_compare"]

CONTENDERS = (
    "pld",
    "pld_batched",
    "chat_completion",
    "chat_completion_cached",
    "chat_completion_logprobs",
    "llama_server",
    "llama_server_swa_full",
    "llama_server_logprobs",
    "llama_server_logprobs_swa_full",
)
SERVERS = {  # name -> --swa-full
    "llama_server": False,
    "llama_server_swa_full": True,
    "llama_server_logprobs": False,
    "llama_server_logprobs_swa_full": True,
}
# the contenders that read the first token's scores instead of generating the label
LOGPROBS = ("chat_completion_logprobs", "llama_server_logprobs", "llama_server_logprobs_swa_full")
WARMUPS = 2


@dataclass(frozen=True)
class _Inputs:
    """The timed inputs, the warm-up inputs, and each repeat's round of indices into ``texts``."""

    texts: list[str]
    warm: list[str]
    rounds: list[list[int]]
    distinct: bool  # each repeat has inputs of its own (else every repeat reuses the same)


def _inputs(data: str | Path, requests: int, repeats: int) -> _Inputs:
    want = requests * repeats + WARMUPS
    recs = [r.text for r in read_records(data, limit=want)]
    if len(recs) < requests + WARMUPS:
        raise DataError(
            f"{data} has {len(recs)} records; --requests {requests} needs at least "
            f"{requests + WARMUPS} ({WARMUPS} more for the warm-ups)"
        )
    distinct = len(recs) == want
    rounds = [
        list(range(r * requests, (r + 1) * requests)) if distinct else list(range(requests))
        for r in range(repeats)
    ]
    texts = recs[: requests * repeats] if distinct else recs[:requests]
    return _Inputs(texts=texts, warm=recs[-WARMUPS:], rounds=rounds, distinct=distinct)


def run_compare(
    *,
    bundle: str | None = None,
    data: str | Path | None = None,
    model: str | None = None,
    requests: int = 16,
    repeats: int = 3,
    threads: int = 0,
    gpu_layers: int = 0,
    server_bin: str | Path | None = None,
    skip: Sequence[str] = (),
    grammar: bool = True,
    batch_size: int = 8,
    slow_requests: int = 3,
    ram_cache_mb: int = 512,
    log: Callable[[str], None] | None = None,
) -> CompareResult:
    """Run every contender on the same bundle and inputs; returns the summary, with each
    request's record under ``per_request`` (the JSON line leaves those out)."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    unknown = sorted(set(skip) - set(CONTENDERS))
    if unknown or "pld" in skip:
        raise ConfigError(
            f"cannot skip {unknown or ['pld']}: --skip takes "
            f"{', '.join(CONTENDERS[1:])} (pld is the reference)"
        )
    if requests < 1 or repeats < 1 or batch_size < 1 or slow_requests < 1:
        raise ConfigError("--requests, --repeats, --batch-size and --slow-requests must be >= 1")
    bundle = bundle or default_bundle()
    inputs = _inputs(data or default_inputs(), requests, repeats)
    n_threads = threads or os.cpu_count() or 1
    spec = WorkerSpec(
        kind="pld",
        bundle=str(bundle),
        model=model,
        threads=n_threads,
        gpu_layers=gpu_layers,
        grammar=grammar,
        batch_size=batch_size,
        ram_cache_mb=ram_cache_mb,
    )
    binary = Path(server_bin) if server_bin else default_server_bin(gpu=gpu_layers != 0)
    with tempfile.TemporaryDirectory(prefix="pld-compare-") as tmp, ExitStack() as cleanup:
        run = _Run(spec, binary, Path(tmp), say)
        cleanup.callback(run.stop_all)  # no process outlives the run, even on an error
        for name in skip:
            run.tally[name].reason = "skipped (--skip)"
        info = run.start_reference(inputs.texts + inputs.warm)
        for t in run.tally.values():
            if t.reason is None:
                run.warm_up(t, inputs.warm, cap=requests * repeats, slow_cap=slow_requests)
        run.time_rounds(inputs)
        run.finish()
        say("cold starts: a fresh process to its first answer...")
        run.cold_starts(inputs.texts[0])
    return summarize(
        run.tally,
        bundle=Path(bundle).name,
        model=model or "bundle default",
        prefix_tokens=info.prefix_tokens,
        requests=requests,
        repeats=repeats,
        distinct=inputs.distinct,
        threads=n_threads,
        grammar=grammar,
        batch_size=batch_size,
        inputs=inputs.texts,
    )


class _Run:
    """One comparison in progress: each contender's tally and process, and the temporary folder
    for logs, pld's prefix states and llama-server's slots."""

    def __init__(self, spec: WorkerSpec, binary: Path, tmp: Path, say: Callable[[str], None]):
        self.base = spec
        self.binary = binary
        self.tmp = tmp
        self.say = say
        self.tally = {name: Tally(name) for name in CONTENDERS}
        self.runners: dict[str, Worker | LlamaServer] = {}
        self.servers: dict[str, ServerConfig] = {}
        (tmp / "states").mkdir()
        (tmp / "slots").mkdir()

    def spec(self, kind: Kind, **overrides: Any) -> WorkerSpec:
        """The worker spec of one contender: the run's settings, its kind and ``overrides``."""
        return msgspec.structs.replace(self.base, kind=kind, **overrides)

    def start_reference(self, texts: list[str]) -> PldInfo:
        """Start pld, which primes and saves its prefix state; size the others' context and
        answer from its prefix, the longest of ``texts`` and the longest label."""
        self.say(
            "loading pld and priming its prefix (it saves the prefix state for the cold start)..."
        )
        worker = Worker(self.spec("pld", state_dir=str(self.tmp / "states")), self.tmp / "pld.log")
        self.runners["pld"] = worker
        info = worker.info
        assert isinstance(info, PldInfo)
        self.info = info
        self.tally["pld"].settings = settings_of(info)
        longest_label = max(info.label_tokens)
        self.max_tokens = longest_label + 4 if self.base.grammar else longest_label + 1
        longest = info.prefix_tokens + max(worker.suffix_tokens(texts)) + self.max_tokens + 16
        self.n_ctx = -(-longest // 256) * 256
        self.template = self.tmp / f"{info.chat_format}.jinja"
        self.template.write_text(chat_template(info.chat_format))
        self.say(
            f"  {info.prefix_tokens} prefix tokens; contenders get n_ctx {self.n_ctx}, "
            f"max_tokens {self.max_tokens}"
        )
        return info

    def _start(self, t: Tally) -> None:
        firsts = self.info.label_first_tokens
        if t.name in LOGPROBS and len(set(firsts)) < len(firsts):
            t.reason = (
                "the labels do not all differ in their first token (pld scores every token "
                "then); a first-token contender cannot score them"
            )
        elif t.name in SERVERS:
            if not self.binary.is_file():
                t.reason = (
                    f"llama-server binary not found at {self.binary}; build it with "
                    "scripts/build_llama_server.sh (it prints the path) or pass --server-bin"
                )
                return
            config = ServerConfig(
                model_path=self.info.model_path,
                template_file=self.template,
                n_ctx=self.n_ctx,
                threads=self.base.threads,
                gpu_layers=self.base.gpu_layers,
                swa_full=SERVERS[t.name],
                slot_dir=self.tmp / "slots",
            )
            self.servers[t.name] = config
            server = LlamaServer(str(self.binary), config, log_file=self.tmp / f"{t.name}.log")
            self.runners[t.name] = server
            t.settings = {"args": server.args[1:], "ready_ms": round(server.wait_ready())}
        elif t.name != "pld":
            worker = Worker(self._worker_spec(t.name), self.tmp / f"{t.name}.log")
            self.runners[t.name] = worker
            t.settings = settings_of(worker.info)

    def _worker_spec(self, name: str) -> WorkerSpec:
        if name == "pld_batched":
            return self.spec("pld_batched", state_dir=str(self.tmp / "states"))
        if name == "chat_completion_logprobs":
            return self.spec("chat_completion_logprobs", n_ctx=self.n_ctx, max_tokens=1)
        assert name in ("chat_completion", "chat_completion_cached")
        kind: Kind = "chat_completion" if name == "chat_completion" else "chat_completion_cached"
        return self.spec(kind, n_ctx=self.n_ctx, max_tokens=self.max_tokens)

    def ask(self, t: Tally, texts: list[str]) -> Reply:
        """One request to a contender's process."""
        runner = self.runners[t.name]
        if isinstance(runner, LlamaServer):
            (text,) = texts
            info = self.info
            if t.name in LOGPROBS:  # the client renders the prompt: timed with the request
                t0 = time.perf_counter()
                prompt = completion_prompt(info.chat_format, info.system_prompt, text)
                render_ms = (time.perf_counter() - t0) * 1000
                res = runner.first_token(prompt, info.labels, info.label_first_tokens)
                return msgspec.structs.replace(res, ms=res.ms + render_ms)
            return runner.chat(
                info.system_prompt, text, info.labels, self.max_tokens, self.base.grammar
            )
        return runner.answer(texts)

    def warm_up(self, t: Tally, warm: list[str], *, cap: int, slow_cap: int) -> None:
        """Start a contender and answer the warm-up inputs; one that still re-evaluates most of
        the system prompt afterwards is timed on only ``slow_cap`` requests (~20 s each on a
        2-core CPU)."""
        self.say(f"starting and warming up {t.name}...")
        try:
            self._start(t)
            for text in warm if t.reason is None else []:
                t.warmup_evaluated.append(self.ask(t, [text]).evaluated)
        except PldError as exc:
            t.reason = f"could not run: {exc}"
            return
        slow = bool(t.warmup_evaluated) and t.warmup_evaluated[-1] > self.info.prefix_tokens / 2
        t.cap = slow_cap if slow else cap
        if slow:
            self.say(
                f"  {t.name} re-evaluated {t.warmup_evaluated[-1]:.0f} tokens: timing only "
                f"{slow_cap} requests"
            )

    def time_rounds(self, inputs: _Inputs) -> None:
        """The timed requests: round-robin over the live contenders, the order rotated per
        input, and batched pld once per round on the round's inputs."""
        live = [t for t in self.tally.values() if t.reason is None and t.name != "pld_batched"]
        batched = self.tally["pld_batched"] if self.tally["pld_batched"].reason is None else None
        repeats = len(inputs.rounds)
        n = sum(len(round_) for round_ in inputs.rounds)
        total = sum(min(t.cap, n) for t in live) + (repeats if batched else 0)
        self.say(
            f"timing {len(inputs.rounds[0])} requests x {repeats} repeats, round-robin over "
            f"{len(live)} contenders{' + batched pld' if batched else ''}"
            f"{' (inputs distinct per repeat)' if inputs.distinct else ' (same inputs each repeat)'}..."
        )
        done = 0
        with progress("comparing", total) as update:
            for r, round_ in enumerate(inputs.rounds):
                for j, idx in enumerate(round_):
                    for t in live[j % len(live) :] + live[: j % len(live)]:
                        if t.reason or len(t.ms) >= t.cap:
                            continue
                        try:
                            res = self.ask(t, [inputs.texts[idx]])
                        except PldError as exc:
                            t.reason = f"failed during the run: {exc}"
                            continue
                        t.ms.append(res.ms)
                        t.labels[idx] = res.labels[0]
                        t.records.append(RequestRecord.of(idx, r, res))
                        done += 1
                        update(done, total)
                if batched is not None:
                    self._time_batch(batched, inputs, round_, r)
                    done += 1
                    update(done, total)

    def _time_batch(self, t: Tally, inputs: _Inputs, round_: list[int], repeat: int) -> None:
        texts = [inputs.texts[i] for i in round_]
        res = self.ask(t, texts)
        t.batch_ms.append(res.ms)
        t.ms.extend([res.ms / len(texts)] * len(texts))
        for i, lab in zip(round_, res.labels):
            t.labels[i] = lab
        t.batches.append(BatchRecord.of(round_, repeat, res))

    def finish(self) -> None:
        """Save each generating server's slot for its cold start, read every peak RSS, stop
        them all."""
        for name, runner in self.runners.items():
            t = self.tally[name]
            if isinstance(runner, LlamaServer) and t.reason is None and name not in LOGPROBS:
                try:
                    runner.slot("save", f"{name}.bin")
                except PldError as exc:
                    t.cold_reason = f"slot save failed: {exc}"
            t.rss_mb = runner.peak_rss_mb()
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every contender's process (again is harmless)."""
        for runner in self.runners.values():
            if isinstance(runner, Worker):
                runner.close()
            else:
                runner.stop()

    def cold_starts(self, text: str) -> None:
        """Time a fresh process to its first answer: pld (restoring its saved prefix state),
        create_chat_completion, and each generating server that saved its slot (the logprobs
        contenders start the same way as their generating twins)."""
        self._cold_worker(
            self.tally["pld"], self.spec("pld", state_dir=str(self.tmp / "states")), text
        )
        if self.tally["chat_completion"].reason is None:
            self._cold_worker(
                self.tally["chat_completion"], self._worker_spec("chat_completion"), text
            )
        for name in SERVERS:
            t = self.tally[name]
            if name not in LOGPROBS and t.reason is None and t.cold_reason is None:
                self._cold_server(t, text)

    def _cold_worker(self, t: Tally, spec: WorkerSpec, text: str) -> None:
        try:
            ms, out = cold_answer(spec, text)
        except PldError as exc:
            t.cold_reason = f"cold start failed: {exc}"
            return
        t.cold = ColdStart(label=out.labels[0], evaluated=out.evaluated, answer_ms=out.ms)
        if spec.kind == "pld" and out.restored is not True:
            t.cold_reason = "the saved prefix state was not restored (check TMPDIR's free space)"
            return
        t.cold_ms = ms

    def _cold_server(self, t: Tally, text: str) -> None:
        config = self.servers[t.name]
        server = LlamaServer(str(self.binary), config, log_file=self.tmp / f"{t.name}-cold.log")
        try:
            ready = server.wait_ready()
            restored = server.slot("restore", f"{t.name}.bin")
            info = self.info
            res = server.chat(
                info.system_prompt, text, info.labels, self.max_tokens, self.base.grammar
            )
            t.cold_ms = (time.perf_counter() - server.t_start) * 1000
            t.cold = ColdStart(
                label=res.labels[0],
                evaluated=res.evaluated,
                ready_ms=round(ready),
                restored_tokens=restored.n_restored,
                restore_ms=restored.timings.get("restore_ms"),
                cache_n=res.cache_n,
            )
        except PldError as exc:
            t.cold_reason = f"cold start failed: {exc}"
        finally:
            server.stop()

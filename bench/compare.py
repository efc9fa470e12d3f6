"""`pld bench compare`: pld against what a user would run instead, same model, prompt and inputs.

Contenders (``contenders.py``), each in its own process so that peak memory is its own: pld one
at a time and batched; llama-cpp-python's ``create_chat_completion`` without and with its
``LlamaRAMCache``; llama.cpp's ``llama-server`` with its default sliding-window cache and with
``--swa-full``. Each is warmed up, then requests go round-robin (order rotated per input) over
repeats; cold start is timed from a fresh process to its first answer. Prints what each contender
reports it evaluated, never what its documentation says it should.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from pld.errors import ConfigError, DataError, PldError
from pld.metrics import percentile
from pld.paths import cache_dir
from pld.proc import peak_rss_mb
from pld.progress import progress
from pld.runtime import read_records

from .contenders import CHAT_TEMPLATES, LlamaServer, WorkerSpec
from .inputs import default_bundle, default_inputs

__all__ = ["CONTENDERS", "default_server_bin", "format_compare", "run_compare"]

CONTENDERS = (
    "pld",
    "pld_batched",
    "chat_completion",
    "chat_completion_cached",
    "llama_server",
    "llama_server_swa_full",
)
SERVERS = {"llama_server": False, "llama_server_swa_full": True}  # name -> --swa-full
WARMUPS = 2


def default_server_bin(gpu: bool = False) -> Path:
    """Where scripts/build_llama_server.sh caches the llama-server binary for this llama.cpp."""
    version = importlib.metadata.version("llama-cpp-python")
    flavour = "cuda" if gpu else "cpu"
    return cache_dir() / "llama-server" / f"{version}-{flavour}" / "llama-server"


class Worker:
    """One in-process contender in its own child process (``contenders.serve``)."""

    def __init__(self, spec: WorkerSpec, log_file: Path) -> None:
        self.log_file = log_file
        cmd = [sys.executable, "-m", "pld.bench.contenders", "serve"]
        with log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, msgspec.json.encode(spec).decode()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise PldError(f"a benchmark worker died ({self.log_file}):\n{tail}")
        return dict(json.loads(line))

    def ask(self, op: str, texts: list[str]) -> dict[str, Any]:
        """Send one request line, wait for its reply."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, "texts": texts}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: _read says why
        return self._read()

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@dataclass
class Tally:
    """Everything measured for one contender."""

    name: str
    reason: str | None = None
    runner: Worker | LlamaServer | None = None
    cap: int = 0  # timed requests allowed (fewer for contenders that re-evaluate everything)
    ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    labels: dict[int, str | None] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    warmup_evaluated: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    server_kw: dict[str, Any] = field(default_factory=dict)
    rss_mb: float | None = None
    cold_ms: float | None = None
    cold: dict[str, Any] = field(default_factory=dict)
    cold_reason: str | None = None


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
) -> dict[str, Any]:
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
    data = data or default_inputs()
    want = requests * repeats + WARMUPS
    recs = [r.text for r in read_records(data, limit=want)]
    if len(recs) < requests + WARMUPS:
        raise DataError(
            f"{data} has {len(recs)} records; --requests {requests} needs at least "
            f"{requests + WARMUPS} ({WARMUPS} more for the warm-ups)"
        )
    distinct = len(recs) == want  # else every repeat reuses the same inputs
    warm = recs[-WARMUPS:]
    inputs = recs[: requests * repeats] if distinct else recs[:requests]
    rounds = [
        list(range(r * requests, (r + 1) * requests)) if distinct else list(range(requests))
        for r in range(repeats)
    ]
    n_threads = threads or os.cpu_count() or 1
    binary = Path(server_bin) if server_bin else default_server_bin(gpu=gpu_layers != 0)
    tally = {name: Tally(name) for name in CONTENDERS}
    for name in skip:
        tally[name].reason = "skipped (--skip)"

    with tempfile.TemporaryDirectory(prefix="pld-compare-") as tmp_name, ExitStack() as cleanup:
        cleanup.callback(_stop_all, tally)  # no process outlives the run, even on an error
        tmp = Path(tmp_name)
        (tmp / "states").mkdir()
        (tmp / "slots").mkdir()

        def spec(kind: Any, **kw: Any) -> WorkerSpec:
            return WorkerSpec(
                kind=kind,
                bundle=str(bundle),
                model=model,
                threads=n_threads,
                gpu_layers=gpu_layers,
                grammar=grammar,
                batch_size=batch_size,
                ram_cache_mb=ram_cache_mb,
                **kw,
            )

        say("loading pld and priming its prefix (it saves the prefix state for the cold start)...")
        ref = tally["pld"]
        ref.runner = Worker(spec("pld", state_dir=str(tmp / "states")), tmp / "pld.log")
        info = ref.runner.info
        ref.settings = {
            k: v for k, v in info.items() if k not in ("ready", "labels", "system_prompt")
        }
        prefix = int(info["prefix_tokens"])
        labels: list[str] = info["labels"]
        suffixes = ref.runner.ask("suffix_tokens", inputs + warm)["suffix_tokens"]
        longest_label = max(info["label_tokens"])
        max_tokens = longest_label + 4 if grammar else longest_label + 1
        n_ctx = -(-(prefix + max(suffixes) + max_tokens + 16) // 256) * 256
        template = tmp / f"{info['chat_format']}.jinja"
        template.write_text(CHAT_TEMPLATES[info["chat_format"]])
        say(f"  {prefix} prefix tokens; contenders get n_ctx {n_ctx}, max_tokens {max_tokens}")

        def start(t: Tally) -> None:
            if t.name in SERVERS:
                if not binary.is_file():
                    t.reason = (
                        f"llama-server binary not found at {binary}; build it with "
                        "scripts/build_llama_server.sh (it prints the path) or pass --server-bin"
                    )
                    return
                t.server_kw = {
                    "model_path": info["model_path"],
                    "template_file": template,
                    "n_ctx": n_ctx,
                    "threads": n_threads,
                    "gpu_layers": gpu_layers,
                    "swa_full": SERVERS[t.name],
                    "slot_dir": tmp / "slots",
                }
                server = LlamaServer(str(binary), **t.server_kw, log_file=tmp / f"{t.name}.log")
                t.runner = server
                t.settings = {"args": server.args[1:], "ready_ms": round(server.wait_ready())}
            elif t.name != "pld":
                kw: dict[str, Any] = {"n_ctx": n_ctx, "max_tokens": max_tokens}
                if t.name == "pld_batched":
                    kw = {"state_dir": str(tmp / "states")}
                t.runner = Worker(spec(t.name, **kw), tmp / f"{t.name}.log")
                t.settings = {
                    k: v
                    for k, v in t.runner.info.items()
                    if k not in ("ready", "labels", "system_prompt")
                }

        def ask(t: Tally, texts: list[str]) -> dict[str, Any]:
            if isinstance(t.runner, LlamaServer):
                (text,) = texts
                return t.runner.chat(info["system_prompt"], text, labels, max_tokens, grammar)
            assert t.runner is not None
            return t.runner.ask("answer", texts)

        for t in tally.values():
            if t.reason:
                continue
            say(f"starting and warming up {t.name}...")
            try:
                start(t)
                for text in warm if t.reason is None else []:
                    t.warmup_evaluated.append(ask(t, [text])["evaluated"])
            except PldError as exc:
                t.reason = f"could not run: {exc}"
                continue
            # a contender that re-evaluates most of the system prompt after its warm-up gets
            # only a few timed requests (at ~20 s each on a 2-core CPU)
            slow = bool(t.warmup_evaluated) and t.warmup_evaluated[-1] > prefix / 2
            t.cap = slow_requests if slow else requests * repeats
            if slow:
                say(
                    f"  {t.name} re-evaluated {t.warmup_evaluated[-1]:.0f} tokens: timing only "
                    f"{slow_requests} requests"
                )

        live = [t for t in tally.values() if t.reason is None and t.name != "pld_batched"]
        batched = tally["pld_batched"] if tally["pld_batched"].reason is None else None
        total = sum(min(t.cap, requests * repeats) for t in live) + (repeats if batched else 0)
        say(
            f"timing {requests} requests x {repeats} repeats, round-robin over {len(live)} "
            f"contenders{' + batched pld' if batched else ''}"
            f"{' (inputs distinct per repeat)' if distinct else ' (same inputs each repeat)'}..."
        )
        done = 0
        with progress("comparing", total) as update:
            for r, round_ in enumerate(rounds):
                for j, idx in enumerate(round_):
                    order = live[j % len(live) :] + live[: j % len(live)]
                    for t in order:
                        if t.reason or len(t.ms) >= t.cap:
                            continue
                        try:
                            res = ask(t, [inputs[idx]])
                        except PldError as exc:
                            t.reason = f"failed during the run: {exc}"
                            continue
                        t.ms.append(res["ms"])
                        t.labels[idx] = res["labels"][0]
                        t.records.append({"input": idx, "repeat": r, **_flat(res)})
                        done += 1
                        update(done, total)
                if batched is not None:
                    texts = [inputs[i] for i in round_]
                    res = ask(batched, texts)
                    batched.batch_ms.append(res["ms"])
                    batched.ms.extend([res["ms"] / len(texts)] * len(texts))
                    for i, lab in zip(round_, res["labels"]):
                        batched.labels[i] = lab
                    batched.records.append({"inputs": round_, "repeat": r, **res})
                    done += 1
                    update(done, total)

        for t in tally.values():
            if t.runner is None:
                continue
            if isinstance(t.runner, LlamaServer) and t.reason is None:
                try:
                    t.cold["saved"] = t.runner.slot("save", f"{t.name}.bin")
                except PldError as exc:
                    t.cold_reason = f"slot save failed: {exc}"
            t.rss_mb = t.runner.peak_rss_mb()
        _stop_all(tally)

        say("cold starts: a fresh process to its first answer...")
        cold_text = inputs[0]
        _cold_worker(tally["pld"], spec("pld", state_dir=str(tmp / "states")), cold_text)
        if tally["chat_completion"].reason is None:
            kw = {"n_ctx": n_ctx, "max_tokens": max_tokens}
            _cold_worker(tally["chat_completion"], spec("chat_completion", **kw), cold_text)
        for name in SERVERS:
            t = tally[name]
            if t.reason is None and t.cold_reason is None:
                _cold_server(t, binary, tmp, info, cold_text, max_tokens, grammar)

    return _summary(
        tally,
        info,
        bundle,
        model,
        requests,
        repeats,
        distinct,
        n_threads,
        grammar,
        batch_size,
        inputs,
    )


def _stop_all(tally: dict[str, Tally]) -> None:
    for t in tally.values():
        if isinstance(t.runner, Worker):
            t.runner.close()
        elif isinstance(t.runner, LlamaServer):
            t.runner.stop()


def _flat(res: dict[str, Any]) -> dict[str, Any]:
    """One request's reply as a flat record."""
    out = {k: v for k, v in res.items() if k not in ("labels", "texts", "prompt_tokens")}
    out.update(label=res["labels"][0], text=res["texts"][0], prompt_tokens=res["prompt_tokens"][0])
    return out


def _cold_worker(t: Tally, spec: WorkerSpec, text: str) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pld.bench.contenders", "cold", msgspec.json.encode(spec).decode()],
        input=text,
        capture_output=True,
        text=True,
    )
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0 or not proc.stdout.strip():
        t.cold_reason = f"cold start failed: {proc.stderr.strip().splitlines()[-1:]}"
        return
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    t.cold = {"label": out["labels"][0], "evaluated": out["evaluated"], "answer_ms": out["ms"]}
    if spec.kind == "pld" and not out["restored"]:
        t.cold_reason = "the saved prefix state was not restored (check TMPDIR's free space)"
        return
    t.cold_ms = ms


def _cold_server(
    t: Tally,
    binary: Path,
    tmp: Path,
    info: dict[str, Any],
    text: str,
    max_tokens: int,
    grammar: bool,
) -> None:
    server = LlamaServer(str(binary), **t.server_kw, log_file=tmp / f"{t.name}-cold.log")
    try:
        ready = server.wait_ready()
        restored = server.slot("restore", f"{t.name}.bin")
        res = server.chat(info["system_prompt"], text, info["labels"], max_tokens, grammar)
        t.cold_ms = (time.perf_counter() - server.t_start) * 1000
        t.cold.update(
            ready_ms=round(ready),
            restored_tokens=restored.get("n_restored"),
            restore_ms=restored.get("timings", {}).get("restore_ms"),
            evaluated=res["evaluated"],
            cache_n=res["cache_n"],
            label=res["labels"][0],
        )
    except PldError as exc:
        t.cold_reason = f"cold start failed: {exc}"
    finally:
        server.stop()


def _summary(
    tally: dict[str, Tally],
    info: dict[str, Any],
    bundle: str,
    model: str | None,
    requests: int,
    repeats: int,
    distinct: bool,
    threads: int,
    grammar: bool,
    batch_size: int,
    inputs: list[str],
) -> dict[str, Any]:
    ref = tally["pld"]
    pld_p50 = statistics.median(ref.ms)
    out: dict[str, Any] = {
        "bundle": Path(bundle).name,
        "model": model or "bundle default",
        "prefix_tokens": info["prefix_tokens"],
        "requests": requests,
        "repeats": repeats,
        "inputs": "distinct per repeat" if distinct else "the same each repeat",
        "threads": threads,
        "grammar": grammar,
        "pld_p50_ms": round(pld_p50, 1),
        "pld_batched_per_request_ms": None,
    }
    contenders: dict[str, Any] = {}
    for name, t in tally.items():
        c: dict[str, Any] = {"ran": t.reason is None and bool(t.ms)}
        if t.reason is not None or not t.ms:
            c["reason"] = t.reason or "no request was timed"
        else:
            recs = t.records
            evaluated = [float(r["evaluated"]) for r in recs]
            prompt = [float(p) for r in recs for p in _as_list(r["prompt_tokens"])]
            agree = [t.labels[i] == ref.labels[i] for i in t.labels if i in ref.labels]
            wall = sum(t.batch_ms) if t.batch_ms else sum(t.ms)
            c.update(
                n=len(t.ms),
                p50_ms=round(statistics.median(t.ms), 1),
                p95_ms=round(percentile(t.ms, 0.95), 1),
                requests_per_s=round(len(t.ms) / wall * 1000, 2),
                prompt_tokens_per_request=round(statistics.mean(prompt), 1),
                evaluated_tokens_per_request=round(statistics.mean(evaluated), 1),
                evaluated_tokens_min_max=[min(evaluated), max(evaluated)],
                warmup_evaluated=t.warmup_evaluated,
                label_agreement=round(sum(agree) / len(agree), 3) if agree else None,
                valid_labels=round(
                    sum(v is not None for v in t.labels.values()) / len(t.labels), 3
                ),
                peak_rss_mb=None if t.rss_mb is None else round(t.rss_mb, 1),
            )
            cached = [r["cache_n"] for r in recs if "cache_n" in r]
            if cached:
                c["cached_tokens_per_request"] = round(statistics.mean(cached), 1)
            if t.batch_ms:
                c["batch_size"] = batch_size
            if name != "pld":
                c["paired_ratio_p50"] = _paired(t, ref)
        c["cold_start_ms"] = round(t.cold_ms, 1) if t.cold_ms is not None else None
        if t.cold_ms is None:
            c["cold_start_reason"] = (
                t.cold_reason
                or t.reason
                or (
                    "same restore path as pld (one process, one prefix state file)"
                    if name == "pld_batched"
                    else "LlamaRAMCache lives in the process: a fresh one has nothing to restore "
                    "(the same path as chat_completion)"
                )
            )
        if t.cold:
            c["cold_start"] = {k: v for k, v in t.cold.items() if k != "saved"}
        c["settings"] = t.settings
        contenders[name] = c
    if contenders["pld_batched"]["ran"]:
        out["pld_batched_per_request_ms"] = contenders["pld_batched"]["p50_ms"]
    else:
        out["pld_batched_per_request_ms_reason"] = contenders["pld_batched"]["reason"]
    for name in CONTENDERS[2:]:
        c = contenders[name]
        key = f"vs_{name}"
        out[key] = round(c["p50_ms"] / pld_p50, 2) if c["ran"] else None
        if not c["ran"]:
            out[f"{key}_reason"] = c["reason"]
    out["cold_start_ms"] = {name: c["cold_start_ms"] for name, c in contenders.items()}
    out["contenders"] = contenders
    out["per_request"] = {name: t.records for name, t in tally.items() if t.records} | {
        "inputs": inputs
    }
    return out


def _paired(t: Tally, ref: Tally) -> float | None:
    """Median over inputs of this contender's time over pld's on the same input, timed
    back to back in the same round: robust to the machine's slow spells, which hit both."""
    base = {r["input"]: r["ms"] for r in ref.records}
    ratios = [r["ms"] / base[r["input"]] for r in t.records if r.get("input") in base]
    for r in t.records:  # pld_batched: one record per round, its time shared by its inputs
        share = r["ms"] / len(r.get("inputs", [None]))
        ratios += [share / base[i] for i in r.get("inputs", []) if i in base]
    return round(statistics.median(ratios), 2) if ratios else None


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio}x"


def format_compare(r: dict[str, Any]) -> str:
    """The table for people."""
    head = (
        f"{r['bundle']}: {r['prefix_tokens']} prefix tokens, {r['requests']} requests x "
        f"{r['repeats']} repeats ({r['inputs']}), {r['threads']} threads, "
        f"{'grammar-limited' if r['grammar'] else 'free'} generation"
    )
    cols = (
        "contender",
        "p50 ms",
        "p95 ms",
        "req/s",
        "eval tok/req",
        "RSS MB",
        "agree",
        "cold ms",
        "vs pld",
        "paired",
    )
    rows = [cols]
    for name, c in r["contenders"].items():
        cold = c["cold_start_ms"]
        cold_s = f"{cold:.0f}" if cold is not None else "-"
        if not c["ran"]:
            rows.append((name, "-", "-", "-", "-", "-", "-", cold_s, "-", "-"))
            continue
        ratio = r.get(f"vs_{name}")
        vs = "1.0" if name == "pld" else (f"{ratio}x" if ratio is not None else "-")
        if name == "pld_batched":
            vs = f"{c['p50_ms'] / r['pld_p50_ms']:.2f}x"
        rss = c["peak_rss_mb"]
        rows.append(
            (
                name,
                f"{c['p50_ms']:.0f}",
                f"{c['p95_ms']:.0f}",
                f"{c['requests_per_s']:.2f}",
                f"{c['evaluated_tokens_per_request']:.0f}",
                f"{rss:.0f}" if rss is not None else "-",
                f"{c['label_agreement']}",
                cold_s,
                vs,
                "1.0" if name == "pld" else _x(c["paired_ratio_p50"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [head] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"  {name}: {c['reason']}" for name, c in r["contenders"].items() if not c["ran"]]
    return "\n".join(lines + (["not run:", *notes] if notes else []))

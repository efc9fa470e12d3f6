"""Does flash attention explain llama-server's distance to pld? The first-token llama-server
contender of `pld bench compare` (``/completion``, one token, labels' logits, prompt cached) run
twice side by side, with flash attention at llama.cpp's default (auto: on for a CPU build) and
off (pld's setting), against pld on the same inputs, requests interleaved. Prints one JSON object.

    python scripts/diagnostics/server_flash_attn.py [--model NAME] [--data FILE] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from pld.bench.chat import chat_template, completion_prompt
from pld.bench.inputs import default_bundle, default_inputs
from pld.bench.llama_server import LlamaServer, ServerConfig, default_server_bin
from pld.runtime import Classifier, ClassifierOptions, read_records


class FlashAttnConfig(ServerConfig, frozen=True, kw_only=True):
    """The compare contender's server, with ``-fa`` set."""

    flash_attn: str = "auto"

    def args(self, binary: str, port: int) -> list[str]:
        return super().args(binary, port) + ["-fa", self.flash_attn]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default=str(default_inputs()))
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--state-dir")
    args = ap.parse_args()
    texts = [r.text for r in read_records(args.data, limit=args.requests + 1)]
    opts = ClassifierOptions(
        calibrate=False,
        max_batch=1,
        n_threads=args.threads,
        allow_model_mismatch=args.model != "gemma-3-270m",
    )
    out: dict[str, object] = {"load_start": os.getloadavg(), "model": args.model}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clf = Classifier.open(
            default_bundle(), opts, model=args.model, state_dir=args.state_dir or tmp_name
        )
        fmt = clf.resolved.chat_format
        firsts = [t[0] for t in clf.label_tokens]
        labels = list(clf.labels)
        template = tmp / f"{fmt}.jinja"
        template.write_text(chat_template(fmt))
        (tmp / "slots").mkdir()
        n_ctx = -(-(len(clf.prefix_tokens) + 2048) // 256) * 256
        servers: dict[str, LlamaServer] = {}
        try:
            for fa in ("auto", "off"):
                cfg = FlashAttnConfig(
                    model_path=str(clf.resolved.path),
                    template_file=template,
                    n_ctx=n_ctx,
                    threads=args.threads,
                    gpu_layers=0,
                    swa_full=True,
                    slot_dir=tmp / "slots",
                    flash_attn=fa,
                )
                servers[fa] = LlamaServer(
                    str(default_server_bin()), cfg, log_file=tmp / f"server-{fa}.log"
                )
                servers[fa].wait_ready()
            ms: dict[str, list[float]] = {"pld": [], "auto": [], "off": []}
            got: dict[str, list[str | None]] = {"pld": [], "auto": [], "off": []}
            for i, text in enumerate(texts):
                order = ["pld", "auto", "off"]
                for name in order[i % 3 :] + order[: i % 3]:
                    if name == "pld":
                        t0 = time.perf_counter()
                        label: str | None = clf.classify(text).label
                        took = (time.perf_counter() - t0) * 1000
                    else:
                        prompt = completion_prompt(fmt, clf.bundle.system_prompt, text)
                        reply = servers[name].first_token(prompt, labels, firsts)
                        label, took = reply.labels[0], reply.ms
                    if i:  # the first request primes each server's cache
                        ms[name].append(took)
                        got[name].append(label)
        finally:
            for s in servers.values():
                s.stop()
            clf.close()
    p50 = {k: statistics.median(v) for k, v in ms.items()}
    out |= {
        "requests": len(ms["pld"]),
        "p50_ms": {k: round(v, 1) for k, v in p50.items()},
        "vs_pld": {k: round(v / p50["pld"], 2) for k, v in p50.items()},
        "agreement_with_pld": {
            k: sum(a == b for a, b in zip(v, got["pld"])) / len(v) for k, v in got.items()
        },
        "load_end": os.getloadavg(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

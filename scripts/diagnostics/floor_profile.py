"""Where a request's cost above the empty-prompt floor goes: one request with the 4,664-token
benchmark bundle (windowed layout) against the same request with an empty system prompt, timed
end to end and node by node inside ``llama_decode``.

Node timings come from llama.cpp's scheduler eval callback: asking for every node makes the
scheduler compute the graph one node at a time, so the time between a node's two callbacks is that
node's compute (plus one thread-pool dispatch, the same for every node). That inflates the total,
so the end-to-end ratio is measured separately on contexts created without the callback, requests
interleaved. Prints a table and one JSON object. Run it alone: it is a timing run.

    python scripts/diagnostics/floor_profile.py [--requests 24] [--profiled 8]
        [--ubatch N] [--kv-type K/V] [--flash-attn on|off|auto]   # pld classify's tuning flags
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as LL

from pld.bench.inputs import default_bundle, default_texts
from pld.runtime import Classifier, ClassifierOptions, Model
from pld.runtime.options import tuning_overrides

_CB = LL.ggml_backend_sched_eval_callback
_ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
_ggml.ggml_get_name.restype = ctypes.c_char_p
_ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
_ggml.ggml_op_desc.restype = ctypes.c_char_p
_ggml.ggml_op_desc.argtypes = [ctypes.c_void_p]
_NE_OFFSET = 16  # struct ggml_tensor: enum type (4, padded to 8), buffer pointer (8), ne[4]
_SRC_OFFSET = 152  # then nb[4] (32), op (4), op_params (64), flags (4), src[10]


class NodeTimer:
    """The eval callback: per node (name, op, ne0, seconds) while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.nodes: list[tuple[str, str, int, float]] = []
        self._t = 0.0
        self.callback = _CB(self._call)

    def _call(self, t: int, ask: bool, _user: int) -> bool:
        if not self.on:
            return False
        if ask:
            self._t = time.perf_counter()
            return True
        dt = time.perf_counter() - self._t
        name = (_ggml.ggml_get_name(t) or b"").decode()
        op = (_ggml.ggml_op_desc(t) or b"").decode()
        ne0 = (ctypes.c_int64 * 4).from_address(t + _NE_OFFSET)[0]
        if name.startswith("node_"):
            src0 = ctypes.c_void_p.from_address(t + _SRC_OFFSET).value
            if src0:
                name = f"node_ of {(_ggml.ggml_get_name(src0) or b'').decode()}"
        self.nodes.append((name, op, int(ne0), dt))
        return True


TIMER = NodeTimer()
_WANT_CB = False
_default_params = LL.llama_context_default_params


def _params() -> Any:
    p = _default_params()
    if _WANT_CB:
        p.cb_eval = TIMER.callback
        p.cb_eval_user_data = None
    return p


LL.llama_context_default_params = _params

_DECODE_MS: list[float] = []
_raw_decode = LL.llama_decode


def _timed_decode(ctx: Any, batch: Any) -> int:
    t0 = time.perf_counter()
    rc = _raw_decode(ctx, batch)
    _DECODE_MS.append((time.perf_counter() - t0) * 1000)
    return int(rc)


LL.llama_decode = _timed_decode

_LAYER = re.compile(r"^(.*?)-(\d+)(?: \(.*\))?$")


def category(name: str, op: str) -> tuple[str, int]:
    """(what the node is, its layer or -1) from llama.cpp's graph names such as 'kq-5'."""
    m = _LAYER.match(name)
    if not m:
        base = name.split(" ")[0]
        if base.startswith("node_"):
            src = re.sub(r"blk\.\d+\.", "blk.N.", name.removeprefix("node_ of "))
            return (f"{op} of {src}", -1)
        return (f"{op} ({base})", -1)
    base = m.group(1)
    if "(view)" in name or "(permuted)" in name or "(transposed)" in name or "(reshaped)" in name:
        base = f"{base} [{op}]"
    return base, int(m.group(2))


def open_pair(
    bundle: str, model: Model, opts: ClassifierOptions, state_dir: str
) -> tuple[Classifier, Classifier]:
    reuse = Classifier.open(bundle, opts, model=model, state_dir=state_dir)
    floor = Classifier.open(bundle, opts, model=model, system_prompt="", prefix_cache=False)
    return reuse, floor


def timed(clf: Classifier, text: str) -> tuple[float, float, int]:
    """(request ms, llama_decode ms, decode calls) of one classify."""
    n0 = len(_DECODE_MS)
    t0 = time.perf_counter()
    clf.classify(text)
    ms = (time.perf_counter() - t0) * 1000
    calls = _DECODE_MS[n0:]
    return ms, sum(calls), len(calls)


def main() -> None:
    global _WANT_CB
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profiled", type=int, default=8)
    ap.add_argument("--ubatch", type=int)
    ap.add_argument("--kv-type")
    ap.add_argument("--flash-attn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--state-dir", help="keep primed prefix states here (default: a temp dir)")
    args = ap.parse_args()
    texts = default_texts()[: args.requests]
    bundle = str(default_bundle())
    tuned = tuning_overrides(args.kv_type, args.ubatch, args.flash_attn)
    opts = ClassifierOptions(
        calibrate=False,
        max_batch=1,
        n_threads=args.threads,
        allow_model_mismatch=args.model != "gemma-3-270m",
        **tuned,
    )
    out: dict[str, Any] = {"load_start": os.getloadavg(), "model": args.model, "tuning": tuned}
    with Model.open(args.model) as model, tempfile.TemporaryDirectory() as tmp:
        sd = args.state_dir or tmp
        # 1. end to end, no callback, interleaved
        reuse, floor = open_pair(bundle, model, opts, sd)
        out["prefix_tokens"] = len(reuse.prefix_tokens)
        out["floor_prefix_tokens"] = len(floor.prefix_tokens)
        for c in (reuse, floor):
            c.classify(texts[0])
        rows: dict[str, list[tuple[float, float, int]]] = {"reuse": [], "floor": []}
        for r in range(args.repeats):
            for i, text in enumerate(texts):
                pair = [("reuse", reuse), ("floor", floor)]
                for mode, clf in pair if (i + r) % 2 == 0 else pair[::-1]:
                    rows[mode].append(timed(clf, text))
        for mode, rs in rows.items():
            out[f"{mode}_p50_ms"] = round(statistics.median(r[0] for r in rs), 2)
            out[f"{mode}_decode_p50_ms"] = round(statistics.median(r[1] for r in rs), 2)
            out[f"{mode}_decode_calls"] = statistics.median(r[2] for r in rs)
        out["overhead"] = round(out["reuse_p50_ms"] / out["floor_p50_ms"], 3)
        out["overhead_decode"] = round(out["reuse_decode_p50_ms"] / out["floor_decode_p50_ms"], 3)
        reuse.close()
        floor.close()

        # 2. node by node
        _WANT_CB = True
        reuse, floor = open_pair(bundle, model, opts, sd)
        _WANT_CB = False
        # per mode: (category, layer) -> that part's ms in each profiled request
        runs: dict[str, dict[tuple[str, int], list[float]]] = {
            "reuse": defaultdict(list),
            "floor": defaultdict(list),
        }
        nkv: dict[str, dict[int, int]] = {"reuse": {}, "floor": {}}
        totals: dict[str, list[float]] = {"reuse": [], "floor": []}
        outside: dict[str, list[float]] = {"reuse": [], "floor": []}
        for c in (reuse, floor):
            c.classify(texts[0])
        for i, text in enumerate(texts[: args.profiled]):
            pair = [("reuse", reuse), ("floor", floor)]
            for mode, clf in pair if i % 2 == 0 else pair[::-1]:
                TIMER.nodes.clear()
                TIMER.on = True
                _, dec, _ = timed(clf, text)
                TIMER.on = False
                totals[mode].append(sum(n[3] for n in TIMER.nodes) * 1000)
                outside[mode].append(dec - totals[mode][-1])
                acc: dict[tuple[str, int], float] = defaultdict(float)
                for name, op, ne0, dt in TIMER.nodes:
                    cat, layer = category(name, op)
                    acc[(cat, layer)] += dt * 1000
                    if cat == "kq":
                        nkv[mode][layer] = ne0
                for key, ms in acc.items():
                    runs[mode][key].append(ms)
        reuse.close()
        floor.close()
    # median over the profiled requests of each part, per mode
    per = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in runs.items()}
    for mode in ("reuse", "floor"):
        out[f"{mode}_profiled_node_sum_ms"] = round(statistics.median(totals[mode]), 2)
        out[f"{mode}_profiled_outside_nodes_ms"] = round(statistics.median(outside[mode]), 2)
    out["n_kv_by_layer"] = nkv

    # global layers: those whose kq spans more cells than the windowed ones
    kvr = nkv["reuse"]
    glob = {layer for layer, n in kvr.items() if n > min(kvr.values())} or set(kvr)
    out["global_layers"] = sorted(glob)

    def group(mode: str) -> dict[str, float]:
        g: dict[str, float] = defaultdict(float)
        for (cat, layer), ms in per[mode].items():
            attn = cat.startswith(("kq", "kqv")) and not cat.startswith("kqv_out")
            kind = "global" if layer in glob else ("window" if layer >= 0 else "other")
            if attn:
                key = f"attention ({cat}) {kind}"
            elif "cache" in cat or cat.startswith(("k-", "v-")):
                key = f"KV cache views/copies {kind}"
            else:
                key = f"{cat} (all layers)" if layer >= 0 else cat
            g[key] += ms
        return g

    gr, gf = group("reuse"), group("floor")
    keys = sorted(set(gr) | set(gf), key=lambda k: -(gr.get(k, 0) - gf.get(k, 0)))
    small = [k for k in keys if max(gr.get(k, 0), gf.get(k, 0)) < 0.5]
    for d in (gr, gf):
        d["everything else (nodes under 0.5 ms)"] = sum(d.pop(k, 0) for k in small)
    keys = [k for k in keys if k not in small] + ["everything else (nodes under 0.5 ms)"]
    table = [
        {
            "what": k,
            "reuse_ms": round(gr.get(k, 0), 2),
            "floor_ms": round(gf.get(k, 0), 2),
            "extra_ms": round(gr.get(k, 0) - gf.get(k, 0), 2),
        }
        for k in keys
    ]
    out["by_part"] = table
    out["load_end"] = os.getloadavg()
    print(f"{'part':52} {'reuse':>9} {'floor':>9} {'extra':>9}")
    for row in table:
        print(
            f"{row['what']:52} {row['reuse_ms']:9.2f} {row['floor_ms']:9.2f} {row['extra_ms']:9.2f}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

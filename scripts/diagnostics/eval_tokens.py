"""Where `pld bench compare`'s "tokens evaluated / request" differ between pld and the contenders
on Contract-NLI dev with bench/data/contractnli-long.pld.json (once measured: 1,175 against 919).

Counts tokens, times nothing. Part 1 tokenizes the prompts in the order compare sends them
(2 warm-ups, then 8 x 2 timed inputs) and splits each contender prompt's common prefix with the
previous prompt into pld's prefix and what the two inputs share. Part 2 decodes a few of them
and reads llama.cpp's own counters (``llama_perf_context``: n_p_eval + n_eval, counted whether
or not perf timing is on) for pld one request at a time, the first-token contender of
llama-cpp-python (``chat_completion_logprobs``) and, with --batched, pld batched (and on 8
short StereoSet inputs, where batched requests share decode calls after pad tokens).

Found: the contenders keep the common prefix with the previous prompt, and consecutive dev
inputs share their contract's opening (256 tokens a request on average); pld decodes exactly
its suffix, with no pads or re-decoded window (bench/RESULTS.md, "the 256 tokens").

    python scripts/diagnostics/eval_tokens.py [DEV.jsonl] [--decode N] [--batched]
"""

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import llama_cpp

from pld.bench.chat import completion_prompt
from pld.bench.compare import _inputs
from pld.bench.contenders import LogprobsContender
from pld.bench.worker_protocol import WorkerSpec
from pld.runtime import Classifier, shipped_bundles
from pld.runtime.batch import decode_calls

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = str(ROOT / "bench/data/contractnli-long.pld.json")
THREADS = 2


def evaluated(ctx: Any) -> int:
    """Tokens llama.cpp decoded in ``ctx`` so far: n_p_eval (decodes of several tokens) plus
    n_eval (single-token decodes). llama.cpp reads a 0 as 1, so the differences below are exact
    once each count has passed 1 (n_eval's never does here: every decode has several tokens)."""
    d = llama_cpp.llama_perf_context(ctx)
    return int(d.n_p_eval + d.n_eval)


def common(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    dev = ROOT.parent / "shared/data/contractnli/dev.jsonl"
    ap.add_argument("data", nargs="?", default=str(dev))
    ap.add_argument("--decode", type=int, default=3, help="timed inputs to decode (0: none)")
    ap.add_argument("--batched", action="store_true", help="also decode them with max_batch")
    args = ap.parse_args()

    # the RESULTS run's --requests 8 --repeats 2; every contender sees the warm-ups, then these
    inp = _inputs(args.data, 8, 2)
    order = inp.warm + [inp.texts[i] for rnd in inp.rounds for i in rnd]
    clf = Classifier.open(BUNDLE, n_threads=THREADS, prefix_cache=False)
    prefix = clf.prefix_tokens
    eng = clf.engine
    perf = llama_cpp.llama_perf_context(eng.ctx)
    print(f"pld prefix {len(prefix)} tokens; priming: llama.cpp n_p_eval {perf.n_p_eval}, "
          f"n_eval {perf.n_eval} (0 reads as 1)")  # fmt: skip

    # -- part 1: tokens only ---------------------------------------------------------------
    rows = []
    prev: list[int] = []
    for k, text in enumerate(order):
        prompt = [clf.model.bos] + clf.model.tokenize(
            completion_prompt(clf.resolved.chat_format, clf.bundle.system_prompt, text),
            special=True,
        )
        suffix = clf.request_tokens(text)[0]
        assert prompt[: len(prefix)] == prefix, "the contender's prompt does not start with pld's"
        assert prompt[len(prefix) :] == suffix, "the contender's prompt is not pld's prefix+suffix"
        lcp = common(prompt, prev)
        rows.append((k, len(prompt), len(suffix), lcp, len(prompt) - lcp))
        prev = prompt
    print("\nin compare's order (w: warm-up); the contender decodes its prompt after the common")
    print("prefix with its previous prompt, pld its suffix after its own prefix")
    print(f"{'req':>4} {'prompt':>7} {'pld suffix':>10} {'common w/ prev':>14} "
          f"{'input overlap':>13} {'contender':>9}")  # fmt: skip
    for k, n, suf, lcp, ev in rows:
        tag = f"w{k}" if k < len(inp.warm) else str(k - len(inp.warm))
        overlap = max(0, lcp - len(prefix))
        print(f"{tag:>4} {n:>7} {suf:>10} {lcp:>14} {overlap:>13} {ev:>9}")
    timed = rows[len(inp.warm) :]
    pld_mean = statistics.mean(r[2] for r in timed)
    con_mean = statistics.mean(r[4] for r in timed)
    lcp_mean = statistics.mean(r[3] for r in timed)
    print(f"timed means: pld {pld_mean:.2f}, contender {con_mean:.2f}, difference "
          f"{pld_mean - con_mean:.2f} = common prefix {lcp_mean:.2f} - pld prefix "
          f"{len(prefix)}")  # fmt: skip

    # -- part 2: llama.cpp's counters ------------------------------------------------------
    n = min(args.decode, len(timed))
    if n == 0:
        return
    texts = order[len(inp.warm) : len(inp.warm) + n]
    print(f"\nllama.cpp counters on timed inputs 0..{n - 1} (label; tokens decoded)")
    for i, text in enumerate(texts):
        before, stats = evaluated(eng.ctx), eng.stats.suffix_tokens_decoded
        label = clf.classify(text).label
        print(f"  pld       {i}: {label:<14} llama.cpp {evaluated(eng.ctx) - before:>5}  engine "
              f"{eng.stats.suffix_tokens_decoded - stats:>5}  suffix {timed[i][2]:>5}")  # fmt: skip
    clf.close()

    spec = WorkerSpec(
        kind="chat_completion_logprobs", bundle=BUNDLE, threads=THREADS, n_ctx=6144, max_tokens=1
    )
    con = LogprobsContender(spec)
    # its previous prompt in compare is the last warm-up's: decode that first (whole)
    seq = [order[len(inp.warm) - 1], *texts]
    for i, text in enumerate(seq):
        # a fresh context reads 1 + 1 for its two zeros; n_eval's clamped 1 stays after it
        before = evaluated(con.llm.ctx) if i else 1
        rep = con.answer([text])
        tag = "w" if i == 0 else str(i - 1)
        want = rows[len(inp.warm) - 1 + i][4] if i else rows[len(inp.warm) - 1][1]
        print(f"  contender {tag}: {rep.labels[0] or '-':<14} llama.cpp "
              f"{evaluated(con.llm.ctx) - before:>5}  eval() {rep.evaluated:>5}  "
              f"expected {want:>5}")  # fmt: skip

    if args.batched:
        with Classifier.open(
            BUNDLE, n_threads=THREADS, max_batch=max(2, n), prefix_cache=False
        ) as b:
            e = b.engine
            before, stats = evaluated(e.ctx), e.stats.suffix_tokens_decoded
            labels = [p.label for p in b.classify_many(texts)]
            decoded = e.stats.suffix_tokens_decoded - stats
            print(f"  pld batched (max_batch {max(2, n)}): {labels} llama.cpp "
                  f"{evaluated(e.ctx) - before} engine {decoded} suffixes "
                  f"{sum(r[2] for r in timed[:n])}")  # fmt: skip
        # short inputs share decode calls, after pad tokens the engine's counter leaves out
        fixture = ROOT / "tests/fixtures/data/stereoset/dev.jsonl"
        short = [json.loads(line)["text"] for line in fixture.read_text().splitlines()][:8]
        with Classifier.open(
            shipped_bundles()["stereoset"], n_threads=THREADS, max_batch=8, prefix_cache=False
        ) as b:
            e = b.engine
            lens = [len(b.request_tokens(t)[0]) for t in short]
            before, stats = evaluated(e.ctx), e.stats.suffix_tokens_decoded
            b.classify_many(short)
            print(f"  pld batched, 8 StereoSet inputs {lens}: decode calls "
                  f"{decode_calls(lens, 8, e.config.ubatch())}, llama.cpp "
                  f"{evaluated(e.ctx) - before}, engine "
                  f"{e.stats.suffix_tokens_decoded - stats}")  # fmt: skip


if __name__ == "__main__":
    main()
